#include "cuda/cuda_ops.h"

#include "common/custom_op.h"
#include "cpu/dropout.h"  // InferDropoutShape, shared with the CPU kernels
#include "cuda/dropout.h"
#include "cuda/dropout_grad.h"

namespace caffe2_ort {
namespace {

constexpr const char* kCuda = "CUDAExecutionProvider";

template <Elem E>
void AddForType(uint32_t api_version, OpList& ops) {
  constexpr ONNXTensorElementDataType T = OnnxType<E>();
  constexpr ONNXTensorElementDataType kBool = ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL;
  OpSignature dropout{"Dropout", kCuda, {{T, false}}, {{T, false}, {kBool, true}}, &InferDropoutShape};
  OpSignature grad{"DropoutGrad", kCuda, {{T, false}, {kBool, true}}, {{T, false}}, nullptr};
  ops.push_back(std::make_shared<KernelOp<cuda::CudaDropout<E>>>(dropout, api_version));
  ops.push_back(std::make_shared<KernelOp<cuda::CudaDropoutGrad<E>>>(grad, api_version));
}

}  // namespace

void AddCudaOps(uint32_t api_version, OpList& ops) {
  AddForType<Elem::kFloat>(api_version, ops);
  AddForType<Elem::kDouble>(api_version, ops);
  AddForType<Elem::kHalf>(api_version, ops);
  AddForType<Elem::kBFloat16>(api_version, ops);
}

}  // namespace caffe2_ort
