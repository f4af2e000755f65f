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
// the CUDA EP hands one out bound to that stream, else one owned here and bound with cudnnSetStream.
class CudnnHandleSource {
 public:
  CudnnHandleSource() = default;
  ~CudnnHandleSource();
  CudnnHandleSource(const CudnnHandleSource&) = delete;
  CudnnHandleSource& operator=(const CudnnHandleSource&) = delete;

  // Runs fn(handle) with a handle bound to stream; own handles are used under a lock.
  template <typename Fn>
  void With(OrtKernelContext* context, cudaStream_t stream, const std::string& where, Fn&& fn) {
    cudnnHandle_t ort_handle = OrtHandle(context, stream);
    if (ort_handle != nullptr) {
      fn(ort_handle);
      return;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    fn(OwnHandle(stream, where));
  }

 private:
  static cudnnHandle_t OrtHandle(OrtKernelContext* context, cudaStream_t stream);
  cudnnHandle_t OwnHandle(cudaStream_t stream, const std::string& where);  // mutex_ held

  std::mutex mutex_;
  cudnnHandle_t own_ = nullptr;
};

}  // namespace cuda
}  // namespace caffe2_ort
