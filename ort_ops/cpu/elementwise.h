// The elementwise halves of the CPU kernels: apply keep bits to X (forward) and a bool or packed mask
// to dY (backward), in the element type's compute precision, rounding once; and the packed masks of
// BitmaskDropout (common/mask_kind.h) written from the keep bits.
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

// The same with a packed mask: m[i] = bit i % 32 of words[i / 32]; bits past n are not read.
template <Elem E>
void ApplyMaskGrad(CpuIsa isa, const typename ElemTraits<E>::Storage* dy, const uint32_t* words,
                   typename ElemTraits<E>::Storage* dx, size_t n, float scale);

// Packed mask of n elements from their keep bits (bit i % 64 of bits[i / 64]): writes ceil(n / 32)
// words, bit j of word w = element 32 w + j, with the bits of elements >= n cleared (the keep bits
// past n may hold anything).
void StoreMaskWords(const uint64_t* bits, size_t n, uint32_t* words);

// Packed mask of n kept elements (test mode, ratio 0): ceil(n / 32) words, every bit of an element 1,
// the bits past n 0.
void FillKeptMaskWords(size_t n, uint32_t* words);

// Call after a batch of streaming stores, before the data is handed on.
void StoreFence();

}  // namespace caffe2_ort
