// The scalar arithmetic of Caffe2's Dropout that every backend must reproduce bit for bit.
#pragma once

#include <cmath>
#include <cstdint>

namespace caffe2_ort {

// Elements with a Philox word r < threshold are dropped. The threshold is min(2^32, floor(ratio * 2^32)),
// so it needs 33 bits: ratio = 1 gives 2^32 and drops everything.
inline uint64_t DropThreshold(float ratio) {
  const double t = std::floor(static_cast<double>(ratio) * 4294967296.0);
  return t >= 4294967296.0 ? (uint64_t{1} << 32) : static_cast<uint64_t>(t);
}

// scale = 1 / (1 - ratio) computed in double and rounded to float; 0 when ratio = 1 (Caffe2's newest guard).
inline float DropScale(float ratio) {
  if (ratio >= 1.0f) return 0.0f;
  return static_cast<float>(1.0 / (1.0 - static_cast<double>(ratio)));
}

}  // namespace caffe2_ort
