// DropoutGrad's and BitmaskDropoutGrad's tensors, shared by the CPU and CUDA kernels: dY (input 0),
// the mask (input 1, in training only: bool elements or packed uint32 words, MaskWord) and dX (output
// 0, allocated with dY's shape). Header-only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/ort_api.h"

namespace caffe2_ort {

template <typename Storage, typename MaskWord = bool>
struct GradTensors {
  const Storage* dy = nullptr;     // null when n == 0
  Storage* dx = nullptr;           // null when n == 0
  const MaskWord* mask = nullptr;  // null in test mode
  size_t mask_count = 0;           // the mask's element count (words for a packed mask)
  uint64_t n = 0;               // dY's element count
};

// Reads dY and (when !is_test) the mask, calls check_mask(mask_count, n), which throws for a mask
// the kernel cannot use, and only then allocates dX.
template <typename Storage, typename MaskWord = bool, typename CheckMask>
GradTensors<Storage, MaskWord> GetGradTensors(OrtKernelContext* context, bool is_test, CheckMask&& check_mask) {
  Ort::KernelContext ctx(context);
  auto grad_out = ctx.GetInput(0);
  const auto type_shape = grad_out.GetTensorTypeAndShapeInfo();
  const std::vector<int64_t> shape = type_shape.GetShape();
  GradTensors<Storage, MaskWord> t;
  t.n = type_shape.GetElementCount();
  if (!is_test) {
    auto mask_value = ctx.GetInput(1);
    t.mask_count = mask_value.GetTensorTypeAndShapeInfo().GetElementCount();
    check_mask(t.mask_count, t.n);
    t.mask = mask_value.GetTensorData<MaskWord>();
  }
  auto grad_in = ctx.GetOutput(0, shape);
  if (t.n == 0) return t;
  t.dy = static_cast<const Storage*>(grad_out.GetTensorRawData());
  t.dx = static_cast<Storage*>(grad_in.GetTensorMutableRawData());
  return t;
}

}  // namespace caffe2_ort
