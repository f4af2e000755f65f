// ai.caffe2 Dropout on the CUDA execution provider: the Philox kernels of dropout_impl.cu for
// engine "" / "DEFAULT" (counter in device memory, cuda/device_counter.h), Caffe2's MT19937 stream
// drawn on the host for rng = "caffe2_mt19937" (cuda/mt19937_staging.h), cuDNN's dropout for
// engine "CUDNN" (cuda/dnn_kernel.h).
#pragma once

#include <array>
#include <memory>
#include <utility>
#include <vector>

#include "common/dropout_config.h"
#include "common/element_types.h"
#include "common/mask_kind.h"
#include "common/ort_api.h"
#include "cuda/dnn_kernel.h"
#include "cuda/device_counter.h"
#include "cuda/mt19937_staging.h"

namespace caffe2_ort {
namespace cuda {

template <Elem E, MaskKind K>
class CudaDropout {
 public:
  // Y may reuse X's buffer: every thread reads its elements before writing them.
  static constexpr std::array<std::pair<int, int>, 1> kMayInplace{{{0, 0}}};

  explicit CudaDropout(const OrtKernelInfo* info);
  void Compute(OrtKernelContext* context);

 private:
  using MaskWord = typename MaskTraits<K>::Word;
  // X's shape and element count as Compute read them.
  void ComputeCudnn(OrtKernelContext* context, cudaStream_t stream, const Ort::ConstValue& input,
                    const std::vector<int64_t>& shape, uint64_t n);
  void ComputeMt19937(OrtKernelContext* context, cudaStream_t stream, const typename ElemTraits<E>::Storage* x,
                      typename ElemTraits<E>::Storage* y, MaskWord* mask, uint64_t n);

  DropoutConfig config_;
  bool has_mask_;
  std::unique_ptr<DeviceCounter> counter_;   // training runs that consume the counter
  std::unique_ptr<CudnnKernelState> cudnn_;  // engine CUDNN in training mode
  std::unique_ptr<HostStagedMt19937> mt_;    // rng = "caffe2_mt19937", default engine, training mode
};

}  // namespace cuda
}  // namespace caffe2_ort
