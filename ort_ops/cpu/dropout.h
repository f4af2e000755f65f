// ai.caffe2 Dropout (bool mask) and BitmaskDropout (packed mask) on the CPU execution provider.
#pragma once

#include <array>
#include <memory>
#include <utility>

#include "common/custom_op.h"
#include "common/dropout_config.h"
#include "common/element_types.h"
#include "common/mask_kind.h"
#include "cpu/keep_bits.h"
#include "cpu/mt19937_keep_bits.h"

namespace caffe2_ort {

template <Elem E, MaskKind K>
class CpuDropout {
 public:
  static constexpr std::array<std::pair<int, int>, 1> kMayInplace{{{0, 0}}};

  explicit CpuDropout(const OrtKernelInfo* info);
  void Compute(OrtKernelContext* context);

 private:
  using MaskWord = typename MaskTraits<K>::Word;

  DropoutConfig config_;
  bool has_mask_;
  CpuIsa isa_;
  PhiloxCounter counter_;
  std::unique_ptr<Mt19937Stream> mt_;  // rng = "caffe2_mt19937" only
  uint64_t mt_keep_below_ = 0;

  void ComputeMt19937(OrtKernelContext* context, size_t n, const typename ElemTraits<E>::Storage* x,
                      typename ElemTraits<E>::Storage* y, MaskWord* mask);
};

// Y gets X's shape in ORT's graph-level shape inference.
OrtStatusPtr InferDropoutShape(OrtShapeInferContext* ctx);

}  // namespace caffe2_ort
