// ai.caffe2 DropoutGrad (bool mask) and BitmaskDropoutGrad (packed mask) on the CPU execution provider.
#pragma once

#include <array>
#include <utility>

#include "common/custom_op.h"
#include "common/dropout_config.h"
#include "common/element_types.h"
#include "common/mask_kind.h"
#include "cpu/keep_bits.h"

namespace caffe2_ort {

template <Elem E, MaskKind K>
class CpuDropoutGrad {
 public:
  static constexpr std::array<std::pair<int, int>, 1> kMayInplace{{{0, 0}}};

  explicit CpuDropoutGrad(const OrtKernelInfo* info);
  void Compute(OrtKernelContext* context);

 private:
  DropoutConfig config_;
  bool has_mask_;
  CpuIsa isa_;
};

}  // namespace caffe2_ort
