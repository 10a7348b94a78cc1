// A C interface to the parts of libtorch that tch does not bind, for detnas-device:
//
// * the Kineto profiler (torch/csrc/autograd/profiler_kineto.h), as `torch.profiler.profile`
//   uses it: a Chrome trace of one region and the number of times each operator ran in it;
// * autocast (ATen/autocast_mode.h): enabling mixed precision on a device type with a chosen
//   lower-precision dtype (tch's own `autocast` is CUDA-only and fixed to fp16).
//
// Every function that can fail returns 0 on success; on failure it returns non-zero and
// copies the exception's message into `err` (at most `errlen` bytes, NUL-terminated).

#include "shim_error.h"

#include <ATen/Version.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/csrc/profiler/collection.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <sstream>
#include <string>

namespace {

// The body succeeds with status 0.
#define GUARD(...) GUARD_RETURN(__VA_ARGS__ return 0;)

namespace prof = torch::autograd::profiler;
namespace pimpl = torch::profiler::impl;

std::set<pimpl::ActivityType> activities(int cuda) {
  std::set<pimpl::ActivityType> a{pimpl::ActivityType::CPU};
  if (cuda != 0) {
    a.insert(pimpl::ActivityType::CUDA);
  }
  return a;
}

pimpl::ProfilerConfig config() {
  return pimpl::ProfilerConfig(pimpl::ProfilerState::KINETO, /*report_input_shapes=*/true);
}

// Counts the operators of a subtree that are not inside another operator (the calls the
// profiled code made itself, not the ones libtorch makes inside them).
void count_top(const std::shared_ptr<pimpl::Result>& e, bool inside_op, std::map<std::string, long>& top) {
  const bool op = e->tag() == pimpl::EventType::TorchOp;
  if (op && !inside_op) {
    top[e->name()] += 1;
  }
  for (const auto& c : e->children_) {
    count_top(c, inside_op || op, top);
  }
}

char* copy_out(const std::string& s) {
  char* p = static_cast<char*>(std::malloc(s.size() + 1));
  if (p != nullptr) {
    std::memcpy(p, s.c_str(), s.size() + 1);
  }
  return p;
}

}  // namespace

// Starts the Kineto profiler on the calling thread (CPU operators; with `cuda`, also CUDA
// kernels, memory copies and runtime calls through CUPTI).
extern "C" int detnas_profiler_start(int cuda, char* err, size_t errlen) {
  GUARD({
    auto cfg = config();
    auto acts = activities(cuda);
    prof::prepareProfiler(cfg, acts);
    prof::enableProfiler(cfg, acts);
  })
}

// Stops the profiler started by detnas_profiler_start. Writes the Chrome trace to `path` when
// it is not NULL, and returns in `*ops` (malloc'd, free with detnas_free) one line per CPU
// operator name, "A\tname\tcount\n" for every call and "T\tname\tcount\n" for calls not made
// inside another operator, sorted by name.
extern "C" int detnas_profiler_stop(const char* path, char** ops, char* err, size_t errlen) {
  GUARD({
    std::unique_ptr<prof::ProfilerResult> r = prof::disableProfiler();
    std::map<std::string, long> counts;
    for (const auto& e : r->events()) {
      if (e.deviceType() == c10::DeviceType::CPU) {
        counts[e.name()] += 1;
      }
    }
    std::map<std::string, long> top;
    for (const auto& root : r->event_tree()) {
      count_top(root, false, top);
    }
    std::ostringstream s;
    for (const auto& kv : counts) {
      s << "A\t" << kv.first << '\t' << kv.second << '\n';
    }
    for (const auto& kv : top) {
      s << "T\t" << kv.first << '\t' << kv.second << '\n';
    }
    if (ops != nullptr) {
      *ops = copy_out(s.str());
    }
    if (path != nullptr) {
      r->save(path);
    }
  })
}

extern "C" void detnas_free(char* p) { std::free(p); }

// libtorch's build configuration (`torch.__config__.show()`): version, CPU capability in
// use, CUDA and cuDNN versions of the build. Free with detnas_free.
extern "C" char* detnas_show_config() { return copy_out(at::show_config()); }

// Enters autocast on `device_type` (0 CPU, 1 CUDA) with `dtype` (0 bfloat16, 1 float16):
// saves the previous state into `prev_enabled` / `prev_dtype` for detnas_autocast_exit.
extern "C" int detnas_autocast_enter(int device_type, int dtype, int* prev_enabled, int* prev_dtype, char* err,
                                     size_t errlen) {
  GUARD({
    const auto dev = device_type == 1 ? at::kCUDA : at::kCPU;
    *prev_enabled = at::autocast::is_autocast_enabled(dev) ? 1 : 0;
    *prev_dtype = static_cast<int>(at::autocast::get_autocast_dtype(dev));
    at::autocast::set_autocast_enabled(dev, true);
    at::autocast::set_autocast_dtype(dev, dtype == 1 ? at::kHalf : at::kBFloat16);
    at::autocast::increment_nesting();
  })
}

// Leaves autocast: restores the saved state, and clears autocast's cast cache when the
// outermost region ends (as torch.autocast's __exit__ does).
extern "C" int detnas_autocast_exit(int device_type, int prev_enabled, int prev_dtype, char* err, size_t errlen) {
  GUARD({
    const auto dev = device_type == 1 ? at::kCUDA : at::kCPU;
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(dev, prev_enabled != 0);
    at::autocast::set_autocast_dtype(dev, static_cast<at::ScalarType>(prev_dtype));
  })
}

// Whether autograd records operations on this thread (torch.is_grad_enabled()).
extern "C" int detnas_grad_enabled() { return c10::GradMode::is_enabled() ? 1 : 0; }
