// Device memory and stream ordering for the CUDA kernels of the plugin, from ONNX Runtime's own
// allocator of the CUDA EP: nothing here calls cudaMalloc, and nothing allocates device memory
// per call except ORT's stream-ordered scratch buffers.
//
// API versions (negotiated at load time, see common/ort_api.h):
//   >= 18  KernelInfoGetAllocator at kernel creation: the per-kernel memory (Philox counter, cuDNN
//          states) is taken and initialised when the session creates the kernel, on a private
//          stream that is waited for there; per-call scratch comes from KernelContext_GetScratchBuffer.
//   17     the allocator comes from the first call's context (KernelContext_GetAllocator, API 15);
//          the memory is initialised on that call's stream, and later streams wait for it.
// Header-only so that it needs no build-system change; used by cuda/dropout.cc and dropout_grad.cc.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/errors.h"
#include "common/ort_api.h"
#include "cuda/cuda_check.h"

namespace caffe2_ort {
namespace cuda {

// First API version with KernelInfoGetAllocator and KernelContext_GetScratchBuffer.
constexpr uint32_t kOrtApiKernelAllocator = 18;

inline bool RuntimeHasKernelAllocator() { return ApiVersion() >= kOrtApiKernelAllocator; }

// Makes `device` current for the scope (kernel creation may run on a thread whose current device
// is another one). Always sets it: that also makes the device's primary context current on this
// thread for cuDNN, whatever this library's (static) cudart has seen before.
class ScopedDevice {
 public:
  ScopedDevice(int device, const std::string& where) {
    CheckCuda(cudaGetDevice(&previous_), where, "cudaGetDevice");
    CheckCuda(cudaSetDevice(device), where, "cudaSetDevice");
  }
  ~ScopedDevice() { (void)cudaSetDevice(previous_); }
  ScopedDevice(const ScopedDevice&) = delete;
  ScopedDevice& operator=(const ScopedDevice&) = delete;

 private:
  int previous_ = 0;
};

// Whether work enqueued on `stream` now is being captured into a CUDA graph (ORT's enable_cuda_graph).
inline bool IsCapturing(cudaStream_t stream, const std::string& where) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  CheckCuda(cudaStreamIsCapturing(stream, &status), where, "cudaStreamIsCapturing");
  return status != cudaStreamCaptureStatusNone;
}

// The device a device pointer lives on.
inline int DeviceOf(const void* ptr, const std::string& where) {
  cudaPointerAttributes attributes{};
  CheckCuda(cudaPointerGetAttributes(&attributes, ptr), where, "cudaPointerGetAttributes");
  return attributes.device;
}

// Runs init(stream) at kernel creation on a private non-blocking stream of `device` and waits for
// it: creation is not Compute, and ORT's streams are non-blocking, so a private stream is the only
// way to have the memory ready before any of them uses it.
template <typename Fn>
void InitAtCreation(int device, const std::string& where, Fn&& init) {
  ScopedDevice scoped(device, where);
  cudaStream_t stream = nullptr;
  CheckCuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), where, "cudaStreamCreateWithFlags");
  try {
    init(stream);
    CheckCuda(cudaStreamSynchronize(stream), where, "cudaStreamSynchronize (kernel creation)");
  } catch (...) {
    (void)cudaStreamSynchronize(stream);
    (void)cudaStreamDestroy(stream);
    throw;
  }
  CheckCuda(cudaStreamDestroy(stream), where, "cudaStreamDestroy");
}

// One kernel's device memory from ORT's allocator. Blocks live until the kernel is destroyed.
class KernelMemory {
 public:
  // Takes the EP's default-memory allocator when the runtime has KernelInfoGetAllocator.
  KernelMemory(const OrtKernelInfo* info, std::string where) : where_(std::move(where)) {
    if (!RuntimeHasKernelAllocator()) return;
    Ort::ThrowOnError(Api().KernelInfoGetAllocator(info, OrtMemTypeDefault, &allocator_));
    const OrtMemoryInfo* mem = nullptr;
    Ort::ThrowOnError(Api().AllocatorGetInfo(allocator_, &mem));
    Ort::ThrowOnError(Api().MemoryInfoGetId(mem, &device_));
  }
  ~KernelMemory() {
    if (allocator_ == nullptr) return;
    // Work using the blocks has finished: ORT releases kernels after their session's runs end.
    for (void* p : blocks_) allocator_->Free(allocator_, p);
    Api().ReleaseAllocator(allocator_);
    if (own_info_ != nullptr) Api().ReleaseMemoryInfo(own_info_);
  }
  KernelMemory(const KernelMemory&) = delete;
  KernelMemory& operator=(const KernelMemory&) = delete;

  bool HasAllocator() const { return allocator_ != nullptr; }
  int Device() const { return device_; }  // -1 until the allocator is known
  const std::string& Where() const { return where_; }

  // API 17: the allocator of `device`'s default memory from a call's context, once.
  void AcquireFrom(OrtKernelContext* context, int device) {
    if (allocator_ != nullptr) return;
    Ort::ThrowOnError(Api().CreateMemoryInfo("Cuda", OrtDeviceAllocator, device, OrtMemTypeDefault, &own_info_));
    Ort::ThrowOnError(Api().KernelContext_GetAllocator(context, own_info_, &allocator_));
    device_ = device;
  }

  // A block kept until the kernel is destroyed. Uses the allocator's Reserve (memory for the
  // session's lifetime, outside the arena's reused bins) where the runtime offers it.
  void* Alloc(size_t bytes) {
    if (allocator_ == nullptr) Fail(ORT_FAIL, where_, ": no ORT device allocator (internal error)");
    void* p = nullptr;
    if (allocator_->version >= kOrtApiKernelAllocator && allocator_->Reserve != nullptr) {
      p = allocator_->Reserve(allocator_, bytes);
    } else {
      p = allocator_->Alloc(allocator_, bytes);
    }
    if (p == nullptr) Fail(ORT_FAIL, where_, ": ORT's CUDA allocator could not provide ", bytes, " bytes");
    blocks_.push_back(p);
    return p;
  }

  // Stream-ordered scratch for one call (API >= 18), freed by the returned object after the work
  // using it is enqueued: ORT's stream-aware arena hands it to other streams only once that work is done.
  class Scratch {
   public:
    Scratch() = default;
    Scratch(OrtAllocator* allocator, void* p) : allocator_(allocator), p_(p) {}
    ~Scratch() {
      if (p_ != nullptr) allocator_->Free(allocator_, p_);
    }
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;
    void* get() const { return p_; }

   private:
    OrtAllocator* allocator_ = nullptr;
    void* p_ = nullptr;
  };

  std::unique_ptr<Scratch> ScratchFor(OrtKernelContext* context, size_t bytes) {
    const OrtMemoryInfo* mem = nullptr;
    Ort::ThrowOnError(Api().AllocatorGetInfo(allocator_, &mem));
    void* p = nullptr;
    Ort::ThrowOnError(Api().KernelContext_GetScratchBuffer(context, mem, bytes, &p));
    if (p == nullptr && bytes > 0) Fail(ORT_FAIL, where_, ": ORT's scratch buffer of ", bytes, " bytes failed");
    return std::make_unique<Scratch>(allocator_, p);
  }

 private:
  std::string where_;
  OrtAllocator* allocator_ = nullptr;
  OrtMemoryInfo* own_info_ = nullptr;
  int device_ = -1;
  std::vector<void*> blocks_;
};

// API 17 (no per-call scratch): a per-node device buffer kept across calls from the kernel's memory,
// grown to at least twice its size when a larger one is needed (the smaller block stays until the
// kernel is destroyed). Its users order their uses of it (StreamOrder).
class RetainedBuffer {
 public:
  // A buffer of at least `bytes` on the device of `on_device` (a device pointer of the call).
  void* Get(KernelMemory& memory, OrtKernelContext* context, const void* on_device, size_t bytes) {
    if (bytes > bytes_) {
      memory.AcquireFrom(context, DeviceOf(on_device, memory.Where()));
      const size_t grown = std::max(bytes, 2 * bytes_);
      p_ = memory.Alloc(grown);
      bytes_ = grown;
    }
    return p_;
  }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// Orders the uses of one piece of device state (cuDNN's RNG states) by several of ORT's streams:
// each use waits for the previous one, whatever stream it ran on, so the host's call order is the
// device's. Inside a CUDA-graph capture nothing is recorded or waited for: a graph replays on one stream.
class StreamOrder {
 public:
  explicit StreamOrder(const std::string& where) {
    CheckCuda(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming), where, "cudaEventCreateWithFlags");
  }
  ~StreamOrder() {
    if (event_ != nullptr) (void)cudaEventDestroy(event_);
  }
  StreamOrder(const StreamOrder&) = delete;
  StreamOrder& operator=(const StreamOrder&) = delete;

  // Call both under the caller's lock, around the work on `stream`.
  void Before(cudaStream_t stream, bool capturing, const std::string& where) {
    if (capturing || !recorded_ || last_ == stream) return;
    CheckCuda(cudaStreamWaitEvent(stream, event_, 0), where, "cudaStreamWaitEvent");
  }
  void After(cudaStream_t stream, bool capturing, const std::string& where) {
    if (capturing) return;
    CheckCuda(cudaEventRecord(event_, stream), where, "cudaEventRecord");
    recorded_ = true;
    last_ = stream;
  }

 private:
  cudaEvent_t event_ = nullptr;
  bool recorded_ = false;
  cudaStream_t last_ = nullptr;
};

}  // namespace cuda
}  // namespace caffe2_ort
