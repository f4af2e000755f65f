// float16 / bfloat16 <-> float conversions with round-to-nearest-even, usable on host and device.
// The 16-bit element types compute in float and round once, so these define their results.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define C2ORT_HD_CONV __host__ __device__ __forceinline__
#else
#define C2ORT_HD_CONV inline
#endif

namespace caffe2_ort {

C2ORT_HD_CONV uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

C2ORT_HD_CONV float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

C2ORT_HD_CONV float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t mant = h & 0x3FFu;
  if (exp == 0x1Fu) return BitsFloat(sign | 0x7F800000u | (mant << 13));  // inf / nan (payload kept)
  if (exp != 0) return BitsFloat(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0) return BitsFloat(sign);
  // Subnormal half: exactly mant * 2^-24.
  const float magnitude = static_cast<float>(mant) * 5.9604644775390625e-08f;
  return sign ? -magnitude : magnitude;
}

C2ORT_HD_CONV uint16_t FloatToHalf(float f) {
  uint32_t u = FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  u &= 0x7FFFFFFFu;
  if (u >= 0x7F800000u) {  // inf or nan; a nan stays a quiet nan with its top payload bits
    return static_cast<uint16_t>(sign | 0x7C00u | (u > 0x7F800000u ? (0x200u | ((u >> 13) & 0x3FFu)) : 0u));
  }
  if (u >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds to inf
  if (u < 0x38800000u) {
    // Result is subnormal or zero: adding 0.5 aligns the bits so the FPU's own RNE does the rounding.
    const float shifted = BitsFloat(u) + 0.5f;
    return static_cast<uint16_t>(sign | (FloatBits(shifted) - 0x3F000000u));
  }
  const uint32_t odd = (u >> 13) & 1u;
  u += 0xC8000FFFu + odd;  // rebias exponent (-112 << 23) and add the RNE rounding bias
  return static_cast<uint16_t>(sign | (u >> 13));
}

C2ORT_HD_CONV float BFloat16ToFloat(uint16_t b) { return BitsFloat(static_cast<uint32_t>(b) << 16); }

C2ORT_HD_CONV uint16_t FloatToBFloat16(float f) {
  const uint32_t u = FloatBits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet nan
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

}  // namespace caffe2_ort
