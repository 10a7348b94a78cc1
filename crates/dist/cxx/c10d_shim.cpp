// A C interface to PyTorch's c10d (the runtime under torch.distributed), for detnas-dist.
//
// It builds a TCPStore (optionally under a PrefixStore), a c10d::ProcessGroup with the Gloo
// backend for CPU tensors (and, through libdetnas_c10d_nccl.so when CUDA is in use, the NCCL
// backend for CUDA tensors), registers the group by name for the functional collectives, and
// runs collectives on tch tensors (`torch::Tensor*`, tch's C_tensor).
//
// Gloo's own headers come from a Linux distribution's package and are used for declarations
// only: this file never touches a gloo object except through pointers and libtorch's own
// functions (ProcessGroupGloo::createDefaultDevice / createDeviceForInterface, the
// constructor), so a header version that differs from the one libtorch was built with does
// not matter.
//
// Every function returns 0 on success; on failure it returns non-zero and copies the
// exception's message into `err` (at most `errlen` bytes, NUL-terminated).

#include <torch/csrc/distributed/c10d/GroupRegistry.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#ifndef DETNAS_NO_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/torch.h>

#include <dlfcn.h>

// Shared with the device shim.
#include "shim_error.h"

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Ctx {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
  std::string group_name;
  int rank;
  int world;
  std::chrono::milliseconds timeout;
};

void fail_msg(const char* msg, char* err, size_t errlen) { detnas_shim::copy_message(msg, err, errlen); }

#define GUARD(...) GUARD_RETURN(__VA_ARGS__)

void wait(const c10::intrusive_ptr<c10d::Work>& work, const Ctx* c) {
  if (!work->wait(c->timeout)) {
    throw std::runtime_error("a collective timed out");
  }
}

std::vector<at::Tensor> tensors_of(torch::Tensor** ts, size_t n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    v.push_back(*ts[i]);
  }
  return v;
}

// The NCCL backend lives in a library of its own (it links libtorch_cuda, which the engine
// loads only on GPU machines). It exports one function.
using MakeNccl = c10d::Backend* (*)(const c10::intrusive_ptr<c10d::Store>*, int, int, int64_t, char*, size_t);

}  // namespace

extern "C" {

// Connects to (or, with `is_server`, hosts) the store at host:port, wraps it in `prefix`
// when not empty, and builds the process group `group_name` of `world` ranks: Gloo for CPU
// tensors, and NCCL for CUDA tensors when `nccl_library` names the NCCL shim (else no CUDA
// backend). `timeout_ms` bounds the store's waits and every collective.
int detnas_c10d_init(const char* host, uint16_t port, int is_server, int rank, int world, int64_t timeout_ms,
                     const char* prefix, const char* group_name, const char* nccl_library, void** out, char* err,
                     size_t errlen) {
  GUARD({
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_server != 0;
    opts.numWorkers = world;
    opts.waitWorkers = false;
    opts.timeout = timeout;
    c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    if (prefix != nullptr && prefix[0] != '\0') {
      store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), store);
    }
    auto pg = c10::make_intrusive<c10d::ProcessGroup>(store, rank, world);
#ifdef DETNAS_NO_GLOO
    if (nccl_library == nullptr || nccl_library[0] == '\0') {
      throw std::runtime_error(
          "this build has no Gloo backend (no gloo headers at build time): `source scripts/env.sh` and rebuild");
    }
#else
    auto gloo_opts = c10d::ProcessGroupGloo::Options::create(timeout);
    const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
    if (ifname != nullptr && ifname[0] != '\0') {
      gloo_opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    } else {
      gloo_opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    // The Gloo backend talks through its own prefix of the store, as torch.distributed does.
    auto gloo_store = c10::make_intrusive<c10d::PrefixStore>("gloo", store);
    c10::intrusive_ptr<c10d::Backend> gloo =
        c10::make_intrusive<c10d::ProcessGroupGloo>(gloo_store, rank, world, gloo_opts);
    pg->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, gloo);
    pg->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
#endif
    if (nccl_library != nullptr && nccl_library[0] != '\0') {
      void* lib = dlopen(nccl_library, RTLD_NOW | RTLD_GLOBAL);
      if (lib == nullptr) {
        throw std::runtime_error(std::string("cannot load the NCCL shim: ") + dlerror());
      }
      auto make = reinterpret_cast<MakeNccl>(dlsym(lib, "detnas_c10d_make_nccl"));
      if (make == nullptr) {
        throw std::runtime_error("the NCCL shim lacks detnas_c10d_make_nccl");
      }
      char nerr[1024] = {0};
      auto nccl_store = c10::make_intrusive<c10d::PrefixStore>("nccl", store);
      c10::intrusive_ptr<c10d::Store> as_store = nccl_store;
      c10d::Backend* raw = make(&as_store, rank, world, timeout_ms, nerr, sizeof(nerr));
      if (raw == nullptr) {
        throw std::runtime_error(std::string("NCCL backend: ") + nerr);
      }
      auto nccl = c10::intrusive_ptr<c10d::Backend>::reclaim(raw);
      pg->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::NCCL, nccl);
      pg->setDefaultBackend(c10d::ProcessGroup::BackendType::NCCL);
    }
    std::string name(group_name);
    pg->setGroupName(name);
    c10d::register_process_group(name, pg);
    *out = new Ctx{store, pg, name, rank, world, timeout};
    return 0;
  })
}

// Frees the context. `graceful` (no collective failed) first shuts the backends down as
// torch.distributed.destroy_process_group does (NCCL warns at exit otherwise); after a failed
// collective a peer may be gone, so nothing waits on it.
void detnas_c10d_free(void* ctx, int graceful) {
  auto* c = static_cast<Ctx*>(ctx);
  if (c == nullptr) {
    return;
  }
  if (graceful != 0) {
    try {
      c->pg->shutdown();
    } catch (...) {
    }
  }
  try {
    c10d::unregister_process_group(c->group_name);
  } catch (...) {
  }
  delete c;
}

// Sums `n` tensors in place across the ranks (one collective over all of them).
int detnas_c10d_allreduce_sum(void* ctx, torch::Tensor** ts, size_t n, char* err, size_t errlen) {
  GUARD({
    auto* c = static_cast<Ctx*>(ctx);
    auto v = tensors_of(ts, n);
    for (auto& t : v) {
      std::vector<at::Tensor> one{t};
      wait(c->pg->allreduce(one, c10d::AllreduceOptions()), c);
    }
    return 0;
  })
}

// Overwrites `n` tensors with rank `root`'s.
int detnas_c10d_broadcast(void* ctx, torch::Tensor** ts, size_t n, int root, char* err, size_t errlen) {
  GUARD({
    auto* c = static_cast<Ctx*>(ctx);
    auto v = tensors_of(ts, n);
    for (auto& t : v) {
      std::vector<at::Tensor> one{t};
      c10d::BroadcastOptions o;
      o.rootRank = root;
      wait(c->pg->broadcast(one, o), c);
    }
    return 0;
  })
}

int detnas_c10d_barrier(void* ctx, char* err, size_t errlen) {
  GUARD({
    auto* c = static_cast<Ctx*>(ctx);
    wait(c->pg->barrier(c10d::BarrierOptions()), c);
    return 0;
  })
}

// The ranks' `t` concatenated along dim 0 (rank order), differentiable: the gradient of the
// result flows back to each rank's `t` summed over the ranks (a reduce-scatter), through the
// functional op `_c10d_functional_autograd::all_gather_into_tensor`.
int detnas_c10d_all_gather(void* ctx, torch::Tensor* t, torch::Tensor** out, char* err, size_t errlen) {
  GUARD({
    auto* c = static_cast<Ctx*>(ctx);
    static auto gather = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("_c10d_functional_autograd::all_gather_into_tensor", "")
                             .typed<at::Tensor(const at::Tensor&, int64_t, const std::string&)>();
    static auto wait_op = c10::Dispatcher::singleton()
                              .findSchemaOrThrow("_c10d_functional::wait_tensor", "")
                              .typed<at::Tensor(const at::Tensor&)>();
    at::Tensor r = gather.call(t->contiguous(), c->world, c->group_name);
    wait_op.call(r.detach());
    *out = new torch::Tensor(r);
    return 0;
  })
}

// ---- the store -----------------------------------------------------------------------

int detnas_c10d_store_set(void* ctx, const char* key, const uint8_t* value, size_t len, char* err, size_t errlen) {
  GUARD({
    auto* c = static_cast<Ctx*>(ctx);
    c->store->set(std::string(key), std::vector<uint8_t>(value, value + len));
    return 0;
  })
}

// Gets `key`, waiting for it up to the timeout; the value is returned in a buffer allocated
// with malloc (free it with detnas_c10d_free_buffer).
int detnas_c10d_store_get(void* ctx, const char* key, uint8_t** value, size_t* len, char* err, size_t errlen) {
  GUARD({
    auto* c = static_cast<Ctx*>(ctx);
    auto v = c->store->get(std::string(key));
    *len = v.size();
    *value = static_cast<uint8_t*>(std::malloc(v.size() > 0 ? v.size() : 1));
    std::memcpy(*value, v.data(), v.size());
    return 0;
  })
}

// Whether every key of `keys` (`n` NUL-terminated strings) is set, without waiting.
int detnas_c10d_store_check(void* ctx, const char** keys, size_t n, int* present, char* err, size_t errlen) {
  GUARD({
    auto* c = static_cast<Ctx*>(ctx);
    std::vector<std::string> k;
    for (size_t i = 0; i < n; ++i) {
      k.emplace_back(keys[i]);
    }
    *present = c->store->check(k) ? 1 : 0;
    return 0;
  })
}

int detnas_c10d_store_add(void* ctx, const char* key, int64_t delta, int64_t* value, char* err, size_t errlen) {
  GUARD({
    auto* c = static_cast<Ctx*>(ctx);
    *value = c->store->add(std::string(key), delta);
    return 0;
  })
}

int detnas_c10d_store_delete(void* ctx, const char* key, char* err, size_t errlen) {
  GUARD({
    auto* c = static_cast<Ctx*>(ctx);
    c->store->deleteKey(std::string(key));
    return 0;
  })
}

int detnas_c10d_queue_push(void* ctx, const char* key, const uint8_t* value, size_t len, char* err, size_t errlen) {
  GUARD({
    auto* c = static_cast<Ctx*>(ctx);
    c->store->queuePush(std::string(key), std::vector<uint8_t>(value, value + len));
    return 0;
  })
}

// Pops the oldest value of queue `key`; with `block`, waits for one up to the timeout,
// otherwise returns `*found = 0` when the queue is empty.
int detnas_c10d_queue_pop(void* ctx, const char* key, int block, uint8_t** value, size_t* len, int* found,
                          char* err, size_t errlen) {
  GUARD({
    auto* c = static_cast<Ctx*>(ctx);
    std::string k(key);
    if (block == 0 && c->store->queueLen(k) == 0) {
      *found = 0;
      *len = 0;
      *value = nullptr;
      return 0;
    }
    std::vector<uint8_t> v;
    try {
      v = c->store->queuePop(k, block != 0);
    } catch (const std::exception&) {
      // Another process took the last value between the length check and the pop.
      if (block == 0 && c->store->queueLen(k) == 0) {
        *found = 0;
        *len = 0;
        *value = nullptr;
        return 0;
      }
      throw;
    }
    *found = 1;
    *len = v.size();
    *value = static_cast<uint8_t*>(std::malloc(v.size() > 0 ? v.size() : 1));
    std::memcpy(*value, v.data(), v.size());
    return 0;
  })
}

void detnas_c10d_free_buffer(uint8_t* p) { std::free(p); }

// Sets the gradient of `var` to `grad` (tch has no setter).
int detnas_c10d_set_grad(torch::Tensor* var, torch::Tensor* grad, char* err, size_t errlen) {
  GUARD({
    var->mutable_grad() = *grad;
    return 0;
  })
}

}  // extern "C"
