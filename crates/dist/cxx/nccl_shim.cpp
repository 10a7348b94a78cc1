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
