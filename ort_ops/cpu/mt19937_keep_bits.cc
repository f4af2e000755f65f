#include "cpu/mt19937_keep_bits.h"

#include <cmath>
#include <cstring>

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

}  // namespace

Mt19937::Mt19937(uint32_t seed) {
  state_[0] = seed;
  for (size_t i = 1; i < kN; ++i) {
    state_[i] = 1812433253u * (state_[i - 1] ^ (state_[i - 1] >> 30)) + static_cast<uint32_t>(i);
  }
}

void Mt19937::Regenerate() {
  // Three loops with no dependence inside a vector's width, so the compiler vectorises them.
  size_t i = 0;
  for (; i < kN - kM; ++i) state_[i] = Twist(state_[i], state_[i + 1], state_[i + kM]);
  for (; i < kN - 1; ++i) state_[i] = Twist(state_[i], state_[i + 1], state_[i + kM - kN]);
  state_[kN - 1] = Twist(state_[kN - 1], state_[0], state_[kM - 1]);
  for (size_t k = 0; k < kN; ++k) {
    uint32_t y = state_[k];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9D2C5680u;
    y ^= (y << 15) & 0xEFC60000u;
    y ^= y >> 18;
    tempered_[k] = y;
  }
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

void Mt19937Stream::KeepBits(size_t n, uint64_t keep_below, uint64_t* bits) {
  uint32_t words[2 * kBatchElements];
  std::lock_guard<std::mutex> lock(mutex_);
  for (size_t start = 0; start < n; start += kBatchElements) {
    const size_t len = n - start < kBatchElements ? n - start : kBatchElements;
    gen_.Draw(words, 2 * len);
    uint64_t* out = bits + start / kBitsPerWord;
    for (size_t w = 0; w * kBitsPerWord < len; ++w) {
      const size_t count = len - w * kBitsPerWord < kBitsPerWord ? len - w * kBitsPerWord : kBitsPerWord;
      const uint32_t* p = words + 2 * kBitsPerWord * w;
      uint64_t word = 0;
      for (size_t j = 0; j < count; ++j) {
        const uint64_t v = (static_cast<uint64_t>(p[2 * j] & 0x1FFFFFu) << 32) | p[2 * j + 1];
        word |= static_cast<uint64_t>(v < keep_below) << j;
      }
      out[w] = word;
    }
  }
}

void Mt19937Stream::Skip(size_t n) {
  std::lock_guard<std::mutex> lock(mutex_);
  gen_.Skip(2 * static_cast<uint64_t>(n));
}

}  // namespace caffe2_ort
