#include "cuda/dropout_grad.h"

#include <cuda_runtime_api.h>

#include "common/errors.h"
#include "common/grad_io.h"
#include "cuda/cuda_check.h"
#include "cuda/dropout_impl.cuh"

namespace caffe2_ort {
namespace cuda {

template <Elem E, MaskKind K>
CudaDropoutGrad<E, K>::CudaDropoutGrad(const OrtKernelInfo* info)
    : config_(ReadDropoutConfig(info, MaskTraits<K>::kGradOp, /*with_seed=*/false,
                                /*with_engine=*/K == MaskKind::kBool)),
      has_mask_(HasInput(info, 1)) {
  RequireTrainingMask(config_, has_mask_);
  if (config_.engine == Engine::kCudnn) {
    RequireCudnnSupport(config_.Where(), E);
    if (!config_.is_test && !config_.DropsAll()) {
      // Its states are attached, never seeded: cuDNN's backward draws nothing.
      cudnn_ = std::make_unique<CudnnKernelState>(info, config_.Where(), E, config_.ratio, /*seed=*/0,
                                                  CudnnKernelState::Role::kBackward);
    }
  }
}

template <Elem E, MaskKind K>
void CudaDropoutGrad<E, K>::Compute(OrtKernelContext* context) {
  using Storage = typename ElemTraits<E>::Storage;
  using MaskWord = typename MaskTraits<K>::Word;
  const auto t = GetGradTensors<Storage, MaskWord>(context, config_.is_test, [&](size_t mask_count, uint64_t n) {
    if constexpr (K == MaskKind::kBits) {
      CheckMaskWordCount(config_, mask_count, n);
      return;
    }
    if (config_.engine != Engine::kCudnn) {
      CheckMaskCount(config_, mask_count, n);
      return;
    }
    // The mask is the forward's cuDNN reserve space: its size follows from dY's element count.
    const size_t expected = n == 0 ? 0 : CudnnDropout::ReserveBytes(config_.Where(), E, n);
    if (mask_count != expected) {
      Fail(ORT_INVALID_ARGUMENT, config_.Where(), ": engine 'CUDNN' expects the mask to be the forward's cuDNN ",
           "reserve space of ", expected, " bytes for dY's ", n, " elements, but it has ", mask_count,
           " elements (a mask from engine '' or from the CPU cannot be used here)");
    }
  });
  const uint64_t n = t.n;
  if (n == 0) return;
  const Storage* dy = t.dy;
  Storage* dx = t.dx;
  cudaStream_t stream = ComputeStream(context);

  if (config_.is_test) {
    if (dy != dx) CheckCuda(cudaMemcpyAsync(dx, dy, n * sizeof(Storage), cudaMemcpyDeviceToDevice, stream), config_,
                            "cudaMemcpyAsync (dX = dY)");
    return;
  }
  if constexpr (K == MaskKind::kBool) {
    if (cudnn_ != nullptr) {
      cudnn_->Backward(context, stream, dy, t.mask, t.mask_count, dx, n);
      return;
    }
    if (config_.engine == Engine::kCudnn) {
      // ratio = 1 under CUDNN: the forward dropped everything; dX = (dY * 0) * 0.
      CheckCuda(LaunchDropoutBackward<E, K>(dy, nullptr, /*keep_all=*/false, dx, n, config_.scale, stream), config_,
                "DropoutGrad kernel launch");
      return;
    }
  }
  CheckCuda(LaunchDropoutBackward<E, K>(dy, t.mask, /*keep_all=*/true, dx, n, config_.scale, stream), config_,
            "DropoutGrad kernel launch");
}

C2ORT_INSTANTIATE_DROPOUT_KERNEL(CudaDropoutGrad)

}  // namespace cuda
}  // namespace caffe2_ort
