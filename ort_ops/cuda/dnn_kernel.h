// The ORT side of the cuDNN engine: one node's CudnnDropout with its RNG states in ORT's device
// memory, its cuDNN handle and the ordering of its uses. Header-only; used by cuda/dropout.cc and
// cuda/dropout_grad.cc.
//
// Kernel creation (runtime API >= 18): the kernel's own cuDNN handle is created on the EP's device,
// the states are taken from ORT's allocator (KernelInfoGetAllocator) and, for the forward, seeded
// on a private stream that is waited for there. The gradient's states are only attached to its
// descriptor (cudnnRestoreDropoutDescriptor), never initialised: cuDNN's backward draws nothing.
// With API 17 the handle is created on the current device and the states are set up on the first
// call's stream (no allocation through CUDA, no synchronisation).
//
// Compute: no cudnnCreate, cudaMalloc or cudaMallocAsync. Forward calls of one node on several of
// ORT's streams share the states and are ordered by an event (StreamOrder), in the host's call order.
// The reserve space of a forward without a mask output is ORT's stream-ordered scratch buffer
// (KernelContext_GetScratchBuffer); with API 17, a per-node buffer kept and reused under that
// ordering (grown when a larger tensor comes; the smaller one stays until the kernel is destroyed).
#pragma once

#include <cuda_runtime_api.h>
#include <cudnn.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "common/element_types.h"
#include "common/errors.h"
#include "cuda/cuda_check.h"
#include "cuda/dnn_handle.h"
#include "cuda/dropout_cudnn.h"
#include "cuda/kernel_memory.h"

namespace caffe2_ort {
namespace cuda {

class CudnnKernelState {
 public:
  enum class Role { kForward, kBackward };

  CudnnKernelState(const OrtKernelInfo* info, const std::string& where, Elem elem, float ratio, uint64_t seed,
                   Role role)
      : where_(where), role_(role), memory_(info, where), dropout_(where, elem, ratio, seed) {
    if (!memory_.HasAllocator()) {
      handles_ = std::make_unique<CudnnHandleSource>(where_);
      return;
    }
    const int device = memory_.Device();
    ScopedDevice scoped(device, where_);
    handles_ = std::make_unique<CudnnHandleSource>(where_);
    if (role_ == Role::kForward) order_ = std::make_unique<StreamOrder>(where_);
    cudnnHandle_t own = handles_->Own();
    states_bytes_ = CudnnDropout::StatesBytes(own, where_);
    states_ = memory_.Alloc(states_bytes_);
    if (role_ == Role::kBackward) {
      dropout_.AttachStates(own, states_, states_bytes_);
      return;
    }
    InitAtCreation(device, where_, [&](cudaStream_t stream) {
      CheckCudnn(cudnnSetStream(own, stream), where_, "cudnnSetStream");
      dropout_.SeedStates(own, states_, states_bytes_);
      CheckCudnn(cudnnSetStream(own, nullptr), where_, "cudnnSetStream");
    });
  }
  CudnnKernelState(const CudnnKernelState&) = delete;
  CudnnKernelState& operator=(const CudnnKernelState&) = delete;

  size_t ReserveBytes(uint64_t n) const { return dropout_.ReserveBytes(n); }

  // reserve: the mask output's bytes, or null when the node has no mask output.
  void Forward(OrtKernelContext* context, cudaStream_t stream, const void* x, void* y, void* reserve, size_t bytes,
               uint64_t n) {
    if (n == 0) return;
    std::unique_ptr<KernelMemory::Scratch> scratch;
    std::lock_guard<std::mutex> lock(mutex_);
    const bool capturing = IsCapturing(stream, where_);
    if (reserve == nullptr) {
      if (RuntimeHasKernelAllocator()) {
        scratch = memory_.ScratchFor(context, bytes);
        reserve = scratch->get();
      } else {
        reserve = retained_.Get(memory_, context, x, bytes);
      }
    }
    handles_->With(context, stream, where_, [&](cudnnHandle_t handle) {
      SetUpOnFirstCall(context, handle, x, capturing);
      order_->Before(stream, capturing, where_);
      dropout_.Forward(handle, x, y, reserve, bytes, n);
      order_->After(stream, capturing, where_);
    });
  }

  void Backward(OrtKernelContext* context, cudaStream_t stream, const void* dy, const void* reserve, size_t bytes,
                void* dx, uint64_t n) {
    if (n == 0) return;
    std::lock_guard<std::mutex> lock(mutex_);
    const bool capturing = IsCapturing(stream, where_);
    handles_->With(context, stream, where_, [&](cudnnHandle_t handle) {
      SetUpOnFirstCall(context, handle, dy, capturing);
      dropout_.Backward(handle, dy, reserve, bytes, dx, n);
    });
  }

 private:
  // API 17: states from the first call's context, seeded on its stream (the forward that follows
  // on that stream sees them; other streams wait through order_).
  void SetUpOnFirstCall(OrtKernelContext* context, cudnnHandle_t handle, const void* data, bool capturing) {
    if (dropout_.HasStates()) return;
    if (capturing) {
      Fail(ORT_FAIL, where_, ": the first run of this node is being captured into a CUDA graph; with onnxruntime ",
           "older than 1.18 its cuDNN states are set up on the first run, which must not be captured");
    }
    memory_.AcquireFrom(context, DeviceOf(data, where_));
    states_bytes_ = CudnnDropout::StatesBytes(handle, where_);
    states_ = memory_.Alloc(states_bytes_);
    if (role_ == Role::kBackward) {
      dropout_.AttachStates(handle, states_, states_bytes_);
    } else {
      order_ = std::make_unique<StreamOrder>(where_);  // on the call's (current) device
      dropout_.SeedStates(handle, states_, states_bytes_);
    }
  }

  std::string where_;
  Role role_;
  KernelMemory memory_;
  CudnnDropout dropout_;
  std::unique_ptr<StreamOrder> order_;  // forward only
  std::unique_ptr<CudnnHandleSource> handles_;
  std::mutex mutex_;
  void* states_ = nullptr;
  size_t states_bytes_ = 0;
  RetainedBuffer retained_;  // API 17 only: the reserve space of a forward without a mask output
};

}  // namespace cuda
}  // namespace caffe2_ort
