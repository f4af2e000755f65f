// Every CPU path of ApplyKeepBits and ApplyMaskGrad (bool and packed masks) against the portable path,
// bit for bit, for the four element types: special values (NaN payloads, infinities, signed zeros,
// subnormals, values that overflow when scaled), lengths with scalar tails, unaligned and 64-byte
// aligned (streaming) outputs; the packed-mask grad against the bool-mask grad of the same decisions;
// StoreMaskWords and FillKeptMaskWords against a bit-by-bit reference.
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/elementwise.h"

using namespace caffe2_ort;

namespace {

int failures = 0;

template <Elem E>
std::vector<typename ElemTraits<E>::Storage> Inputs(size_t n, std::mt19937_64& rng) {
  using S = typename ElemTraits<E>::Storage;
  std::vector<S> v(n);
  for (size_t i = 0; i < n; ++i) {
    uint64_t r = rng();
    if constexpr (sizeof(S) == 2) {
      std::memcpy(&v[i], &r, 2);  // every bit pattern: NaNs, infinities, subnormals included
    } else if constexpr (sizeof(S) == 4) {
      const float specials[] = {0.0f, -0.0f, 1e-45f, -3e38f, 3e38f, __builtin_inff(), -__builtin_inff()};
      float f;
      if (i % 5 == 0) {
        f = specials[(r >> 8) % 7];
      } else {
        uint32_t u = static_cast<uint32_t>(r);
        std::memcpy(&f, &u, 4);
      }
      std::memcpy(&v[i], &f, 4);
    } else {
      std::memcpy(&v[i], &r, 8);
      if (i % 7 == 0) {
        const double d = (i % 2) ? 1.7e308 : -0.0;
        std::memcpy(&v[i], &d, 8);
      }
    }
  }
  return v;
}

template <typename S>
bool Same(const S* a, const S* b, size_t n, const char* what, const char* isa, const char* type, size_t len) {
  if (std::memcmp(a, b, n * sizeof(S)) == 0) return true;
  for (size_t i = 0; i < n; ++i) {
    if (std::memcmp(a + i, b + i, sizeof(S)) != 0) {
      if (failures++ < 10) std::printf("mismatch: %s isa %s type %s n %zu element %zu\n", what, isa, type, len, i);
      break;
    }
  }
  return false;
}

template <Elem E>
void Check(CpuIsa isa, std::mt19937_64& rng) {
  using S = typename ElemTraits<E>::Storage;
  const size_t lengths[] = {1, 63, 64, 200, 256, 1000 + 37};
  const float scales[] = {2.0f, 1.0f / 0.9f, 16777216.0f};
  for (size_t n : lengths) {
    for (float scale : scales) {
      for (size_t offset : {size_t{0}, size_t{1}}) {  // 64-byte aligned, or not
        const std::vector<S> x = Inputs<E>(n, rng);
        std::vector<uint64_t> bits((n + 63) / 64);
        for (auto& w : bits) w = rng();
        // Outputs in 64-byte aligned buffers, shifted by `offset` elements.
        const size_t bytes = (n + 64) * sizeof(S) + 64;
        S* y_want = static_cast<S*>(std::aligned_alloc(64, bytes));
        S* y_got = static_cast<S*>(std::aligned_alloc(64, bytes));
        bool* m_want = static_cast<bool*>(std::aligned_alloc(64, n + 128));
        bool* m_got = static_cast<bool*>(std::aligned_alloc(64, n + 128));
        for (bool streaming : {false, true}) {
          for (bool with_mask : {true, false}) {
            std::memset(static_cast<void*>(y_got), 0x5A, bytes);
            std::memset(m_got, 0x5A, n + 128);
            ApplyKeepBits<E>(CpuIsa::kScalar, x.data(), y_want + offset, with_mask ? m_want + offset : nullptr, n,
                             bits.data(), scale, false);
            ApplyKeepBits<E>(isa, x.data(), y_got + offset, with_mask ? m_got + offset : nullptr, n, bits.data(),
                             scale, streaming);
            StoreFence();
            Same(y_want + offset, y_got + offset, n, "ApplyKeepBits y", CpuIsaName(isa), ElemTraits<E>::kName, n);
            if (with_mask) Same(m_want + offset, m_got + offset, n, "ApplyKeepBits mask", CpuIsaName(isa), ElemTraits<E>::kName, n);
          }
        }
        // DropoutGrad: any nonzero mask byte counts as kept.
        std::vector<uint8_t> mask_bytes(n);
        for (auto& b : mask_bytes) b = (rng() & 1) ? static_cast<uint8_t>(1 + rng() % 255) : 0;
        const bool* mask = reinterpret_cast<const bool*>(mask_bytes.data());
        ApplyMaskGrad<E>(CpuIsa::kScalar, x.data(), mask, y_want + offset, n, scale);
        ApplyMaskGrad<E>(isa, x.data(), mask, y_got + offset, n, scale);
        Same(y_want + offset, y_got + offset, n, "ApplyMaskGrad dx", CpuIsaName(isa), ElemTraits<E>::kName, n);
        // BitmaskDropoutGrad: the same decisions packed, with random padding bits (never read).
        std::vector<uint32_t> words((n + 31) / 32);
        for (auto& w : words) w = static_cast<uint32_t>(rng());
        for (size_t i = 0; i < n; ++i) {
          const uint32_t bit = uint32_t{1} << (i % 32);
          words[i / 32] = mask_bytes[i] != 0 ? (words[i / 32] | bit) : (words[i / 32] & ~bit);
        }
        for (CpuIsa path : {CpuIsa::kScalar, isa}) {
          std::memset(static_cast<void*>(y_got), 0x5A, bytes);
          ApplyMaskGrad<E>(path, x.data(), words.data(), y_got + offset, n, scale);
          Same(y_want + offset, y_got + offset, n, "ApplyMaskGrad dx (packed mask)", CpuIsaName(path),
               ElemTraits<E>::kName, n);
        }
        std::free(y_want);
        std::free(y_got);
        std::free(m_want);
        std::free(m_got);
      }
    }
  }
}

// StoreMaskWords and FillKeptMaskWords: ceil(n / 32) words, bit i of the words = bit i of the keep
// bits for i < n, 0 beyond; the word after them is never written.
void CheckMaskWords(std::mt19937_64& rng) {
  for (size_t n : {size_t{1}, size_t{31}, size_t{32}, size_t{33}, size_t{63}, size_t{64}, size_t{65}, size_t{96},
                   size_t{127}, size_t{128}, size_t{256}, size_t{1000}}) {
    std::vector<uint64_t> bits((n + 63) / 64);
    for (auto& w : bits) w = rng();  // bits past n set at random: they must not reach the mask
    const size_t words = (n + 31) / 32;
    std::vector<uint32_t> got(words + 1, 0xA5A5A5A5u), kept(words + 1, 0xA5A5A5A5u);
    StoreMaskWords(bits.data(), n, got.data());
    FillKeptMaskWords(n, kept.data());
    for (size_t i = 0; i < 32 * words; ++i) {
      const bool want = i < n && ((bits[i / 64] >> (i % 64)) & 1u);
      const bool have = (got[i / 32] >> (i % 32)) & 1u;
      const bool have_kept = (kept[i / 32] >> (i % 32)) & 1u;
      if (want != have || have_kept != (i < n)) {
        if (failures++ < 10) std::printf("mismatch: mask words n %zu bit %zu\n", n, i);
        break;
      }
    }
    if (got[words] != 0xA5A5A5A5u || kept[words] != 0xA5A5A5A5u) {
      if (failures++ < 10) std::printf("mask words n %zu: wrote past word %zu\n", n, words);
    }
  }
}

}  // namespace

int main() {
  const CpuIsa best = SelectCpuIsa();
  std::mt19937_64 rng(12345);
  CheckMaskWords(rng);
  std::printf("checked mask words\n");
  for (CpuIsa isa : {CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAvx512Ifma}) {
    if (static_cast<int>(isa) > static_cast<int>(best)) continue;  // not supported on this CPU
    Check<Elem::kFloat>(isa, rng);
    Check<Elem::kDouble>(isa, rng);
    Check<Elem::kHalf>(isa, rng);
    Check<Elem::kBFloat16>(isa, rng);
    std::printf("checked %s\n", CpuIsaName(isa));
  }
  std::printf(failures == 0 ? "ok\n" : "FAILED\n");
  return failures == 0 ? 0 : 1;
}
