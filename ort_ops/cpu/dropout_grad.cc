#include "cpu/dropout_grad.h"

#include <cstring>
#include <vector>

#include "common/errors.h"
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
  Ort::KernelContext ctx(context);
  auto grad_out = ctx.GetInput(0);
  const std::vector<int64_t> shape = grad_out.GetTensorTypeAndShapeInfo().GetShape();
  const size_t n = grad_out.GetTensorTypeAndShapeInfo().GetElementCount();

  const bool* mask = nullptr;
  if (!config_.is_test) {
    auto mask_value = ctx.GetInput(1);
    CheckMaskCount(config_, mask_value.GetTensorTypeAndShapeInfo().GetElementCount(), n);
    mask = mask_value.GetTensorData<bool>();
  }

  auto grad_in = ctx.GetOutput(0, shape);
  if (n == 0) return;
  const Storage* dy = static_cast<const Storage*>(grad_out.GetTensorRawData());
  Storage* dx = static_cast<Storage*>(grad_in.GetTensorMutableRawData());

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
