// The elementwise halves of the CPU kernels: apply keep bits to X (forward) and a bool mask to dY
// (backward), in the element type's compute precision, rounding once.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/element_types.h"
#include "cpu/keep_bits.h"

namespace caffe2_ort {

// y[i] = (x[i] * scale) * m[i], m[i] = bit i of bits; mask[i] = m[i] when mask is non-null.
// `streaming` asks for non-temporal stores (for outputs far larger than the caches).
template <Elem E>
void ApplyKeepBits(CpuIsa isa, const typename ElemTraits<E>::Storage* x, typename ElemTraits<E>::Storage* y,
                   bool* mask, size_t n, const uint64_t* bits, float scale, bool streaming);

// dx[i] = (dy[i] * m[i]) * scale, m[i] = mask[i] != 0.
template <Elem E>
void ApplyMaskGrad(CpuIsa isa, const typename ElemTraits<E>::Storage* dy, const bool* mask,
                   typename ElemTraits<E>::Storage* dx, size_t n, float scale);

// Call after a batch of streaming stores, before the data is handed on.
void StoreFence();

}  // namespace caffe2_ort
