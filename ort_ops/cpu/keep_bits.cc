#include "cpu/keep_bits.h"

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "cpu/isa.h"

#if C2ORT_X86
#include <cpuid.h>
#endif

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


// k0 and k1 of rounds 0..9, widened to 64-bit lanes. The vector paths read them from memory as
// broadcast operands (a load each, no ALU uop and no register).
struct RoundKeys {
  alignas(64) uint64_t k0[kPhiloxRounds];
  alignas(64) uint64_t k1[kPhiloxRounds];
};

inline void ScheduleKeys(PhiloxKey key, RoundKeys* rk) {
  uint32_t k0 = key.k0, k1 = key.k1;
  for (int round = 0; round < kPhiloxRounds; ++round) {
    rk->k0[round] = k0;
    rk->k1[round] = k1;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  // The compiler must read the keys back from memory rather than re-materialise them in registers.
  asm volatile("" : : "r"(rk) : "memory");
}

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

// Two 8-block streams advanced in lockstep (see kStreams below for why), counters (lo, hi, 0, 0).
C2ORT_INLINE_AVX2 void Philox8x2Rounds(const __m256i (&lo)[2], const __m256i (&hi)[2], const RoundKeys& rk,
                                       Philox8 (&out)[2]) {
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(kPhiloxM1));
  __m256i c0[2] = {lo[0], lo[1]}, c1[2] = {hi[0], hi[1]};
  __m256i c2[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()}, c3[2] = {c2[0], c2[1]};
#pragma GCC unroll 10
  for (int round = 0; round < kPhiloxRounds; ++round) {
    const __m256i k0 = _mm256_set1_epi32(static_cast<int>(rk.k0[round]));
    const __m256i k1 = _mm256_set1_epi32(static_cast<int>(rk.k1[round]));
#pragma GCC unroll 2
    for (int s = 0; s < 2; ++s) {
      __m256i hi0, lo0, hi1, lo1;
      MulHiLo8(c0[s], m0, &hi0, &lo0);
      MulHiLo8(c2[s], m1, &hi1, &lo1);
      c0[s] = _mm256_xor_si256(_mm256_xor_si256(hi1, c1[s]), k0);
      c1[s] = lo1;
      c2[s] = _mm256_xor_si256(_mm256_xor_si256(hi0, c3[s]), k1);
      c3[s] = lo0;
    }
  }
  for (int s = 0; s < 2; ++s) out[s] = Philox8{c0[s], c1[s], c2[s], c3[s]};
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
  RoundKeys rk;
  ScheduleKeys(key, &rk);
  const __m256i t = _mm256_set1_epi32(static_cast<int>(threshold));
  for (size_t w = 0; w < words; ++w) {
    const RoundKeys* keys = &rk;
    asm("" : "+r"(keys));  // the key loads stay broadcast operands in the loop
    const uint64_t b = first_block + w * kBlocksPerWord;
    __m256i lo[2], hi[2];
    Counters8(b, &lo[0], &hi[0]);
    Counters8(b + 8, &lo[1], &hi[1]);
    Philox8 r[2];
    Philox8x2Rounds(lo, hi, *keys, r);
    bits[w] = static_cast<uint64_t>(Keep32(r[0], t)) | (static_cast<uint64_t>(Keep32(r[1], t)) << 32);
  }
}

// ---------------------------------------------------------------- AVX-512
// Each 64-bit lane carries one block's 32-bit state word in its low half. _mm512_mul_epu32 then
// yields the full 32x32->64 product with no shuffling: the low half is lo, one dword shuffle gives
// hi. Upper halves collect garbage from the xors, which the multiplier and the final pack ignore.
//
// Cost per 8 blocks (32 elements) and round: 2 vpmuludq (ports 0/5), 2 moves of the high halves
// down (vpshufd, port 5), 2 vpternlogq (ports 0/5), i.e. 6 uops on the two 512-bit ports = 3
// cycles; the ten rounds are the floor of the kernel (see README, "Benchmark"). The round keys come
// from a table in memory as embedded broadcasts, which cost a load each but no ALU uop and no register:
// broadcasting them from general registers would put 18 more uops per call on port 5, and keeping
// them in registers spills the Philox state of four streams.
// Packs the low 32 bits of the 64-bit lanes of a and b: 16 dwords, a's 8 lanes first.
C2ORT_INLINE_AVX512 __m512i PackLow(__m512i a, __m512i b) {
  const __m512i low_halves = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  return _mm512_permutex2var_epi32(a, low_halves, b);
}
C2ORT_INLINE_AVX512 __m512i PackHigh(__m512i a, __m512i b) {
  const __m512i high_halves = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  return _mm512_permutex2var_epi32(a, high_halves, b);
}

// Rounds 0..8 of kStreams independent 8-block vectors, advanced in lockstep: the compiler emits
// instructions in source order, and a stream-after-stream order leaves the out-of-order window
// holding one stream's 7-cycle dependency chain at a time (that order measured 1.9 cycles per
// element on a Sapphire Rapids-class core, against a floor of 1.0).
constexpr int kStreams = 4;

// The high half of each 64-bit lane moved to the low half (the high half is then don't-care). A
// dword shuffle (port 5 only) rather than a 64-bit shift (port 0 only for 512-bit shifts): tied to
// one port either way, the shuffle measured no slower and up to 8% faster on the Intel machine
// (noisy).
C2ORT_INLINE_AVX512 __m512i High32(__m512i p) { return _mm512_shuffle_epi32(p, _MM_PERM_CDAB); }
struct PhiloxState {
  __m512i c0[kStreams], c1[kStreams], c2[kStreams], c3[kStreams];
};

// Round 0 of kStreams 8-block vectors from counter (lo, hi, 0, 0), where the second product is
// zero. The state words leave with zero upper halves, as the IFMA rounds need.
C2ORT_INLINE_AVX512 void PhiloxRound0(__m512i first, const RoundKeys& rk, PhiloxState* st) {
  const __m512i m0 = _mm512_set1_epi64(kPhiloxM0);
  const __m512i eight = _mm512_set1_epi64(8);
  __m512i blocks = first;
#pragma GCC unroll 4
  for (int s = 0; s < kStreams; ++s) {
    const __m512i p0 = _mm512_mul_epu32(blocks, m0);
    st->c0[s] = _mm512_xor_si512(_mm512_srli_epi64(blocks, 32), _mm512_set1_epi64(rk.k0[0]));
    st->c1[s] = _mm512_setzero_si512();
    st->c2[s] = _mm512_xor_si512(_mm512_srli_epi64(p0, 32), _mm512_set1_epi64(rk.k1[0]));
    st->c3[s] = p0;
    blocks = _mm512_add_epi64(blocks, eight);
  }
}

// Rounds 1..8: per stream 2 vpmuludq, 2 vpshufd (the high halves down), 2 vpternlogq.
C2ORT_INLINE_AVX512 void PhiloxRounds1To8(const RoundKeys& rk, PhiloxState* st) {
  const __m512i m0 = _mm512_set1_epi64(kPhiloxM0);
  const __m512i m1 = _mm512_set1_epi64(kPhiloxM1);
#pragma GCC unroll 8
  for (int round = 1; round < kPhiloxRounds - 1; ++round) {
#pragma GCC unroll 4
    for (int s = 0; s < kStreams; ++s) {
      const __m512i p0 = _mm512_mul_epu32(st->c0[s], m0);
      const __m512i p1 = _mm512_mul_epu32(st->c2[s], m1);
      // 0x96: three-way xor
      st->c0[s] = _mm512_ternarylogic_epi64(High32(p1), st->c1[s], _mm512_set1_epi64(rk.k0[round]), 0x96);
      st->c2[s] = _mm512_ternarylogic_epi64(High32(p0), st->c3[s], _mm512_set1_epi64(rk.k1[round]), 0x96);
      st->c1[s] = p1;
      st->c3[s] = p0;
    }
  }
}

// Rounds 1..8 with IFMA: vpmadd52huq(0, c, m << 20) is bits 52..103 of c m 2^20, i.e. hi(c m),
// provided bits 32..51 of c are zero. The xors that make c0 and c2 therefore zero the upper
// halves (a zero-masked 32-bit ternary op, at no cost); the low products (vpmuludq) keep garbage
// above bit 31, which only those masked xors read. Per stream: 2 vpmuludq, 2 vpmadd52huq,
// 2 vpternlogd, all on either 512-bit port, and a 5-cycle round chain instead of 7.
C2ORT_INLINE_AVX512_IFMA void PhiloxRounds1To8Ifma(const RoundKeys& rk, PhiloxState* st) {
  const __m512i m0 = _mm512_set1_epi64(kPhiloxM0);
  const __m512i m1 = _mm512_set1_epi64(kPhiloxM1);
  const __m512i m0_hi = _mm512_set1_epi64(static_cast<uint64_t>(kPhiloxM0) << 20);
  const __m512i m1_hi = _mm512_set1_epi64(static_cast<uint64_t>(kPhiloxM1) << 20);
  const __mmask16 low_halves = 0x5555;
#pragma GCC unroll 8
  for (int round = 1; round < kPhiloxRounds - 1; ++round) {
#pragma GCC unroll 4
    for (int s = 0; s < kStreams; ++s) {
      const __m512i p0 = _mm512_mul_epu32(st->c0[s], m0);
      const __m512i p1 = _mm512_mul_epu32(st->c2[s], m1);
      const __m512i h0 = _mm512_madd52hi_epu64(_mm512_setzero_si512(), st->c0[s], m0_hi);
      const __m512i h1 = _mm512_madd52hi_epu64(_mm512_setzero_si512(), st->c2[s], m1_hi);
      st->c0[s] = _mm512_maskz_ternarylogic_epi32(low_halves, h1, st->c1[s], _mm512_set1_epi64(rk.k0[round]), 0x96);
      st->c2[s] = _mm512_maskz_ternarylogic_epi32(low_halves, h0, st->c3[s], _mm512_set1_epi64(rk.k1[round]), 0x96);
      st->c1[s] = p1;
      st->c3[s] = p0;
    }
  }
}

// The last round of streams a, a + 1 and the 64 keep bits of their 16 blocks. The round's outputs
// are packed into 16 dwords first, so the high halves of the products are picked by the permutes
// instead of being shifted down: w0 = hi(c2 m1) ^ c1 ^ k0, w1 = lo(c2 m1), w2 = hi(c0 m0) ^ c3 ^ k1,
// w3 = lo(c0 m0). Word k of block j is element 4 j + k, so the four 16-bit compare masks
// interleave bit by bit.
C2ORT_INLINE_AVX512 uint64_t Keep64(const PhiloxState& st, int a, const RoundKeys& rk, __m512i t) {
  const int b = a + 1;
  const __m512i m0 = _mm512_set1_epi64(kPhiloxM0);
  const __m512i m1 = _mm512_set1_epi64(kPhiloxM1);
  const __m512i pa0 = _mm512_mul_epu32(st.c0[a], m0), pa1 = _mm512_mul_epu32(st.c2[a], m1);
  const __m512i pb0 = _mm512_mul_epu32(st.c0[b], m0), pb1 = _mm512_mul_epu32(st.c2[b], m1);
  const int last = kPhiloxRounds - 1;
  const __m512i k0 = _mm512_set1_epi32(static_cast<int>(rk.k0[last]));
  const __m512i k1 = _mm512_set1_epi32(static_cast<int>(rk.k1[last]));
  const __m512i w0 = _mm512_ternarylogic_epi32(PackHigh(pa1, pb1), PackLow(st.c1[a], st.c1[b]), k0, 0x96);
  const __m512i w2 = _mm512_ternarylogic_epi32(PackHigh(pa0, pb0), PackLow(st.c3[a], st.c3[b]), k1, 0x96);
  const uint64_t e0 = _mm512_cmpge_epu32_mask(w0, t);
  const uint64_t e1 = _mm512_cmpge_epu32_mask(PackLow(pa1, pb1), t);
  const uint64_t e2 = _mm512_cmpge_epu32_mask(w2, t);
  const uint64_t e3 = _mm512_cmpge_epu32_mask(PackLow(pa0, pb0), t);
  return _pdep_u64(e0, 0x1111111111111111ull) | _pdep_u64(e1, 0x2222222222222222ull) |
         _pdep_u64(e2, 0x4444444444444444ull) | _pdep_u64(e3, 0x8888888888888888ull);
}

// The AVX-512 keep bits, once per rounds function: a macro because the IFMA function needs its own
// target attribute, and gcc inlines a function only into callers whose targets include its own.
#define C2ORT_DEFINE_KEEP_BITS_AVX512(NAME, TARGET, ROUNDS_1_TO_8)                                               \
  TARGET void NAME(PhiloxKey key, uint64_t first_block, size_t words, uint32_t threshold, uint64_t* bits) {     \
    RoundKeys rk;                                                                                            \
    ScheduleKeys(key, &rk);                                                                                  \
    const __m512i t = _mm512_set1_epi32(static_cast<int>(threshold));                                        \
    const __m512i lanes = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);                                          \
    constexpr size_t kWordsPerStep = kStreams / 2;                                                           \
    /* A tail of one word computes a full step and keeps its first word. */                                  \
    for (size_t w = 0; w < words; w += kWordsPerStep) {                                                      \
      /* Opaque to the optimiser, so it keeps the key loads in the loop (as broadcast operands) instead  */  \
      /* of hoisting 18 broadcast registers out of it and spilling the state. */                             \
      const RoundKeys* keys = &rk;                                                                           \
      asm("" : "+r"(keys));                                                                                  \
      PhiloxState st;                                                                                        \
      const uint64_t first = first_block + w * kBlocksPerWord;                                               \
      PhiloxRound0(_mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(first)), lanes), *keys, &st);   \
      ROUNDS_1_TO_8(*keys, &st);                                                                             \
      bits[w] = Keep64(st, 0, *keys, t);                                                                     \
      if (w + 1 < words) bits[w + 1] = Keep64(st, 2, *keys, t);                                              \
    }                                                                                                        \
  }

C2ORT_DEFINE_KEEP_BITS_AVX512(KeepBitsAvx512, C2ORT_TARGET_AVX512, PhiloxRounds1To8)
C2ORT_DEFINE_KEEP_BITS_AVX512(KeepBitsAvx512Ifma, C2ORT_TARGET_AVX512_IFMA, PhiloxRounds1To8Ifma)
#undef C2ORT_DEFINE_KEEP_BITS_AVX512

#endif  // C2ORT_X86

}  // namespace

#if C2ORT_X86
// F16C from CPUID leaf 1 (ECX bit 29): gcc before 11 has no __builtin_cpu_supports("f16c").
static bool HasF16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & (1u << 29)) != 0;
}
#endif

CpuIsa SelectCpuIsa() {
  CpuIsa best = CpuIsa::kScalar;
#if C2ORT_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("bmi2")) {
    best = CpuIsa::kAvx512;
    if (__builtin_cpu_supports("avx512ifma") && __builtin_cpu_is("intel")) best = CpuIsa::kAvx512Ifma;
  } else if (__builtin_cpu_supports("avx2") && HasF16c()) {
    best = CpuIsa::kAvx2;
  }
#endif
  if (const char* cap = std::getenv("CAFFE2_ORT_CPU_ISA"); cap != nullptr && *cap != '\0') {
    CpuIsa wanted;
    if (std::strcmp(cap, "scalar") == 0) {
      wanted = CpuIsa::kScalar;
    } else if (std::strcmp(cap, "avx2") == 0) {
      wanted = CpuIsa::kAvx2;
    } else if (std::strcmp(cap, "avx512") == 0) {
      wanted = CpuIsa::kAvx512;
    } else if (std::strcmp(cap, "avx512ifma") == 0) {
      wanted = CpuIsa::kAvx512Ifma;
    } else {
      throw std::invalid_argument(std::string("caffe2-ort: CAFFE2_ORT_CPU_ISA = '") + cap +
                                  "' is not one of scalar, avx2, avx512, avx512ifma (unset or empty: the best this CPU supports)");
    }
    if (static_cast<int>(wanted) < static_cast<int>(best)) best = wanted;
  }
  return best;
}

const char* CpuIsaName(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512Ifma:
      return "avx512ifma";
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
  if (isa == CpuIsa::kAvx512Ifma) return KeepBitsAvx512Ifma(key, first_block, words, threshold, bits);
  if (isa == CpuIsa::kAvx512) return KeepBitsAvx512(key, first_block, words, threshold, bits);
  if (isa == CpuIsa::kAvx2) return KeepBitsAvx2(key, first_block, words, threshold, bits);
#endif
  (void)isa;
  KeepBitsScalar(key, first_block, words, threshold, bits);
}

}  // namespace caffe2_ort
