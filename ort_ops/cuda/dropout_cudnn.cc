#include "cuda/dropout_cudnn.h"

#include <climits>
#include <utility>

#include "common/errors.h"
#include "cuda/cuda_check.h"

namespace caffe2_ort {
namespace cuda {
namespace {

// The whole tensor as one (n, 1, 1, 1) NCHW tensor, as Caffe2 described it to cuDNN.
class TensorDesc {
 public:
  TensorDesc(const std::string& where, Elem elem, uint64_t n) {
    if (n > static_cast<uint64_t>(INT_MAX)) {
      Fail(ORT_INVALID_ARGUMENT, where, ": engine 'CUDNN' handles at most ", INT_MAX, " elements (cuDNN's ",
           "dimensions are 32-bit); this tensor has ", n, ". Use engine '' for larger tensors.");
    }
    CheckCudnn(cudnnCreateTensorDescriptor(&desc_), where, "cudnnCreateTensorDescriptor");
    const cudnnStatus_t status =
        cudnnSetTensor4dDescriptor(desc_, CUDNN_TENSOR_NCHW, CudnnType(elem), static_cast<int>(n), 1, 1, 1);
    if (status != CUDNN_STATUS_SUCCESS) {
      cudnnDestroyTensorDescriptor(desc_);
      CheckCudnn(status, where, "cudnnSetTensor4dDescriptor");
    }
  }
  ~TensorDesc() { cudnnDestroyTensorDescriptor(desc_); }
  TensorDesc(const TensorDesc&) = delete;
  TensorDesc& operator=(const TensorDesc&) = delete;
  cudnnTensorDescriptor_t get() const { return desc_; }

 private:
  cudnnTensorDescriptor_t desc_ = nullptr;
};

}  // namespace

bool CudnnSupports(Elem elem) { return elem != Elem::kBFloat16; }

void RequireCudnnSupport(const std::string& where, Elem elem) {
  if (CudnnSupports(elem)) return;
  const char* name = elem == Elem::kBFloat16 ? ElemTraits<Elem::kBFloat16>::kName : "this type";
  Fail(ORT_NOT_IMPLEMENTED, where, ": engine 'CUDNN' does not support element type ", name,
       " (cuDNN's dropout has no such kernel); supported: float32, float64, float16. Use engine '' for ", name, ".");
}

cudnnDataType_t CudnnType(Elem elem) {
  switch (elem) {
    case Elem::kFloat:
      return CUDNN_DATA_FLOAT;
    case Elem::kDouble:
      return CUDNN_DATA_DOUBLE;
    case Elem::kHalf:
      return CUDNN_DATA_HALF;
    case Elem::kBFloat16:
      return CUDNN_DATA_BFLOAT16;
  }
  return CUDNN_DATA_FLOAT;
}

CudnnDropout::CudnnDropout(std::string where, Elem elem, float ratio, uint64_t seed)
    : where_(std::move(where)), elem_(elem), ratio_(ratio), seed_(seed) {
  CheckCudnn(cudnnCreateDropoutDescriptor(&desc_), where_, "cudnnCreateDropoutDescriptor");
}

CudnnDropout::~CudnnDropout() {
  if (desc_ != nullptr) cudnnDestroyDropoutDescriptor(desc_);
}

size_t CudnnDropout::ReserveBytes(const std::string& where, Elem elem, uint64_t n) {
  TensorDesc x(where, elem, n);
  size_t bytes = 0;
  CheckCudnn(cudnnDropoutGetReserveSpaceSize(x.get(), &bytes), where, "cudnnDropoutGetReserveSpaceSize");
  return bytes;
}

size_t CudnnDropout::StatesBytes(cudnnHandle_t handle, const std::string& where) {
  size_t bytes = 0;
  CheckCudnn(cudnnDropoutGetStatesSize(handle, &bytes), where, "cudnnDropoutGetStatesSize");
  return bytes;
}

void CudnnDropout::SeedStates(cudnnHandle_t handle, void* states, size_t bytes) {
  CheckCudnn(cudnnSetDropoutDescriptor(desc_, handle, ratio_, states, bytes, static_cast<unsigned long long>(seed_)),
             where_, "cudnnSetDropoutDescriptor");
  has_states_ = true;
}

void CudnnDropout::AttachStates(cudnnHandle_t handle, void* states, size_t bytes) {
  // cuDNN's backward fails (CUDNN_STATUS_EXECUTION_FAILED_CUDART, seen with cuDNN 9.x on an H100)
  // with a descriptor set without states, so the gradient's descriptor points at states memory;
  // restoring (not setting) it launches no initialisation.
  CheckCudnn(cudnnRestoreDropoutDescriptor(desc_, handle, ratio_, states, bytes,
                                           static_cast<unsigned long long>(seed_)),
             where_, "cudnnRestoreDropoutDescriptor");
  has_states_ = true;
}

void CudnnDropout::Forward(cudnnHandle_t handle, const void* x, void* y, void* reserve, size_t reserve_bytes,
                           uint64_t n) {
  if (n == 0) return;
  if (!has_states_) Fail(ORT_FAIL, where_, ": cuDNN dropout states not set up (internal error)");
  TensorDesc desc(where_, elem_, n);
  CheckCudnn(cudnnDropoutForward(handle, desc_, desc.get(), x, desc.get(), y, reserve, reserve_bytes), where_,
             "cudnnDropoutForward");
}

void CudnnDropout::Backward(cudnnHandle_t handle, const void* dy, const void* reserve, size_t reserve_bytes, void* dx,
                            uint64_t n) {
  if (n == 0) return;
  if (!has_states_) Fail(ORT_FAIL, where_, ": cuDNN dropout descriptor not set up (internal error)");
  TensorDesc desc(where_, elem_, n);
  // cuDNN takes the reserve space as non-const but only reads it in the backward pass.
  CheckCudnn(cudnnDropoutBackward(handle, desc_, desc.get(), dy, desc.get(), dx, const_cast<void*>(reserve),
                                  reserve_bytes),
             where_, "cudnnDropoutBackward");
}

}  // namespace cuda
}  // namespace caffe2_ort
