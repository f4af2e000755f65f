#include "cuda/dnn_handle.h"

#include "common/errors.h"
#include "cuda/cuda_check.h"

namespace caffe2_ort {
namespace cuda {
namespace {

// From ORT's include/onnxruntime/core/providers/cuda/cuda_resource.h, which ORT's header packages
// (Debian's libonnxruntime-dev among them) do not ship: resources of the CUDA EP start at
// cuda_resource_offset = 10000 (core/providers/resource.h) in the order cuda_stream_t, cudnn_handle_t,
// cublas_handle_t, ...; these ids have not moved since resource version 1, and the CUDA EP accepts
// any version up to its own, so asking with version 1 works on every release that has the call.
constexpr int kOrtCudaResourceVersion = 1;
constexpr int kOrtCudnnHandleResource = 10001;

}  // namespace

CudnnHandleSource::CudnnHandleSource(const std::string& where) {
  CheckCudnn(cudnnCreate(&own_), where, "cudnnCreate");
}

CudnnHandleSource::~CudnnHandleSource() {
  if (own_ != nullptr) cudnnDestroy(own_);
}

cudnnHandle_t CudnnHandleSource::OrtHandle(OrtKernelContext* context, cudaStream_t stream) {
  if (context == nullptr) return nullptr;
  void* resource = nullptr;
  OrtStatus* status =
      Api().KernelContext_GetResource(context, kOrtCudaResourceVersion, kOrtCudnnHandleResource, &resource);
  if (status != nullptr) {
    Api().ReleaseStatus(status);
    return nullptr;
  }
  cudnnHandle_t handle = static_cast<cudnnHandle_t>(resource);
  if (handle == nullptr) return nullptr;
  // Use ORT's handle only if it is bound to the stream this kernel runs on.
  cudaStream_t bound = nullptr;
  if (cudnnGetStream(handle, &bound) != CUDNN_STATUS_SUCCESS || bound != stream) return nullptr;
  return handle;
}

void CudnnHandleSource::BindOwn(cudaStream_t stream, const std::string& where) {
  CheckCudnn(cudnnSetStream(own_, stream), where, "cudnnSetStream");
}

}  // namespace cuda
}  // namespace caffe2_ort
