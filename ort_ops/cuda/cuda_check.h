// CUDA runtime errors of a kernel's work, turned into OpError (and so into an OrtStatus).
#pragma once

#include <cuda_runtime_api.h>

#include "common/dropout_config.h"
#include "common/errors.h"

namespace caffe2_ort {
namespace cuda {

inline void CheckCuda(cudaError_t err, const DropoutConfig& config, const char* what) {
  if (err != cudaSuccess) {
    Fail(ORT_EP_FAIL, config.Where(), ": ", what, " failed: ", cudaGetErrorName(err), ": ", cudaGetErrorString(err));
  }
}

// ORT's compute stream for this call; every operation of the kernel goes on it.
inline cudaStream_t ComputeStream(OrtKernelContext* context) {
  void* stream = nullptr;
  Ort::ThrowOnError(Api().KernelContext_GetGPUComputeStream(context, &stream));
  return static_cast<cudaStream_t>(stream);
}

}  // namespace cuda
}  // namespace caffe2_ort
