// The two mask representations of the ai.caffe2 dropout ops. Dropout / DropoutGrad carry one bool per
// element (X's shape); BitmaskDropout / BitmaskDropoutGrad carry the same keep decisions packed into
// uint32 words, 1-D: bit j (LSB first) of word w is element 32 w + j, bits past the last element 0.
// Everything else (attributes, RNG streams, arithmetic) is shared, so the kernels take the kind as a
// template parameter. Host and device includable (no ORT headers).
#pragma once

#include <cstddef>
#include <cstdint>

namespace caffe2_ort {

enum class MaskKind { kBool, kBits };

// Elements per packed mask word.
constexpr uint64_t kMaskWordBits = 32;

// Packed mask words for n elements: ceil(n / 32).
constexpr uint64_t MaskWordsFor(uint64_t n) { return (n + kMaskWordBits - 1) / kMaskWordBits; }

template <MaskKind K>
struct MaskTraits;

template <>
struct MaskTraits<MaskKind::kBool> {
  using Word = bool;
  static constexpr const char* kForwardOp = "Dropout";
  static constexpr const char* kGradOp = "DropoutGrad";
};

template <>
struct MaskTraits<MaskKind::kBits> {
  using Word = uint32_t;
  static constexpr const char* kForwardOp = "BitmaskDropout";
  static constexpr const char* kGradOp = "BitmaskDropoutGrad";
};

}  // namespace caffe2_ort

// Explicit instantiations of a kernel class template Kernel<Elem, MaskKind> for every element type
// (common/element_types.h) and both mask kinds; at namespace scope, where Elem and MaskKind are visible.
#define C2ORT_INSTANTIATE_MASK_KINDS(Kernel, E) \
  template class Kernel<E, MaskKind::kBool>;    \
  template class Kernel<E, MaskKind::kBits>;
#define C2ORT_INSTANTIATE_DROPOUT_KERNEL(Kernel)         \
  C2ORT_INSTANTIATE_MASK_KINDS(Kernel, Elem::kFloat)     \
  C2ORT_INSTANTIATE_MASK_KINDS(Kernel, Elem::kDouble)    \
  C2ORT_INSTANTIATE_MASK_KINDS(Kernel, Elem::kHalf)      \
  C2ORT_INSTANTIATE_MASK_KINDS(Kernel, Elem::kBFloat16)
