// Launchers of the default-engine CUDA kernels of ai.caffe2 Dropout / DropoutGrad and their packed-mask
// twins BitmaskDropout / BitmaskDropoutGrad (the mask kind K, common/mask_kind.h).
//
// Host-includable: declarations only, the device code lives in dropout_impl.cu. Every launcher
// enqueues on the given stream, never synchronises, launches nothing for n == 0, and returns the
// launch's error (cudaGetLastError) so the caller can turn it into a status.
//
// LaunchDropoutForward's mask follows the RNG contract of common/philox.h: element i uses Philox
// block base + i/4 and word i % 4, kept iff word >= threshold. Each thread works on whole Philox
// blocks, so which random word meets which element does not depend on the grid, the block size or
// the GPU. LaunchApplyKeepBits takes the decisions ready-made (rng = "caffe2_mt19937").
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/element_types.h"
#include "common/mask_kind.h"
#include "common/philox.h"

namespace caffe2_ort {
namespace cuda {

struct ForwardParams {
  uint64_t n = 0;          // elements
  uint64_t base = 0;       // first Philox block of this run, when counter is null
  // The node's Philox counter in device memory (cuda/device_counter.h), or null. When set, a
  // one-thread reserve kernel first does *slot = atomicAdd(counter, ceil(n / 4)) on the stream and
  // the dropout kernel reads its base from *slot, so CUDA-graph replays advance the counter.
  uint64_t* counter = nullptr;
  uint64_t* slot = nullptr;
  PhiloxKey key{0, 0};
  uint64_t threshold = 0;  // 33-bit: 0 keeps every element, 2^32 drops every element
  float scale = 1.0f;      // 1 / (1 - ratio) rounded to float (0 when ratio = 1)
};

// Y[i] = (X[i] * scale) * m[i], computed in float (double for float64) and rounded once; when mask !=
// nullptr, mask[i] = m[i] (kBool) or bit i % 32 of mask[i / 32] = m[i], the bits past n 0 (kBits,
// ceil(n / 32) words). x may equal y (in place). With threshold 0 or 2^32 no random numbers are drawn
// (the counter, when given, still advances: such runs consume their blocks).
template <Elem E, MaskKind K>
cudaError_t LaunchDropoutForward(const typename ElemTraits<E>::Storage* x, typename ElemTraits<E>::Storage* y,
                                 typename MaskTraits<K>::Word* mask, const ForwardParams& params,
                                 cudaStream_t stream);

// The same forward with the keep decisions given as bits (rng = "caffe2_mt19937", drawn on the host):
// m[i] = bit i % 64 of bits[i / 64], bits in device memory holding ceil(n / 64) words. x may equal y.
template <Elem E>
cudaError_t LaunchApplyKeepBits(const typename ElemTraits<E>::Storage* x, typename ElemTraits<E>::Storage* y,
                                bool* mask, const uint64_t* bits, uint64_t n, float scale, cudaStream_t stream);

// dX[i] = (dY[i] * m[i]) * scale with m[i] = (mask[i] != 0) (kBool) or bit i % 32 of mask[i / 32] (kBits;
// the bits past n are not read), or m[i] = keep_all when mask == nullptr. dy may equal dx (in place).
template <Elem E, MaskKind K>
cudaError_t LaunchDropoutBackward(const typename ElemTraits<E>::Storage* dy, const typename MaskTraits<K>::Word* mask,
                                  bool keep_all, typename ElemTraits<E>::Storage* dx, uint64_t n, float scale,
                                  cudaStream_t stream);

// A packed mask of n kept elements (test mode): ceil(n / 32) words, the n valid bits 1, the rest 0.
cudaError_t LaunchFillKeptMaskWords(uint32_t* words, uint64_t n, cudaStream_t stream);

}  // namespace cuda
}  // namespace caffe2_ort
