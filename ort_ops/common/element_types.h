// The element types of ai.caffe2 ops: storage type, compute type (float32 for the 16-bit types,
// float64 for float64) and the conversions that round once to the storage type.
#pragma once

#include <cstdint>

#include "common/half.h"

namespace caffe2_ort {

enum class Elem { kFloat, kDouble, kHalf, kBFloat16 };

// M(E) once for every element type: for explicit instantiations at namespace scope.
#define C2ORT_FOR_EACH_ELEM(M) M(Elem::kFloat) M(Elem::kDouble) M(Elem::kHalf) M(Elem::kBFloat16)

template <Elem E>
struct ElemTraits;

template <>
struct ElemTraits<Elem::kFloat> {
  using Storage = float;
  using Compute = float;
  static constexpr const char* kName = "float32";
  static Compute Load(Storage v) { return v; }
  static Storage Store(Compute v) { return v; }
};

template <>
struct ElemTraits<Elem::kDouble> {
  using Storage = double;
  using Compute = double;
  static constexpr const char* kName = "float64";
  static Compute Load(Storage v) { return v; }
  static Storage Store(Compute v) { return v; }
};

template <>
struct ElemTraits<Elem::kHalf> {
  using Storage = uint16_t;
  using Compute = float;
  static constexpr const char* kName = "float16";
  static Compute Load(Storage v) { return HalfToFloat(v); }
  static Storage Store(Compute v) { return FloatToHalf(v); }
};

template <>
struct ElemTraits<Elem::kBFloat16> {
  using Storage = uint16_t;
  using Compute = float;
  static constexpr const char* kName = "bfloat16";
  static Compute Load(Storage v) { return BFloat16ToFloat(v); }
  static Storage Store(Compute v) { return FloatToBFloat16(v); }
};

}  // namespace caffe2_ort
