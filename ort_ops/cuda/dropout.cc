#include "cuda/dropout.h"

#include <cuda_runtime_api.h>

#include <vector>

#include "common/errors.h"
#include "cuda/cuda_check.h"
#include "cuda/dropout_impl.cuh"
#include "cuda/mt19937_staging.h"

namespace caffe2_ort {
namespace cuda {

template <Elem E, MaskKind K>
CudaDropout<E, K>::CudaDropout(const OrtKernelInfo* info)
    : config_(ReadDropoutConfig(info, MaskTraits<K>::kForwardOp, /*with_seed=*/true,
                                /*with_engine=*/K == MaskKind::kBool)),
      has_mask_(HasOutput(info, 1)) {
  if (config_.rng == Rng::kCaffe2Mt19937) {
    if (config_.engine == Engine::kCudnn) {
      // As in Caffe2 on a GPU, cuDNN draws its own masks; the model must still run.
      LogWarning(info, config_.Where() + ": rng = '" + config_.rng_text +
                           "' does not apply under engine 'CUDNN' on the CUDA execution provider: cuDNN draws the "
                           "masks (as Caffe2's GPU did)");
    } else if (!config_.is_test) {
      // Caffe2's CPU stream, drawn on the host and applied on the device (cuda/mt19937_staging.h).
      mt_ = std::make_unique<HostStagedMt19937>(info, config_);
      return;
    }
  }
  if (config_.engine == Engine::kCudnn) {
    RequireCudnnSupport(config_.Where(), E);
    // ratio = 1 runs the default kernel (it drops everything, drawing nothing); cuDNN is not needed.
    if (!config_.is_test && !config_.DropsAll()) {
      cudnn_ = std::make_unique<CudnnKernelState>(info, config_.Where(), E, config_.ratio, config_.seed,
                                                  CudnnKernelState::Role::kForward);
      return;
    }
  }
  // Engine CUDNN with ratio = 1 drops everything outside the RNG contract: no counter.
  if (config_.engine == Engine::kDefault && config_.ConsumesCounter()) {
    counter_ = std::make_unique<DeviceCounter>(info, config_.Where());
  }
}

template <Elem E, MaskKind K>
void CudaDropout<E, K>::Compute(OrtKernelContext* context) {
  using Storage = typename ElemTraits<E>::Storage;
  Ort::KernelContext ctx(context);
  auto input = ctx.GetInput(0);
  const auto type_shape = input.GetTensorTypeAndShapeInfo();
  const std::vector<int64_t> shape = type_shape.GetShape();
  const uint64_t n = type_shape.GetElementCount();
  cudaStream_t stream = ComputeStream(context);

  if (cudnn_ != nullptr) {
    ComputeCudnn(context, stream, input, shape, n);
    return;
  }

  auto output = ctx.GetOutput(0, shape);
  MaskWord* mask = nullptr;
  if constexpr (K == MaskKind::kBits) {
    if (has_mask_) {
      const int64_t words[1] = {static_cast<int64_t>(MaskWordsFor(n))};
      mask = ctx.GetOutput(1, words, 1).GetTensorMutableData<MaskWord>();
    }
  } else if (has_mask_) {
    // Under engine CUDNN with ratio = 1 the mask is still a reserve-space-sized byte tensor.
    if (config_.engine == Engine::kCudnn && !config_.is_test) {
      const size_t bytes = n == 0 ? 0 : CudnnDropout::ReserveBytes(config_.Where(), E, n);
      const int64_t mask_shape[1] = {static_cast<int64_t>(bytes)};
      mask = ctx.GetOutput(1, mask_shape, 1).GetTensorMutableData<bool>();
      if (bytes > 0) CheckCuda(cudaMemsetAsync(mask, 0, bytes, stream), config_, "cudaMemsetAsync (mask)");
      mask = nullptr;  // the Philox kernel below must not write it
    } else {
      mask = ctx.GetOutput(1, shape).GetTensorMutableData<bool>();
    }
  }
  if (n == 0) return;
  const Storage* x = static_cast<const Storage*>(input.GetTensorRawData());
  Storage* y = static_cast<Storage*>(output.GetTensorMutableRawData());

  if (config_.is_test) {
    // Exact copy (NaN payloads included), skipped when Y reuses X's buffer; a requested mask is all true.
    if (x != y) CheckCuda(cudaMemcpyAsync(y, x, n * sizeof(Storage), cudaMemcpyDeviceToDevice, stream), config_,
                          "cudaMemcpyAsync (Y = X)");
    if (mask == nullptr) return;
    if constexpr (K == MaskKind::kBool) {
      CheckCuda(cudaMemsetAsync(mask, 1, n, stream), config_, "cudaMemsetAsync (mask)");
    } else {
      CheckCuda(LaunchFillKeptMaskWords(mask, n, stream), config_, "cudaMemsetAsync (packed mask)");
    }
    return;
  }

  if (mt_ != nullptr) {
    ComputeMt19937(context, stream, x, y, mask, n);
    return;
  }

  ForwardParams params;
  params.n = n;
  if (counter_ != nullptr) {
    const DeviceCounter::Pointers p = counter_->For(context, stream, x);
    params.counter = p.counter;
    params.slot = p.slot;
  }
  params.key = config_.Key();
  params.threshold = config_.threshold;
  params.scale = config_.scale;
  CheckCuda(LaunchDropoutForward<E, K>(x, y, mask, params, stream), config_, "Dropout kernel launch");
}

template <Elem E, MaskKind K>
void CudaDropout<E, K>::ComputeMt19937(OrtKernelContext* context, cudaStream_t stream,
                                       const typename ElemTraits<E>::Storage* x, typename ElemTraits<E>::Storage* y,
                                       MaskWord* mask, uint64_t n) {
  mt_->RefuseCapture(stream);
  // Ratio 0 and 1 still consume their words (as in Caffe2); their constant masks need no copy: the
  // Philox kernel with threshold 0 (keep all) or 2^32 (drop all) and no counter draws nothing.
  ForwardParams constant;
  constant.n = n;
  constant.threshold = config_.threshold;
  constant.scale = config_.scale;
  mt_->Run(
      context, stream, x, n,
      [&] {
        CheckCuda(LaunchDropoutForward<E, K>(x, y, mask, constant, stream), config_, "Dropout kernel launch");
      },
      [&](const uint64_t* bits) {
        if constexpr (K == MaskKind::kBool) {
          CheckCuda(LaunchApplyKeepBits<E>(x, y, mask, bits, n, config_.scale, stream), config_,
                    "Dropout kernel launch (keep bits)");
        } else {
          // The staged keep-bit words (their bits past n are 0) are the packed mask, little endian.
          if (mask != nullptr) {
            CheckCuda(cudaMemcpyAsync(mask, bits, MaskWordsFor(n) * sizeof(uint32_t), cudaMemcpyDeviceToDevice,
                                      stream),
                      config_, "cudaMemcpyAsync (packed mask)");
          }
          CheckCuda(LaunchApplyKeepBits<E>(x, y, nullptr, bits, n, config_.scale, stream), config_,
                    "Dropout kernel launch (keep bits)");
        }
      });
}

template <Elem E, MaskKind K>
void CudaDropout<E, K>::ComputeCudnn(OrtKernelContext* context, cudaStream_t stream, const Ort::ConstValue& input,
                                  const std::vector<int64_t>& shape, uint64_t n) {
  Ort::KernelContext ctx(context);
  auto output = ctx.GetOutput(0, shape);
  const size_t bytes = n == 0 ? 0 : cudnn_->ReserveBytes(n);
  void* reserve = nullptr;
  if (has_mask_) {
    const int64_t mask_shape[1] = {static_cast<int64_t>(bytes)};
    reserve = ctx.GetOutput(1, mask_shape, 1).GetTensorMutableData<bool>();
  }
  if (n == 0) return;
  // Without a mask output, cuDNN's reserve space is scratch memory from ORT (see cuda/dnn_kernel.h).
  cudnn_->Forward(context, stream, input.GetTensorRawData(), output.GetTensorMutableRawData(), reserve, bytes, n);
}

C2ORT_INSTANTIATE_DROPOUT_KERNEL(CudaDropout)

}  // namespace cuda
}  // namespace caffe2_ort
