#include "cpu/dropout_grad.h"

#include <cstring>

#include "common/errors.h"
#include "common/grad_io.h"
#include "cpu/elementwise.h"
#include "cpu/parallel.h"

namespace caffe2_ort {

template <Elem E>
CpuDropoutGrad<E>::CpuDropoutGrad(const OrtKernelInfo* info)
    : config_(ReadDropoutConfig(info, "DropoutGrad", /*with_seed=*/false)), has_mask_(HasInput(info, 1)),
      isa_(SelectCpuIsa()) {
  RequireTrainingMask(config_, has_mask_);
}

template <Elem E>
void CpuDropoutGrad<E>::Compute(OrtKernelContext* context) {
  using Storage = typename ElemTraits<E>::Storage;
  const auto t = GetGradTensors<Storage>(context, config_.is_test, [&](size_t mask_count, uint64_t n) {
    CheckMaskCount(config_, mask_count, n);
  });
  const size_t n = t.n;
  if (n == 0) return;
  const Storage* dy = t.dy;
  Storage* dx = t.dx;
  const bool* mask = t.mask;

  if (config_.is_test) {
    ParallelOverElements(context, n, [&](size_t begin, size_t end) {
      if (dy != dx) std::memcpy(dx + begin, dy + begin, (end - begin) * sizeof(Storage));
    });
    return;
  }
  const float scale = config_.scale;
  const CpuIsa isa = isa_;
  ParallelOverElements(context, n, [&](size_t begin, size_t end) {
    ApplyMaskGrad<E>(isa, dy + begin, mask + begin, dx + begin, end - begin, scale);
  });
}

template class CpuDropoutGrad<Elem::kFloat>;
template class CpuDropoutGrad<Elem::kDouble>;
template class CpuDropoutGrad<Elem::kHalf>;
template class CpuDropoutGrad<Elem::kBFloat16>;

}  // namespace caffe2_ort
