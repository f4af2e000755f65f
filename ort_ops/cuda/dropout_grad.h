// ai.caffe2 DropoutGrad (bool mask) and BitmaskDropoutGrad (packed mask) on the CUDA execution provider.
#pragma once

#include <array>
#include <memory>
#include <utility>

#include "common/dropout_config.h"
#include "common/element_types.h"
#include "common/mask_kind.h"
#include "common/ort_api.h"
#include "cuda/dnn_kernel.h"

namespace caffe2_ort {
namespace cuda {

template <Elem E, MaskKind K>
class CudaDropoutGrad {
 public:
  static constexpr std::array<std::pair<int, int>, 1> kMayInplace{{{0, 0}}};

  explicit CudaDropoutGrad(const OrtKernelInfo* info);
  void Compute(OrtKernelContext* context);

 private:
  DropoutConfig config_;
  bool has_mask_;
  std::unique_ptr<CudnnKernelState> cudnn_;  // engine CUDNN in training mode
};

}  // namespace cuda
}  // namespace caffe2_ort
