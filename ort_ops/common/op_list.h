// The op objects a domain points at. ORT keeps raw pointers to them, so they live as long as the
// library stays loaded.
#pragma once

#include <memory>
#include <vector>

#include "common/element_types.h"
#include "common/mask_kind.h"
#include "common/ort_api.h"

namespace caffe2_ort {

using OpList = std::vector<std::shared_ptr<OrtCustomOp>>;

constexpr const char* kDomain = "ai.caffe2";

template <Elem E>
constexpr ONNXTensorElementDataType OnnxType() {
  if constexpr (E == Elem::kFloat) return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  if constexpr (E == Elem::kDouble) return ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE;
  if constexpr (E == Elem::kHalf) return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16;
}

// The mask tensor's element type: bool per element, or packed uint32 words.
template <MaskKind K>
constexpr ONNXTensorElementDataType MaskOnnxType() {
  return K == MaskKind::kBool ? ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL : ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32;
}

}  // namespace caffe2_ort
