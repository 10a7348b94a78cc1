// The NCCL backend of detnas-dist, in a library of its own: it links libtorch_cuda, which the
// engine loads only on GPU machines (the `detnas` launcher preloads it there). The c10d shim
// opens this library with dlopen when a rank computes on a GPU and calls the one function
// below; the backend is then bound to the rank's current CUDA device.

#include <c10/cuda/CUDACachingAllocator.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <cstring>
#include <string>

extern "C" c10d::Backend* detnas_c10d_make_nccl(const c10::intrusive_ptr<c10d::Store>* store, int rank, int world,
                                                 int64_t timeout_ms, char* err, size_t errlen) {
  try {
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = std::chrono::milliseconds(timeout_ms);
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(*store, rank, world, opts);
    return pg.release();
  } catch (const std::exception& e) {
    if (err != nullptr && errlen > 0) {
      std::strncpy(err, e.what(), errlen - 1);
      err[errlen - 1] = '\0';
    }
    return nullptr;
  }
}

// The CUDA caching allocator's peak of allocated bytes on `device` since the last reset
// (torch.cuda.max_memory_allocated), or -1 when CUDA cannot answer.
extern "C" int64_t detnas_cuda_max_allocated(int device) {
  try {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    return stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
  } catch (...) {
    return -1;
  }
}

// Resets that peak (torch.cuda.reset_peak_memory_stats); 0 on success.
extern "C" int detnas_cuda_reset_peak(int device) {
  try {
    c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device));
    return 0;
  } catch (...) {
    return -1;
  }
}

// Counting the host synchronisations of CUDA work: c10's sync-debug mode (as
// torch.cuda.set_sync_debug_mode("warn")) raises a warning at every synchronising CUDA call
// (blocking copies, .item(), nonzero, stream synchronisation); a warning handler installed for
// the process counts those and passes every other warning on.
#include <c10/cuda/CUDAFunctions.h>

#include <atomic>

namespace {

std::atomic<int64_t> g_syncs{0};

struct SyncCounter : public c10::WarningHandler {
  c10::WarningHandler* previous = nullptr;
  void process(const c10::Warning& w) override {
    if (w.msg().find("synchroniz") != std::string::npos) {
      g_syncs.fetch_add(1);
      return;
    }
    if (previous != nullptr) {
      previous->process(w);
    }
  }
};

SyncCounter g_counter;

}  // namespace

// Starts counting (and resets the count); 0 on success.
extern "C" int detnas_cuda_sync_count_start() {
  try {
    if (c10::WarningUtils::get_warning_handler() != &g_counter) {
      g_counter.previous = c10::WarningUtils::get_warning_handler();
      c10::WarningUtils::set_warning_handler(&g_counter);
    }
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_WARN);
    g_syncs.store(0);
    return 0;
  } catch (...) {
    return -1;
  }
}

// The synchronisations counted since the last start.
extern "C" int64_t detnas_cuda_sync_count() { return g_syncs.load(); }

// Stops counting and puts the previous warning handler back.
extern "C" int detnas_cuda_sync_count_stop() {
  try {
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
    if (c10::WarningUtils::get_warning_handler() == &g_counter) {
      c10::WarningUtils::set_warning_handler(g_counter.previous);
    }
    return 0;
  } catch (...) {
    return -1;
  }
}
