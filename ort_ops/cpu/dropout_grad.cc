#include "cpu/dropout_grad.h"

#include <cstring>

#include "common/errors.h"
#include "common/grad_io.h"
#include "cpu/elementwise.h"
#include "cpu/parallel.h"

namespace caffe2_ort {

template <Elem E, MaskKind K>
CpuDropoutGrad<E, K>::CpuDropoutGrad(const OrtKernelInfo* info)
    : config_(ReadDropoutConfig(info, MaskTraits<K>::kGradOp, /*with_seed=*/false,
                                /*with_engine=*/K == MaskKind::kBool)),
      has_mask_(HasInput(info, 1)),
      isa_(SelectCpuIsa()) {
  RequireTrainingMask(config_, has_mask_);
}

template <Elem E, MaskKind K>
void CpuDropoutGrad<E, K>::Compute(OrtKernelContext* context) {
  using Storage = typename ElemTraits<E>::Storage;
  using MaskWord = typename MaskTraits<K>::Word;
  const auto t = GetGradTensors<Storage, MaskWord>(context, config_.is_test, [&](size_t mask_count, uint64_t n) {
    if constexpr (K == MaskKind::kBool) {
      CheckMaskCount(config_, mask_count, n);
    } else {
      CheckMaskWordCount(config_, mask_count, n);
    }
  });
  const size_t n = t.n;
  if (n == 0) return;
  const Storage* dy = t.dy;
  Storage* dx = t.dx;
  const MaskWord* mask = t.mask;

  if (config_.is_test) {
    ParallelOverElements(context, n, [&](size_t begin, size_t end) {
      if (dy != dx) std::memcpy(dx + begin, dy + begin, (end - begin) * sizeof(Storage));
    });
    return;
  }
  const float scale = config_.scale;
  const CpuIsa isa = isa_;
  ParallelOverElements(context, n, [&](size_t begin, size_t end) {
    // Tasks start on a multiple of 32 elements, i.e. on a packed mask word.
    const MaskWord* m = K == MaskKind::kBool ? mask + begin : mask + begin / kMaskWordBits;
    ApplyMaskGrad<E>(isa, dy + begin, m, dx + begin, end - begin, scale);
  });
}

C2ORT_INSTANTIATE_DROPOUT_KERNEL(CpuDropoutGrad)

}  // namespace caffe2_ort
