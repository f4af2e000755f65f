#include "cpu/mt19937_keep_bits.h"

#include <cmath>
#include <cstring>

#include "cpu/isa.h"

namespace caffe2_ort {
namespace {

constexpr size_t kN = Mt19937::kStateWords;
constexpr size_t kM = 397;
constexpr uint32_t kMatrixA = 0x9908B0DFu;
constexpr uint32_t kUpper = 0x80000000u;
constexpr uint32_t kLower = 0x7FFFFFFFu;

inline uint32_t Twist(uint32_t a, uint32_t b, uint32_t m) {
  const uint32_t y = (a & kUpper) | (b & kLower);
  return m ^ (y >> 1) ^ ((0u - (y & 1u)) & kMatrixA);
}

// Elements handled per batch of drawn words (2 words each): a multiple of 64, so every batch fills
// whole keep-bit words.
constexpr size_t kBatchElements = 512;

// One regeneration: three twist loops with no dependence inside a vector's width (distances 1, 227
// and 397), then the tempering of all 624 words. Inlined into per-ISA wrappers so the compiler
// vectorises it with each width.
__attribute__((always_inline)) inline void RegenerateBody(uint32_t* state, uint32_t* tempered) {
  size_t i = 0;
  for (; i < kN - kM; ++i) state[i] = Twist(state[i], state[i + 1], state[i + kM]);
  for (; i < kN - 1; ++i) state[i] = Twist(state[i], state[i + 1], state[i + kM - kN]);
  state[kN - 1] = Twist(state[kN - 1], state[0], state[kM - 1]);
  for (size_t k = 0; k < kN; ++k) {
    uint32_t y = state[k];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9D2C5680u;
    y ^= (y << 15) & 0xEFC60000u;
    y ^= y >> 18;
    tempered[k] = y;
  }
}

void RegenerateScalar(uint32_t* state, uint32_t* tempered) { RegenerateBody(state, tempered); }

// The 53-bit value of element j from its two words (hi first): ((hi << 32) | lo) mod 2^53.
inline uint64_t Value53(const uint32_t* pair) {
  return (static_cast<uint64_t>(pair[0] & 0x1FFFFFu) << 32) | pair[1];
}

void KeepBitsScalar(const uint32_t* words, size_t n, uint64_t keep_below, uint64_t* bits) {
  for (size_t w = 0; w * kBitsPerWord < n; ++w) {
    const size_t count = n - w * kBitsPerWord < kBitsPerWord ? n - w * kBitsPerWord : kBitsPerWord;
    const uint32_t* p = words + 2 * kBitsPerWord * w;
    uint64_t word = 0;
    for (size_t j = 0; j < count; ++j) word |= static_cast<uint64_t>(Value53(p + 2 * j) < keep_below) << j;
    bits[w] = word;
  }
}

#if C2ORT_X86
C2ORT_TARGET_AVX2 void RegenerateAvx2(uint32_t* state, uint32_t* tempered) { RegenerateBody(state, tempered); }
C2ORT_TARGET_AVX512 void RegenerateAvx512(uint32_t* state, uint32_t* tempered) { RegenerateBody(state, tempered); }

// Little-endian, the 64-bit lane at words + 2 j holds hi in its low half and lo in its high half:
// rotating by 32 and keeping 53 bits gives the value. Values and keep_below are below 2^63, so the
// signed 64-bit compare of AVX2 is exact.
C2ORT_TARGET_AVX2 void KeepBitsAvx2(const uint32_t* words, size_t n, uint64_t keep_below, uint64_t* bits) {
  const __m256i mask53 = _mm256_set1_epi64x(static_cast<long long>((uint64_t{1} << 53) - 1));
  const __m256i limit = _mm256_set1_epi64x(static_cast<long long>(keep_below));
  size_t w = 0;
  for (; (w + 1) * kBitsPerWord <= n; ++w) {
    const uint32_t* p = words + 2 * kBitsPerWord * w;
    uint64_t word = 0;
    for (int q = 0; q < 16; ++q) {
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 8 * q));
      const __m256i v = _mm256_and_si256(_mm256_or_si256(_mm256_slli_epi64(x, 32), _mm256_srli_epi64(x, 32)), mask53);
      const __m256i kept = _mm256_cmpgt_epi64(limit, v);
      word |= static_cast<uint64_t>(_mm256_movemask_pd(_mm256_castsi256_pd(kept))) << (4 * q);
    }
    bits[w] = word;
  }
  if (w * kBitsPerWord < n) {
    KeepBitsScalar(words + 2 * kBitsPerWord * w, n - w * kBitsPerWord, keep_below, bits + w);
  }
}

C2ORT_TARGET_AVX512 void KeepBitsAvx512(const uint32_t* words, size_t n, uint64_t keep_below, uint64_t* bits) {
  const __m512i mask53 = _mm512_set1_epi64(static_cast<long long>((uint64_t{1} << 53) - 1));
  const __m512i limit = _mm512_set1_epi64(static_cast<long long>(keep_below));
  size_t w = 0;
  for (; (w + 1) * kBitsPerWord <= n; ++w) {
    const uint32_t* p = words + 2 * kBitsPerWord * w;
    uint64_t word = 0;
    for (int q = 0; q < 8; ++q) {
      const __m512i v = _mm512_and_si512(_mm512_ror_epi64(_mm512_loadu_si512(p + 16 * q), 32), mask53);
      word |= static_cast<uint64_t>(_mm512_cmplt_epu64_mask(v, limit)) << (8 * q);
    }
    bits[w] = word;
  }
  if (w * kBitsPerWord < n) {
    KeepBitsScalar(words + 2 * kBitsPerWord * w, n - w * kBitsPerWord, keep_below, bits + w);
  }
}
#endif  // C2ORT_X86

}  // namespace

Mt19937::Mt19937(uint32_t seed, CpuIsa isa) : isa_(isa) {
  state_[0] = seed;
  for (size_t i = 1; i < kN; ++i) {
    state_[i] = 1812433253u * (state_[i - 1] ^ (state_[i - 1] >> 30)) + static_cast<uint32_t>(i);
  }
}

void Mt19937::Regenerate() {
#if C2ORT_X86
  if (isa_ >= CpuIsa::kAvx512) {  // the IFMA tier adds nothing MT19937 uses
    RegenerateAvx512(state_, tempered_);
  } else if (isa_ == CpuIsa::kAvx2) {
    RegenerateAvx2(state_, tempered_);
  } else {
    RegenerateScalar(state_, tempered_);
  }
#else
  RegenerateScalar(state_, tempered_);
#endif
  next_ = 0;
}

void Mt19937::Draw(uint32_t* out, size_t n) {
  while (n > 0) {
    if (next_ == kN) Regenerate();
    const size_t take = n < kN - next_ ? n : kN - next_;
    std::memcpy(out, tempered_ + next_, take * sizeof(uint32_t));
    next_ += take;
    out += take;
    n -= take;
  }
}

void Mt19937::Skip(uint64_t n) {
  while (n > 0) {
    if (next_ == kN) Regenerate();
    const uint64_t take = n < kN - next_ ? n : kN - next_;
    next_ += static_cast<size_t>(take);
    n -= take;
  }
}

uint64_t Mt19937KeepBelow(float ratio) {
  // keep iff v * 2^-53 < p, p = 1 - ratio in double; v * 2^-53 is exact, so iff v < ceil(p * 2^53).
  const double p = 1.0 - static_cast<double>(ratio);
  if (!(p > 0.0)) return 0;
  return static_cast<uint64_t>(std::ceil(p * 9007199254740992.0));
}

void Mt19937WordsToKeepBits(CpuIsa isa, const uint32_t* words, size_t n, uint64_t keep_below, uint64_t* bits) {
#if C2ORT_X86
  if (isa >= CpuIsa::kAvx512) return KeepBitsAvx512(words, n, keep_below, bits);
  if (isa == CpuIsa::kAvx2) return KeepBitsAvx2(words, n, keep_below, bits);
#endif
  (void)isa;
  KeepBitsScalar(words, n, keep_below, bits);
}

Mt19937Segment::Mt19937Segment(Mt19937Stream& stream, size_t n, size_t chunk, uint64_t keep_below)
    : run_lock_(stream.run_mutex_), gen_(stream.gen_), isa_(stream.isa_), n_(n), chunk_(chunk),
      keep_below_(keep_below) {}

size_t Mt19937Segment::DrawNext(uint64_t* bits) {
  alignas(64) uint32_t words[2 * kBatchElements];
  std::lock_guard<std::mutex> lock(draw_mutex_);
  const size_t c = next_++;
  const size_t begin = c * chunk_;
  const size_t end = begin + chunk_ < n_ ? begin + chunk_ : n_;
  for (size_t start = begin; start < end; start += kBatchElements) {
    const size_t len = end - start < kBatchElements ? end - start : kBatchElements;
    gen_.Draw(words, 2 * len);
    Mt19937WordsToKeepBits(isa_, words, len, keep_below_, bits + (start - begin) / kBitsPerWord);
  }
  return c;
}

void Mt19937Segment::Skip() {
  std::lock_guard<std::mutex> lock(draw_mutex_);
  gen_.Skip(2 * static_cast<uint64_t>(n_));
  next_ = chunks();
}

}  // namespace caffe2_ort
