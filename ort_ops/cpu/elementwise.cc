#include "cpu/elementwise.h"

#include <cstring>

#include "cpu/isa.h"

namespace caffe2_ort {
namespace {

// kSpread[b] holds the 8 bits of b as 8 bytes of 0/1 (little endian), for expanding keep bits.
struct SpreadTable {
  uint64_t v[256];
  constexpr SpreadTable() : v() {
    for (int b = 0; b < 256; ++b) {
      uint64_t bytes = 0;
      for (int j = 0; j < 8; ++j) bytes |= static_cast<uint64_t>((b >> j) & 1) << (8 * j);
      v[b] = bytes;
    }
  }
};
constexpr SpreadTable kSpread;

template <Elem E>
void ApplyKeepBitsPortable(const typename ElemTraits<E>::Storage* x, typename ElemTraits<E>::Storage* y, bool* mask,
                           size_t n, const uint64_t* bits, float scale) {
  using Tr = ElemTraits<E>;
  using C = typename Tr::Compute;
  const C s = static_cast<C>(scale);
  uint8_t keep[64];
  for (size_t start = 0; start < n; start += 64) {
    const size_t len = n - start < 64 ? n - start : 64;
    // Bits -> bytes with a table, so the arithmetic loop below is branch-free and vectorises.
    for (int k = 0; k < 8; ++k) {
      const uint64_t bytes = kSpread.v[(bits[start / 64] >> (8 * k)) & 0xFF];
      std::memcpy(keep + 8 * k, &bytes, 8);
    }
    for (size_t i = 0; i < len; ++i) {
      // Multiplying by 0 rather than writing 0 keeps Caffe2's signed zeros and NaN propagation.
      y[start + i] = Tr::Store((Tr::Load(x[start + i]) * s) * static_cast<C>(keep[i]));
    }
    if (mask != nullptr) std::memcpy(mask + start, keep, len);  // bool is one byte holding 0 or 1
  }
}

// The mask of DropoutGrad (one byte per element, any nonzero byte kept) or BitmaskDropoutGrad (packed
// words), read by index: the grad loops below are written once for both.
struct ByteMask {
  const uint8_t* bytes;
  bool Kept(size_t i) const { return bytes[i] != 0; }
};
struct WordMask {
  const uint32_t* words;
  bool Kept(size_t i) const { return ((words[i / 32] >> (i % 32)) & 1u) != 0; }
};

// Elements [begin, n).
template <Elem E, typename Mask>
void ApplyMaskGradPortable(const typename ElemTraits<E>::Storage* dy, Mask mask, typename ElemTraits<E>::Storage* dx,
                           size_t begin, size_t n, float scale) {
  using Tr = ElemTraits<E>;
  using C = typename Tr::Compute;
  const C s = static_cast<C>(scale);
  for (size_t i = begin; i < n; ++i) {
    dx[i] = Tr::Store((Tr::Load(dy[i]) * static_cast<C>(mask.Kept(i))) * s);
  }
}

#if C2ORT_X86

// 16 floats in, 16 floats out: (x * s) * m. A kept element's (x * s) * 1 is x * s itself, so only
// the dropped lanes take the second multiply (by 0, which keeps signed zeros and NaN): 2 uops.
C2ORT_INLINE_AVX512 __m512 Scale16(__m512 x, __m512 s, __mmask16 keep) {
  const __m512 xs = _mm512_mul_ps(x, s);
  return _mm512_mask_mul_ps(xs, static_cast<__mmask16>(~keep), xs, _mm512_setzero_ps());
}

// The same in double.
C2ORT_INLINE_AVX512 __m512d Scale8(__m512d x, __m512d s, __mmask8 keep) {
  const __m512d xs = _mm512_mul_pd(x, s);
  return _mm512_mask_mul_pd(xs, static_cast<__mmask8>(~keep), xs, _mm512_setzero_pd());
}

// (dy * m) * s with m = 0.0 / 1.0. (A masked multiply of the kept lanes by s, as in Scale16, measured
// 5% slower here: dy is then needed by two multiplies, so its load no longer folds into one.)
C2ORT_INLINE_AVX512 __m512 Grad16(__m512 dy, __m512 s, __mmask16 keep) {
  return _mm512_mul_ps(_mm512_mul_ps(dy, _mm512_maskz_mov_ps(keep, _mm512_set1_ps(1.0f))), s);
}

C2ORT_INLINE_AVX512 __m512 LoadBf16(const uint16_t* p) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

C2ORT_INLINE_AVX512 __m256i ToBf16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  const __m512i quiet_nan = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  const __mmask16 is_nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(is_nan, rounded, quiet_nan));
}

// 16 16-bit elements; two streaming halves fill one cache line of a 64-byte aligned output.
C2ORT_INLINE_AVX512 void Store256(uint16_t* p, __m256i v, bool streaming) {
  if (streaming) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), v);
  } else {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v);
  }
}

template <Elem E>
C2ORT_TARGET_AVX512 void ApplyKeepBitsAvx512(const typename ElemTraits<E>::Storage* x,
                                         typename ElemTraits<E>::Storage* y, bool* mask, size_t n,
                                         const uint64_t* bits, float scale, bool streaming) {
  const __m512 s = _mm512_set1_ps(scale);
  const __m512i ones8 = _mm512_set1_epi8(1);
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    const uint64_t b = bits[i / 64];
    if constexpr (E == Elem::kFloat) {
      for (int q = 0; q < 4; ++q) {
        const __m512 v = Scale16(_mm512_loadu_ps(x + i + 16 * q), s, static_cast<__mmask16>(b >> (16 * q)));
        if (streaming) {
          _mm512_stream_ps(y + i + 16 * q, v);
        } else {
          _mm512_storeu_ps(y + i + 16 * q, v);
        }
      }
    } else if constexpr (E == Elem::kDouble) {
      const __m512d sd = _mm512_set1_pd(static_cast<double>(scale));
      for (int q = 0; q < 8; ++q) {
        const __m512d v = Scale8(_mm512_loadu_pd(x + i + 8 * q), sd, static_cast<__mmask8>(b >> (8 * q)));
        if (streaming) {
          _mm512_stream_pd(y + i + 8 * q, v);
        } else {
          _mm512_storeu_pd(y + i + 8 * q, v);
        }
      }
    } else if constexpr (E == Elem::kHalf) {
      for (int q = 0; q < 4; ++q) {
        const __m512 in = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i + 16 * q)));
        const __m512 v = Scale16(in, s, static_cast<__mmask16>(b >> (16 * q)));
        Store256(y + i + 16 * q, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), streaming);
      }
    } else {  // bfloat16
      for (int q = 0; q < 4; ++q) {
        const __m512 v = Scale16(LoadBf16(x + i + 16 * q), s, static_cast<__mmask16>(b >> (16 * q)));
        Store256(y + i + 16 * q, ToBf16(v), streaming);
      }
    }
    if (mask != nullptr) {
      const __m512i m = _mm512_maskz_mov_epi8(_cvtu64_mask64(b), ones8);
      if (streaming) {
        _mm512_stream_si512(reinterpret_cast<__m512i*>(mask + i), m);
      } else {
        _mm512_storeu_si512(mask + i, m);
      }
    }
  }
  if (i < n) ApplyKeepBitsPortable<E>(x + i, y + i, mask ? mask + i : nullptr, n - i, bits + i / 64, scale);
}

// Keep bits of the 16 elements from i (a multiple of 16).
C2ORT_INLINE_AVX512 __mmask16 Keep16(ByteMask m, size_t i) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(m.bytes + i));
  return _mm_test_epi8_mask(bytes, bytes);
}
C2ORT_INLINE_AVX512 __mmask16 Keep16(WordMask m, size_t i) {
  return static_cast<__mmask16>(m.words[i / 32] >> (i % 32));
}

template <Elem E, typename Mask>
C2ORT_TARGET_AVX512 void ApplyMaskGradAvx512(const typename ElemTraits<E>::Storage* dy, Mask mask,
                                         typename ElemTraits<E>::Storage* dx, size_t n, float scale) {
  const __m512 s = _mm512_set1_ps(scale);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __mmask16 keep = Keep16(mask, i);
    if constexpr (E == Elem::kFloat) {
      _mm512_storeu_ps(dx + i, Grad16(_mm512_loadu_ps(dy + i), s, keep));
    } else if constexpr (E == Elem::kDouble) {
      const __m512d sd = _mm512_set1_pd(static_cast<double>(scale));
      for (int q = 0; q < 2; ++q) {
        const __mmask8 k = static_cast<__mmask8>(keep >> (8 * q));
        const __m512d m = _mm512_maskz_mov_pd(k, _mm512_set1_pd(1.0));
        _mm512_storeu_pd(dx + i + 8 * q, _mm512_mul_pd(_mm512_mul_pd(_mm512_loadu_pd(dy + i + 8 * q), m), sd));
      }
    } else if constexpr (E == Elem::kHalf) {
      const __m512 in = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(dy + i)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dx + i),
                          _mm512_cvtps_ph(Grad16(in, s, keep), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    } else {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dx + i), ToBf16(Grad16(LoadBf16(dy + i), s, keep)));
    }
  }
  if (i < n) ApplyMaskGradPortable<E>(dy, mask, dx, i, n, scale);
}

// ---------------------------------------------------------------- AVX2 (+ F16C for float16)
// The keep factors m = 0.0 / 1.0 come from the bits; (x * s) * m is then exactly the formula.

// 8 floats of 1.0f / 0.0f from 8 keep bits.
C2ORT_INLINE_AVX2 __m256 KeepFactors8(uint32_t byte) {
  const __m256i select = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256i hit = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(byte)), select), select);
  return _mm256_and_ps(_mm256_castsi256_ps(hit), _mm256_set1_ps(1.0f));
}

// 4 doubles of 1.0 / 0.0 from 4 keep bits.
C2ORT_INLINE_AVX2 __m256d KeepFactors4(uint32_t nibble) {
  const __m256i select = _mm256_setr_epi64x(1, 2, 4, 8);
  const __m256i hit = _mm256_cmpeq_epi64(_mm256_and_si256(_mm256_set1_epi64x(nibble), select), select);
  return _mm256_and_pd(_mm256_castsi256_pd(hit), _mm256_set1_pd(1.0));
}

C2ORT_INLINE_AVX2 __m256 LoadBf16x8(const uint16_t* p) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

// Round to nearest even, NaN to a quiet NaN: FloatToBFloat16 on 8 lanes.
C2ORT_INLINE_AVX2 __m128i ToBf16x8(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  const __m256i quiet_nan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  const __m256i is_nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  const __m256i r = _mm256_blendv_epi8(rounded, quiet_nan, is_nan);
  // 8 x 32 -> 8 x 16 (all values < 2^16): pack within lanes, then put the two halves side by side.
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08));
}

// 8 elements of type E at p as floats / stored from floats (float32 and the 16-bit types).
template <Elem E>
C2ORT_INLINE_AVX2 __m256 Load8(const typename ElemTraits<E>::Storage* p) {
  if constexpr (E == Elem::kFloat) {
    return _mm256_loadu_ps(p);
  } else if constexpr (E == Elem::kHalf) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  } else {
    return LoadBf16x8(p);
  }
}

template <Elem E>
C2ORT_INLINE_AVX2 void Store8(typename ElemTraits<E>::Storage* p, __m256 v, bool streaming) {
  if constexpr (E == Elem::kFloat) {
    if (streaming) {
      _mm256_stream_ps(p, v);
    } else {
      _mm256_storeu_ps(p, v);
    }
  } else {
    const __m128i h = E == Elem::kHalf ? _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC) : ToBf16x8(v);
    if (streaming) {
      _mm_stream_si128(reinterpret_cast<__m128i*>(p), h);
    } else {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p), h);
    }
  }
}

template <Elem E>
C2ORT_TARGET_AVX2 void ApplyKeepBitsAvx2(const typename ElemTraits<E>::Storage* x, typename ElemTraits<E>::Storage* y,
                                       bool* mask, size_t n, const uint64_t* bits, float scale, bool streaming) {
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    const uint64_t b = bits[i / 64];
    if constexpr (E == Elem::kDouble) {
      const __m256d sd = _mm256_set1_pd(static_cast<double>(scale));
      for (int q = 0; q < 16; ++q) {
        const __m256d v = _mm256_mul_pd(_mm256_mul_pd(_mm256_loadu_pd(x + i + 4 * q), sd),
                                        KeepFactors4(static_cast<uint32_t>(b >> (4 * q)) & 0xF));
        if (streaming) {
          _mm256_stream_pd(y + i + 4 * q, v);
        } else {
          _mm256_storeu_pd(y + i + 4 * q, v);
        }
      }
    } else {
      const __m256 s = _mm256_set1_ps(scale);
      for (int q = 0; q < 8; ++q) {
        const __m256 v = _mm256_mul_ps(_mm256_mul_ps(Load8<E>(x + i + 8 * q), s),
                                       KeepFactors8(static_cast<uint32_t>(b >> (8 * q)) & 0xFF));
        Store8<E>(y + i + 8 * q, v, streaming);
      }
    }
    if (mask != nullptr) {
      // 64 bits -> 64 bytes of 0/1 through the table, two 32-byte stores.
      for (int h = 0; h < 2; ++h) {
        const uint32_t half = static_cast<uint32_t>(b >> (32 * h));
        const __m256i m = _mm256_setr_epi64x(static_cast<long long>(kSpread.v[half & 0xFF]),
                                             static_cast<long long>(kSpread.v[(half >> 8) & 0xFF]),
                                             static_cast<long long>(kSpread.v[(half >> 16) & 0xFF]),
                                             static_cast<long long>(kSpread.v[half >> 24]));
        if (streaming) {
          _mm256_stream_si256(reinterpret_cast<__m256i*>(mask + i + 32 * h), m);
        } else {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(mask + i + 32 * h), m);
        }
      }
    }
  }
  if (i < n) ApplyKeepBitsPortable<E>(x + i, y + i, mask ? mask + i : nullptr, n - i, bits + i / 64, scale);
}

// Keep bits of the 8 elements from i (a multiple of 8).
C2ORT_INLINE_AVX2 uint32_t Keep8(ByteMask m, size_t i) {
  const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(m.bytes + i));
  return static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(bytes, _mm_setzero_si128()))) ^ 0xFFu;
}
C2ORT_INLINE_AVX2 uint32_t Keep8(WordMask m, size_t i) { return (m.words[i / 32] >> (i % 32)) & 0xFFu; }

template <Elem E, typename Mask>
C2ORT_TARGET_AVX2 void ApplyMaskGradAvx2(const typename ElemTraits<E>::Storage* dy, Mask mask,
                                       typename ElemTraits<E>::Storage* dx, size_t n, float scale) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    // 8 mask elements -> 8 factors of 1 (kept) or 0.
    const uint32_t keep = Keep8(mask, i);
    if constexpr (E == Elem::kDouble) {
      const __m256d sd = _mm256_set1_pd(static_cast<double>(scale));
      for (int q = 0; q < 2; ++q) {
        const __m256d v = _mm256_mul_pd(_mm256_mul_pd(_mm256_loadu_pd(dy + i + 4 * q), KeepFactors4((keep >> (4 * q)) & 0xF)), sd);
        _mm256_storeu_pd(dx + i + 4 * q, v);
      }
    } else {
      const __m256 v = _mm256_mul_ps(_mm256_mul_ps(Load8<E>(dy + i), KeepFactors8(keep)), _mm256_set1_ps(scale));
      Store8<E>(dx + i, v, false);
    }
  }
  if (i < n) ApplyMaskGradPortable<E>(dy, mask, dx, i, n, scale);
}
#endif  // C2ORT_X86

}  // namespace

void StoreFence() {
#if C2ORT_X86
  _mm_sfence();
#endif
}

template <Elem E>
void ApplyKeepBits(CpuIsa isa, const typename ElemTraits<E>::Storage* x, typename ElemTraits<E>::Storage* y,
                   bool* mask, size_t n, const uint64_t* bits, float scale, bool streaming) {
#if C2ORT_X86
  if (isa >= CpuIsa::kAvx512) {  // both AVX-512 paths
    // Streaming stores need 64-byte aligned destinations.
    const bool aligned = (reinterpret_cast<uintptr_t>(y) % 64 == 0) &&
                         (mask == nullptr || reinterpret_cast<uintptr_t>(mask) % 64 == 0);
    return ApplyKeepBitsAvx512<E>(x, y, mask, n, bits, scale, streaming && aligned);
  }
  if (isa == CpuIsa::kAvx2) {
    const bool aligned = (reinterpret_cast<uintptr_t>(y) % 32 == 0) &&
                         (mask == nullptr || reinterpret_cast<uintptr_t>(mask) % 32 == 0);
    return ApplyKeepBitsAvx2<E>(x, y, mask, n, bits, scale, streaming && aligned);
  }
#endif
  (void)isa;
  (void)streaming;
  ApplyKeepBitsPortable<E>(x, y, mask, n, bits, scale);
}

namespace {
template <Elem E, typename Mask>
void ApplyMaskGradAny(CpuIsa isa, const typename ElemTraits<E>::Storage* dy, Mask mask,
                      typename ElemTraits<E>::Storage* dx, size_t n, float scale) {
#if C2ORT_X86
  if (isa >= CpuIsa::kAvx512) return ApplyMaskGradAvx512<E>(dy, mask, dx, n, scale);
  if (isa == CpuIsa::kAvx2) return ApplyMaskGradAvx2<E>(dy, mask, dx, n, scale);
#endif
  (void)isa;
  ApplyMaskGradPortable<E>(dy, mask, dx, 0, n, scale);
}
}  // namespace

template <Elem E>
void ApplyMaskGrad(CpuIsa isa, const typename ElemTraits<E>::Storage* dy, const bool* mask,
                   typename ElemTraits<E>::Storage* dx, size_t n, float scale) {
  ApplyMaskGradAny<E>(isa, dy, ByteMask{reinterpret_cast<const uint8_t*>(mask)}, dx, n, scale);
}

template <Elem E>
void ApplyMaskGrad(CpuIsa isa, const typename ElemTraits<E>::Storage* dy, const uint32_t* words,
                   typename ElemTraits<E>::Storage* dx, size_t n, float scale) {
  ApplyMaskGradAny<E>(isa, dy, WordMask{words}, dx, n, scale);
}

void StoreMaskWords(const uint64_t* bits, size_t n, uint32_t* words) {
  // Word 2 k + h is half h of keep-bit word k (little endian or not).
  const size_t full = n / 64;
  for (size_t k = 0; k < full; ++k) {
    words[2 * k] = static_cast<uint32_t>(bits[k]);
    words[2 * k + 1] = static_cast<uint32_t>(bits[k] >> 32);
  }
  const size_t rest = n % 64;
  if (rest == 0) return;
  const uint64_t last = bits[full] & ((uint64_t{1} << rest) - 1);
  words[2 * full] = static_cast<uint32_t>(last);
  if (rest > 32) words[2 * full + 1] = static_cast<uint32_t>(last >> 32);
}

void FillKeptMaskWords(size_t n, uint32_t* words) {
  const size_t full = n / 32;
  for (size_t w = 0; w < full; ++w) words[w] = ~uint32_t{0};
  if (n % 32 != 0) words[full] = (uint32_t{1} << (n % 32)) - 1;
}

#define C2ORT_INSTANTIATE(E)                                                                                  \
  template void ApplyKeepBits<E>(CpuIsa, const ElemTraits<E>::Storage*, ElemTraits<E>::Storage*, bool*, size_t, \
                                 const uint64_t*, float, bool);                                               \
  template void ApplyMaskGrad<E>(CpuIsa, const ElemTraits<E>::Storage*, const bool*, ElemTraits<E>::Storage*,   \
                                 size_t, float);                                                              \
  template void ApplyMaskGrad<E>(CpuIsa, const ElemTraits<E>::Storage*, const uint32_t*, ElemTraits<E>::Storage*, \
                                 size_t, float);
C2ORT_FOR_EACH_ELEM(C2ORT_INSTANTIATE)
#undef C2ORT_INSTANTIATE

}  // namespace caffe2_ort
