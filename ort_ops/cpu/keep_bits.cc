#include "cpu/keep_bits.h"

#include <cstdlib>
#include <cstring>

#include "cpu/isa.h"

namespace caffe2_ort {
namespace {

void KeepBitsScalar(PhiloxKey key, uint64_t first_block, size_t words, uint32_t threshold, uint64_t* bits) {
  for (size_t w = 0; w < words; ++w) {
    uint64_t word = 0;
    for (size_t j = 0; j < kBlocksPerWord; ++j) {
      const PhiloxBlock r = DropoutBlock(first_block + w * kBlocksPerWord + j, key);
      for (int k = 0; k < 4; ++k) {
        word |= static_cast<uint64_t>(r.w[k] >= threshold) << (4 * j + k);
      }
    }
    bits[w] = word;
  }
}

#if C2ORT_X86


// ---------------------------------------------------------------- AVX2: 8 blocks per vector
struct Philox8 {
  __m256i w0, w1, w2, w3;
};

C2ORT_INLINE_AVX2 void MulHiLo8(__m256i a, __m256i m, __m256i* hi, __m256i* lo) {
  const __m256i even = _mm256_mul_epu32(a, m);                         // lanes 0,2,4,6 as 64-bit
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);  // lanes 1,3,5,7
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

C2ORT_INLINE_AVX2 Philox8 Philox8Rounds(__m256i c0, __m256i c1, PhiloxKey key) {
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(kPhiloxM1));
  __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
  uint32_t k0 = key.k0, k1 = key.k1;
  for (int round = 0; round < kPhiloxRounds; ++round) {
    if (round > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    __m256i hi0, lo0, hi1, lo1;
    MulHiLo8(c0, m0, &hi0, &lo0);
    MulHiLo8(c2, m1, &hi1, &lo1);
    const __m256i n0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(k0)));
    const __m256i n2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(k1)));
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  return Philox8{c0, c1, c2, c3};
}

// Counters (b mod 2^32, b / 2^32) for blocks b = first + 0..7, carrying into the high word.
C2ORT_INLINE_AVX2 void Counters8(uint64_t first, __m256i* lo, __m256i* hi) {
  const __m256i base_lo = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(first)));
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  *lo = _mm256_add_epi32(base_lo, lanes);
  // carry where lo < base_lo (unsigned): flip sign bits and compare signed
  const __m256i flip = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const __m256i carry = _mm256_cmpgt_epi32(_mm256_xor_si256(base_lo, flip), _mm256_xor_si256(*lo, flip));
  *hi = _mm256_sub_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(first >> 32))), carry);
}

// 8 keep bits of 8 consecutive elements held in one vector.
C2ORT_INLINE_AVX2 uint32_t Keep8(__m256i r, __m256i t) {
  const __m256i kept = _mm256_cmpeq_epi32(_mm256_max_epu32(r, t), r);  // r >= t, unsigned
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(kept)));
}

// 32 keep bits of the 32 elements fed by 8 blocks (element 4 j + k is word k of block j).
C2ORT_INLINE_AVX2 uint32_t Keep32(const Philox8& r, __m256i t) {
  const __m256i t0 = _mm256_unpacklo_epi32(r.w0, r.w1);
  const __m256i t1 = _mm256_unpacklo_epi32(r.w2, r.w3);
  const __m256i t2 = _mm256_unpackhi_epi32(r.w0, r.w1);
  const __m256i t3 = _mm256_unpackhi_epi32(r.w2, r.w3);
  const __m256i u0 = _mm256_unpacklo_epi64(t0, t1);  // blocks 0 | 4
  const __m256i u1 = _mm256_unpackhi_epi64(t0, t1);  // blocks 1 | 5
  const __m256i u2 = _mm256_unpacklo_epi64(t2, t3);  // blocks 2 | 6
  const __m256i u3 = _mm256_unpackhi_epi64(t2, t3);  // blocks 3 | 7
  const uint32_t e0 = Keep8(_mm256_permute2x128_si256(u0, u1, 0x20), t);  // elements 0..7
  const uint32_t e1 = Keep8(_mm256_permute2x128_si256(u2, u3, 0x20), t);  // 8..15
  const uint32_t e2 = Keep8(_mm256_permute2x128_si256(u0, u1, 0x31), t);  // 16..23
  const uint32_t e3 = Keep8(_mm256_permute2x128_si256(u2, u3, 0x31), t);  // 24..31
  return e0 | (e1 << 8) | (e2 << 16) | (e3 << 24);
}

C2ORT_TARGET_AVX2 void KeepBitsAvx2(PhiloxKey key, uint64_t first_block, size_t words,
                                                  uint32_t threshold, uint64_t* bits) {
  const __m256i t = _mm256_set1_epi32(static_cast<int>(threshold));
  for (size_t w = 0; w < words; ++w) {
    const uint64_t b = first_block + w * kBlocksPerWord;
    __m256i lo_a, hi_a, lo_b, hi_b;
    Counters8(b, &lo_a, &hi_a);
    Counters8(b + 8, &lo_b, &hi_b);
    const Philox8 ra = Philox8Rounds(lo_a, hi_a, key);
    const Philox8 rb = Philox8Rounds(lo_b, hi_b, key);
    bits[w] = static_cast<uint64_t>(Keep32(ra, t)) | (static_cast<uint64_t>(Keep32(rb, t)) << 32);
  }
}

// ---------------------------------------------------------------- AVX-512
// Each 64-bit lane carries one block's 32-bit state word in its low half. _mm512_mul_epu32 then
// yields the full 32x32->64 product with no shuffling: the low half is lo, a shift gives hi. Upper
// halves collect garbage from the xors, which the multiplier and the final pack ignore.
struct Philox8Blocks {
  __m512i w0, w1, w2, w3;
};

C2ORT_INLINE_AVX512 Philox8Blocks Philox8BlockRounds(uint64_t first_block, PhiloxKey key) {
  const __m512i m0 = _mm512_set1_epi64(kPhiloxM0);
  const __m512i m1 = _mm512_set1_epi64(kPhiloxM1);
  const __m512i blocks = _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(first_block)),
                                          _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7));
  // Round 1 with counter (lo, hi, 0, 0): the second product is zero.
  __m512i p0 = _mm512_mul_epu32(blocks, m0);
  __m512i c0 = _mm512_xor_si512(_mm512_srli_epi64(blocks, 32), _mm512_set1_epi64(key.k0));
  __m512i c1 = _mm512_setzero_si512();
  __m512i c2 = _mm512_xor_si512(_mm512_srli_epi64(p0, 32), _mm512_set1_epi64(key.k1));
  __m512i c3 = p0;
  uint32_t k0 = key.k0, k1 = key.k1;
  for (int round = 1; round < kPhiloxRounds; ++round) {
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
    p0 = _mm512_mul_epu32(c0, m0);
    const __m512i p1 = _mm512_mul_epu32(c2, m1);
    // 0x96: three-way xor
    c0 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p1, 32), c1, _mm512_set1_epi64(k0), 0x96);
    c2 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p0, 32), c3, _mm512_set1_epi64(k1), 0x96);
    c1 = p1;
    c3 = p0;
  }
  return Philox8Blocks{c0, c1, c2, c3};
}

// 64 keep bits from 16 blocks (two vectors of 8): word k of block j is element 4 j + k, so the
// four 16-bit compare masks interleave bit by bit.
C2ORT_INLINE_AVX512 uint64_t Keep64(const Philox8Blocks& a, const Philox8Blocks& b, __m512i t) {
  const __m512i low_halves = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const uint64_t k0 = _mm512_cmpge_epu32_mask(_mm512_permutex2var_epi32(a.w0, low_halves, b.w0), t);
  const uint64_t k1 = _mm512_cmpge_epu32_mask(_mm512_permutex2var_epi32(a.w1, low_halves, b.w1), t);
  const uint64_t k2 = _mm512_cmpge_epu32_mask(_mm512_permutex2var_epi32(a.w2, low_halves, b.w2), t);
  const uint64_t k3 = _mm512_cmpge_epu32_mask(_mm512_permutex2var_epi32(a.w3, low_halves, b.w3), t);
  return _pdep_u64(k0, 0x1111111111111111ull) | _pdep_u64(k1, 0x2222222222222222ull) |
         _pdep_u64(k2, 0x4444444444444444ull) | _pdep_u64(k3, 0x8888888888888888ull);
}

C2ORT_TARGET_AVX512 void KeepBitsAvx512(
    PhiloxKey key, uint64_t first_block, size_t words, uint32_t threshold, uint64_t* bits) {
  const __m512i t = _mm512_set1_epi32(static_cast<int>(threshold));
  size_t w = 0;
  // Four independent 8-block streams per iteration keep the multipliers busy.
  for (; w + 2 <= words; w += 2) {
    const uint64_t b = first_block + w * kBlocksPerWord;
    const Philox8Blocks r0 = Philox8BlockRounds(b, key);
    const Philox8Blocks r1 = Philox8BlockRounds(b + 8, key);
    const Philox8Blocks r2 = Philox8BlockRounds(b + 16, key);
    const Philox8Blocks r3 = Philox8BlockRounds(b + 24, key);
    bits[w] = Keep64(r0, r1, t);
    bits[w + 1] = Keep64(r2, r3, t);
  }
  if (w < words) {
    const uint64_t b = first_block + w * kBlocksPerWord;
    bits[w] = Keep64(Philox8BlockRounds(b, key), Philox8BlockRounds(b + 8, key), t);
  }
}

#endif  // C2ORT_X86

}  // namespace

CpuIsa SelectCpuIsa() {
  CpuIsa best = CpuIsa::kScalar;
#if C2ORT_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("bmi2")) {
    best = CpuIsa::kAvx512;
  } else if (__builtin_cpu_supports("avx2")) {
    best = CpuIsa::kAvx2;
  }
#endif
  if (const char* cap = std::getenv("CAFFE2_ORT_CPU_ISA")) {
    CpuIsa wanted = best;
    if (std::strcmp(cap, "scalar") == 0) wanted = CpuIsa::kScalar;
    if (std::strcmp(cap, "avx2") == 0) wanted = CpuIsa::kAvx2;
    if (std::strcmp(cap, "avx512") == 0) wanted = CpuIsa::kAvx512;
    if (static_cast<int>(wanted) < static_cast<int>(best)) best = wanted;
  }
  return best;
}

const char* CpuIsaName(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512:
      return "avx512";
    case CpuIsa::kAvx2:
      return "avx2";
    default:
      return "scalar";
  }
}

void KeepBits(CpuIsa isa, PhiloxKey key, uint64_t first_block, size_t words, uint32_t threshold, uint64_t* bits) {
#if C2ORT_X86
  if (isa == CpuIsa::kAvx512) return KeepBitsAvx512(key, first_block, words, threshold, bits);
  if (isa == CpuIsa::kAvx2) return KeepBitsAvx2(key, first_block, words, threshold, bits);
#endif
  (void)isa;
  KeepBitsScalar(key, first_block, words, threshold, bits);
}

}  // namespace caffe2_ort
