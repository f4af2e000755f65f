// Which cuDNN handle the CUDA kernels of the plugin use (not part of the testing library, which
// brings its own handle).
#pragma once

#include <cuda_runtime_api.h>
#include <cudnn.h>

#include <mutex>
#include <string>

#include "common/ort_api.h"

namespace caffe2_ort {
namespace cuda {

// The cuDNN handle a kernel uses on ORT's compute stream: ORT's own (KernelContext_GetResource) when
// the CUDA EP hands one out bound to that stream, else the kernel's own one, bound with
// cudnnSetStream. The own handle is created with the kernel (on the current device: the caller
// makes the kernel's device current), never inside Compute.
class CudnnHandleSource {
 public:
  explicit CudnnHandleSource(const std::string& where);
  ~CudnnHandleSource();
  CudnnHandleSource(const CudnnHandleSource&) = delete;
  CudnnHandleSource& operator=(const CudnnHandleSource&) = delete;

  // The own handle, for work at kernel creation (the caller binds it to a stream and owns the lock).
  cudnnHandle_t Own() const { return own_; }

  // Runs fn(handle) with a handle bound to stream; the own handle is used under a lock.
  template <typename Fn>
  void With(OrtKernelContext* context, cudaStream_t stream, const std::string& where, Fn&& fn) {
    cudnnHandle_t ort_handle = OrtHandle(context, stream);
    if (ort_handle != nullptr) {
      fn(ort_handle);
      return;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    BindOwn(stream, where);
    fn(own_);
  }

 private:
  static cudnnHandle_t OrtHandle(OrtKernelContext* context, cudaStream_t stream);
  void BindOwn(cudaStream_t stream, const std::string& where);  // mutex_ held

  std::mutex mutex_;
  cudnnHandle_t own_ = nullptr;
};

}  // namespace cuda
}  // namespace caffe2_ort
