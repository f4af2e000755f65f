// CUDA runtime and cuDNN errors of a kernel's work, turned into OpError (and so into an OrtStatus).
#pragma once

#include <cuda_runtime_api.h>
#include <cudnn.h>

#include <string>

#include "common/dropout_config.h"
#include "common/errors.h"

namespace caffe2_ort {
namespace cuda {

// `where` names the op and node ("ai.caffe2 Dropout node 'n'"), `what` the failed call.
inline void CheckCuda(cudaError_t err, const std::string& where, const char* what) {
  if (err != cudaSuccess) {
    Fail(ORT_EP_FAIL, where, ": ", what, " failed: ", cudaGetErrorName(err), ": ", cudaGetErrorString(err));
  }
}

inline void CheckCuda(cudaError_t err, const DropoutConfig& config, const char* what) {
  CheckCuda(err, config.Where(), what);
}

inline void CheckCudnn(cudnnStatus_t status, const std::string& where, const char* what) {
  if (status != CUDNN_STATUS_SUCCESS) Fail(ORT_EP_FAIL, where, ": ", what, " failed: ", cudnnGetErrorString(status));
}

// ORT's compute stream for this call; every operation of the kernel goes on it.
inline cudaStream_t ComputeStream(OrtKernelContext* context) {
  void* stream = nullptr;
  Ort::ThrowOnError(Api().KernelContext_GetGPUComputeStream(context, &stream));
  return static_cast<cudaStream_t>(stream);
}

}  // namespace cuda
}  // namespace caffe2_ort
