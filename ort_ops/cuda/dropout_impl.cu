// Default-engine CUDA kernels of ai.caffe2 Dropout / DropoutGrad and BitmaskDropout / BitmaskDropoutGrad.
//
// Work is split into "units": the elements one thread handles per grid-stride step, a whole number
// of Philox blocks (4 elements each) spanning 16 bytes of data where the element type allows
// (float32: 4 elements = 1 block; float16/bfloat16: 8 elements = 2 blocks; float64: 4 elements =
// 1 block in two 16-byte accesses). Data moves in 16-byte accesses and the mask in one 4- or 8-byte
// store per unit. Elements past the last whole unit (fewer than one unit) are done by one thread
// with scalar accesses, as is everything when a pointer is not aligned for the vector accesses.
//
// Packed masks (MaskKind::kBits): a unit's 4 or 8 keep bits are shifted into place and the 8 or 4
// consecutive lanes that cover one 32-element word OR them together with warp shuffles, and one lane
// stores the word: the mask costs n / 8 bytes of coalesced stores, against n bytes for bools, and
// the data accesses stay the 16-byte vector ones (a thread building its own word from 32 elements
// would load 128 contiguous bytes per thread, strided across the warp). So that every word is written
// by one thread, the vector loop covers the whole words (n / 32 of them) and the tail of fewer than 32
// elements is one thread's. The backward reads a unit's bits from its word (the lanes of a group
// read the same word: one broadcast load).
//
// Arithmetic: (x * scale) * m with explicitly rounded multiplies (__fmul_rn / __dmul_rn), so no
// contraction can change the result; 16-bit types convert with round-to-nearest-even intrinsics and
// no flushing of subnormals (the build does not use fast-math). Results equal the CPU kernels' bit
// for bit except for NaN payloads: the GPU's multiplier returns its canonical NaN.
#include "cuda/dropout_impl.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>

#include "common/mask_kind.h"

namespace caffe2_ort {
namespace cuda {
namespace {

constexpr int kThreads = 256;
// Blocks per multiprocessor the grid is capped at; the grid-stride loop covers the rest.
constexpr int kBlocksPerSm = 16;

// Device-side view of an element type: compute type, conversions and the unit shape.
template <Elem E>
struct Dev;

template <>
struct Dev<Elem::kFloat> {
  using S = float;
  using C = float;
  static constexpr int kUnit = 4;
  __device__ __forceinline__ static C Load(S v) { return v; }
  __device__ __forceinline__ static S Store(C v) { return v; }
  __device__ __forceinline__ static C Mul(C a, C b) { return __fmul_rn(a, b); }
};

template <>
struct Dev<Elem::kDouble> {
  using S = double;
  using C = double;
  static constexpr int kUnit = 4;
  __device__ __forceinline__ static C Load(S v) { return v; }
  __device__ __forceinline__ static S Store(C v) { return v; }
  __device__ __forceinline__ static C Mul(C a, C b) { return __dmul_rn(a, b); }
};

template <>
struct Dev<Elem::kHalf> {
  using S = uint16_t;
  using C = float;
  static constexpr int kUnit = 8;
  __device__ __forceinline__ static C Load(S v) { return __half2float(__ushort_as_half(v)); }
  __device__ __forceinline__ static S Store(C v) { return __half_as_ushort(__float2half_rn(v)); }
  __device__ __forceinline__ static C Mul(C a, C b) { return __fmul_rn(a, b); }
};

template <>
struct Dev<Elem::kBFloat16> {
  using S = uint16_t;
  using C = float;
  static constexpr int kUnit = 8;
  __device__ __forceinline__ static C Load(S v) { return __uint_as_float(static_cast<uint32_t>(v) << 16); }
  __device__ __forceinline__ static S Store(C v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }
  __device__ __forceinline__ static C Mul(C a, C b) { return __fmul_rn(a, b); }
};

// A unit of data as raw 16-byte words.
template <Elem E>
struct Unit {
  using S = typename Dev<E>::S;
  static constexpr int kN = Dev<E>::kUnit;
  static constexpr int kWords = kN * sizeof(S) / 16;
  S v[kN];

  __device__ __forceinline__ void LoadFrom(const S* p) {
    const uint4* src = reinterpret_cast<const uint4*>(p);
    uint4 w[kWords];
#pragma unroll
    for (int k = 0; k < kWords; ++k) w[k] = src[k];
    static_assert(sizeof(w) == sizeof(v), "unit size");
    memcpy(v, w, sizeof(v));  // register reinterpretation, no memory traffic
  }
  __device__ __forceinline__ void StoreTo(S* p) const {
    uint4 w[kWords];
    memcpy(w, v, sizeof(v));
    uint4* dst = reinterpret_cast<uint4*>(p);
#pragma unroll
    for (int k = 0; k < kWords; ++k) dst[k] = w[k];
  }
};

// The mask bytes of one unit (4 or 8) as one store or load.
template <int kN>
struct MaskWord;
template <>
struct MaskWord<4> {
  __device__ __forceinline__ static void Store(bool* p, const bool (&keep)[4]) {
    uint32_t w = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) w |= static_cast<uint32_t>(keep[j]) << (8 * j);
    *reinterpret_cast<uint32_t*>(p) = w;
  }
  __device__ __forceinline__ static void Load(const bool* p, bool (&keep)[4]) {
    const uint32_t w = *reinterpret_cast<const uint32_t*>(p);
#pragma unroll
    for (int j = 0; j < 4; ++j) keep[j] = ((w >> (8 * j)) & 0xFFu) != 0;
  }
};
template <>
struct MaskWord<8> {
  __device__ __forceinline__ static void Store(bool* p, const bool (&keep)[8]) {
    uint2 w{0u, 0u};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      w.x |= static_cast<uint32_t>(keep[j]) << (8 * j);
      w.y |= static_cast<uint32_t>(keep[j + 4]) << (8 * j);
    }
    *reinterpret_cast<uint2*>(p) = w;
  }
  __device__ __forceinline__ static void Load(const bool* p, bool (&keep)[8]) {
    const uint2 w = *reinterpret_cast<const uint2*>(p);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      keep[j] = ((w.x >> (8 * j)) & 0xFFu) != 0;
      keep[j + 4] = ((w.y >> (8 * j)) & 0xFFu) != 0;
    }
  }
};

// Where the forward's keep decision of element i goes: a bool per element, or bit i % 32 of word i / 32.
template <MaskKind K>
using MaskPtr = typename MaskTraits<K>::Word*;

// Keep decision of element i of a backward's mask (any nonzero bool byte is kept).
__device__ __forceinline__ bool KeptAt(const bool* mask, uint64_t i) {
  return reinterpret_cast<const uint8_t*>(mask)[i] != 0;
}
__device__ __forceinline__ bool KeptAt(const uint32_t* words, uint64_t i) { return (words[i / 32] >> (i % 32)) & 1u; }

// Forward arithmetic of one element: (x * scale) * m, rounded once to the storage type.
template <Elem E>
__device__ __forceinline__ typename Dev<E>::S ForwardValue(typename Dev<E>::S x, typename Dev<E>::C scale, bool keep) {
  using D = Dev<E>;
  return D::Store(D::Mul(D::Mul(D::Load(x), scale), static_cast<typename D::C>(keep)));
}

__device__ __forceinline__ bool Keep(uint32_t word, uint64_t threshold) {
  return static_cast<uint64_t>(word) >= threshold;
}

// Word j of a block without a run-time array index (which would move the block to local memory).
__device__ __forceinline__ uint32_t Word(const PhiloxBlock& r, uint64_t j) {
  const uint32_t lo = (j & 1) ? r.w[1] : r.w[0];
  const uint32_t hi = (j & 1) ? r.w[3] : r.w[2];
  return (j & 2) ? hi : lo;
}

// Scalar forward over elements [begin, end), which start on a Philox block boundary or not.
// The run's first Philox block: from the stream's slot when the counter lives on the device (written
// by ReserveBlocks, which ran before this kernel on the same stream), else the host's value.
__device__ __forceinline__ uint64_t RunBase(const ForwardParams& p) { return p.slot != nullptr ? *p.slot : p.base; }

// A packed mask requires begin % 32 == 0: the words of [begin, end) are written whole, by this thread.
template <Elem E, MaskKind K>
__device__ __forceinline__ void ForwardScalar(const typename Dev<E>::S* x, typename Dev<E>::S* y, MaskPtr<K> mask,
                                              uint64_t begin, uint64_t end, const ForwardParams& p, uint64_t base,
                                              bool draws, bool keep_all) {
  using D = Dev<E>;
  const typename D::C s = static_cast<typename D::C>(p.scale);
  PhiloxBlock r{{0u, 0u, 0u, 0u}};
  uint64_t have = ~uint64_t{0};
  uint32_t word = 0;
  for (uint64_t i = begin; i < end; ++i) {
    bool keep = keep_all;
    if (draws) {
      const uint64_t b = base + i / 4;
      if (b != have) {
        r = DropoutBlock(b, p.key);
        have = b;
      }
      keep = Keep(Word(r, i % 4), p.threshold);
    }
    y[i] = ForwardValue<E>(x[i], s, keep);
    if (mask == nullptr) continue;
    if constexpr (K == MaskKind::kBool) {
      mask[i] = keep;
    } else {
      word |= static_cast<uint32_t>(keep) << (i % 32);
      if (i % 32 == 31 || i + 1 == end) {
        mask[i / 32] = word;
        word = 0;
      }
    }
  }
}

template <Elem E, MaskKind K, bool kWithMask>
__global__ void __launch_bounds__(kThreads)
    DropoutForwardVec(const typename Dev<E>::S* x, typename Dev<E>::S* y, MaskPtr<K> mask, ForwardParams p, bool draws,
                      bool keep_all) {
  using D = Dev<E>;
  constexpr int kN = D::kUnit;
  constexpr int kBlocks = kN / 4;
  constexpr bool kPacked = kWithMask && K == MaskKind::kBits;
  constexpr int kGroup = 32 / kN;  // lanes per packed mask word
  static_assert(32 % kN == 0, "a unit's keep bits must lie in one mask word");
  const typename D::C s = static_cast<typename D::C>(p.scale);
  // Packed: whole mask words only (a multiple of kGroup units); the tail below writes the last word.
  const uint64_t units = kPacked ? p.n / 32 * kGroup : p.n / kN;
  const uint64_t base = draws ? RunBase(p) : 0;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;  // a multiple of 32
  const uint64_t first = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const unsigned lane = threadIdx.x % 32;
  // The warp steps together (its first lane's unit decides), so the shuffles see every lane; lanes
  // past the end take part with no work. A kGroup-lane group is wholly in range or wholly out.
  for (uint64_t warp_first = first - lane; warp_first < units; warp_first += stride) {
    const uint64_t u = warp_first + lane;
    const bool active = u < units;
    bool keep[kN];
    if (active) {
      Unit<E> in;
      in.LoadFrom(x + u * kN);
      if (draws) {
#pragma unroll
        for (int b = 0; b < kBlocks; ++b) {
          const PhiloxBlock r = DropoutBlock(base + u * kBlocks + b, p.key);
#pragma unroll
          for (int j = 0; j < 4; ++j) keep[4 * b + j] = Keep(r.w[j], p.threshold);
        }
      } else {
#pragma unroll
        for (int j = 0; j < kN; ++j) keep[j] = keep_all;
      }
      Unit<E> out;
#pragma unroll
      for (int j = 0; j < kN; ++j) {
        out.v[j] = ForwardValue<E>(in.v[j], s, keep[j]);
      }
      out.StoreTo(y + u * kN);
      if constexpr (kWithMask && K == MaskKind::kBool) MaskWord<kN>::Store(mask + u * kN, keep);
    }
    if constexpr (kPacked) {
      uint32_t word = 0;
      if (active) {
#pragma unroll
        for (int j = 0; j < kN; ++j) word |= static_cast<uint32_t>(keep[j]) << j;
        word <<= (lane % kGroup) * kN;
      }
#pragma unroll
      for (int offset = kGroup / 2; offset > 0; offset /= 2) word |= __shfl_xor_sync(0xFFFFFFFFu, word, offset);
      if (active && lane % kGroup == 0) mask[u * kN / 32] = word;
    }
  }
  if (first == 0 && units * kN < p.n) {
    ForwardScalar<E, K>(x, y, kWithMask ? mask : nullptr, units * kN, p.n, p, base, draws, keep_all);
  }
}

// Keep bit of element i from host-drawn keep-bit words (bit i % 64 of word i / 64).
__device__ __forceinline__ bool KeepBit(const uint64_t* bits, uint64_t i) { return (bits[i / 64] >> (i % 64)) & 1u; }

// Forward from keep bits, one unit per thread and step: a unit's kN (4 or 8) bits lie in one word.
template <Elem E, bool kWithMask>
__global__ void __launch_bounds__(kThreads)
    ApplyKeepBitsVec(const typename Dev<E>::S* x, typename Dev<E>::S* y, bool* mask, const uint64_t* bits, uint64_t n,
                     float scale) {
  using D = Dev<E>;
  constexpr int kN = D::kUnit;
  static_assert(64 % kN == 0, "a unit's keep bits must lie in one word");
  const typename D::C s = static_cast<typename D::C>(scale);
  const uint64_t units = n / kN;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  const uint64_t first = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (uint64_t u = first; u < units; u += stride) {
    Unit<E> in;
    in.LoadFrom(x + u * kN);
    const uint64_t e = u * kN;
    const uint32_t field = static_cast<uint32_t>(bits[e / 64] >> (e % 64));
    bool keep[kN];
#pragma unroll
    for (int j = 0; j < kN; ++j) keep[j] = (field >> j) & 1u;
    Unit<E> out;
#pragma unroll
    for (int j = 0; j < kN; ++j) out.v[j] = ForwardValue<E>(in.v[j], s, keep[j]);
    out.StoreTo(y + e);
    if (kWithMask) MaskWord<kN>::Store(mask + e, keep);
  }
  if (first == 0) {
    for (uint64_t i = units * kN; i < n; ++i) {
      const bool keep = KeepBit(bits, i);
      y[i] = ForwardValue<E>(x[i], s, keep);
      if (kWithMask) mask[i] = keep;
    }
  }
}

// Unaligned pointers: one element per thread and step.
template <Elem E>
__global__ void __launch_bounds__(kThreads)
    ApplyKeepBitsScalar(const typename Dev<E>::S* x, typename Dev<E>::S* y, bool* mask, const uint64_t* bits,
                        uint64_t n, float scale) {
  const typename Dev<E>::C s = static_cast<typename Dev<E>::C>(scale);
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const bool keep = KeepBit(bits, i);
    y[i] = ForwardValue<E>(x[i], s, keep);
    if (mask != nullptr) mask[i] = keep;
  }
}

// Unaligned pointers: one Philox block (4 elements) per thread and step, scalar accesses; with a
// packed mask, one mask word (32 elements, 8 blocks).
template <Elem E, MaskKind K>
__global__ void __launch_bounds__(kThreads)
    DropoutForwardScalar(const typename Dev<E>::S* x, typename Dev<E>::S* y, MaskPtr<K> mask, ForwardParams p,
                         bool draws, bool keep_all) {
  const uint64_t step = K == MaskKind::kBits && mask != nullptr ? 32 : 4;
  const uint64_t items = (p.n + step - 1) / step;
  const uint64_t base = draws ? RunBase(p) : 0;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t b = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; b < items; b += stride) {
    ForwardScalar<E, K>(x, y, mask, step * b, min(step * b + step, p.n), p, base, draws, keep_all);
  }
}

// One thread: takes this run's blocks from the node's device counter and leaves the base in the
// stream's slot for the dropout kernel that follows on the same stream.
__global__ void ReserveBlocks(unsigned long long* counter, unsigned long long blocks, unsigned long long* slot) {
  *slot = atomicAdd(counter, blocks);
}

template <Elem E, MaskKind K>
__global__ void __launch_bounds__(kThreads)
    DropoutBackwardVec(const typename Dev<E>::S* dy, const typename MaskTraits<K>::Word* mask, bool keep_all,
                       typename Dev<E>::S* dx, uint64_t n, float scale) {
  using D = Dev<E>;
  constexpr int kN = D::kUnit;
  const typename D::C s = static_cast<typename D::C>(scale);
  const uint64_t units = n / kN;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  const uint64_t first = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (uint64_t u = first; u < units; u += stride) {
    Unit<E> in;
    in.LoadFrom(dy + u * kN);
    bool keep[kN];
    if (mask == nullptr) {
#pragma unroll
      for (int j = 0; j < kN; ++j) keep[j] = keep_all;
    } else if constexpr (K == MaskKind::kBool) {
      MaskWord<kN>::Load(mask + u * kN, keep);
    } else {
      const uint64_t e = u * kN;
      const uint32_t field = mask[e / 32] >> (e % 32);
#pragma unroll
      for (int j = 0; j < kN; ++j) keep[j] = (field >> j) & 1u;
    }
    Unit<E> out;
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      out.v[j] = D::Store(D::Mul(D::Mul(D::Load(in.v[j]), static_cast<typename D::C>(keep[j])), s));
    }
    out.StoreTo(dx + u * kN);
  }
  if (first == 0) {
    for (uint64_t i = units * kN; i < n; ++i) {
      const bool keep = mask != nullptr ? KeptAt(mask, i) : keep_all;
      dx[i] = D::Store(D::Mul(D::Mul(D::Load(dy[i]), static_cast<typename D::C>(keep)), s));
    }
  }
}

template <Elem E, MaskKind K>
__global__ void __launch_bounds__(kThreads)
    DropoutBackwardScalar(const typename Dev<E>::S* dy, const typename MaskTraits<K>::Word* mask, bool keep_all,
                          typename Dev<E>::S* dx, uint64_t n, float scale) {
  using D = Dev<E>;
  const typename D::C s = static_cast<typename D::C>(scale);
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const bool keep = mask != nullptr ? KeptAt(mask, i) : keep_all;
    dx[i] = D::Store(D::Mul(D::Mul(D::Load(dy[i]), static_cast<typename D::C>(keep)), s));
  }
}

bool Aligned(const void* p, uintptr_t bytes) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Multiprocessor count of the current device, cached per device (queried once; no synchronisation).
cudaError_t MultiprocessorCount(int* count) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices] = {};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if (device >= 0 && device < kMaxDevices) {
    const int cached = cache[device].load(std::memory_order_relaxed);
    if (cached > 0) {
      *count = cached;
      return cudaSuccess;
    }
  }
  err = cudaDeviceGetAttribute(count, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  if (device >= 0 && device < kMaxDevices) cache[device].store(*count, std::memory_order_relaxed);
  return cudaSuccess;
}

cudaError_t GridFor(uint64_t work_items, unsigned* grid) {
  int sms = 0;
  const cudaError_t err = MultiprocessorCount(&sms);
  if (err != cudaSuccess) return err;
  const uint64_t wanted = (work_items + kThreads - 1) / kThreads;
  const uint64_t cap = static_cast<uint64_t>(std::max(sms, 1)) * kBlocksPerSm;
  *grid = static_cast<unsigned>(std::max<uint64_t>(1, std::min(wanted, cap)));
  return cudaSuccess;
}

}  // namespace

template <Elem E, MaskKind K>
cudaError_t LaunchDropoutForward(const typename ElemTraits<E>::Storage* x, typename ElemTraits<E>::Storage* y,
                                 typename MaskTraits<K>::Word* mask, const ForwardParams& params,
                                 cudaStream_t stream) {
  if (params.n == 0) return cudaSuccess;
  constexpr int kN = Dev<E>::kUnit;
  const uint64_t kLimit = uint64_t{1} << 32;
  const bool draws = params.threshold != 0 && params.threshold < kLimit;
  const bool keep_all = params.threshold == 0;
  const bool packed = K == MaskKind::kBits && mask != nullptr;
  unsigned grid = 0;
  const bool vector = Aligned(x, 16) && Aligned(y, 16) && Aligned(mask, K == MaskKind::kBool ? kN : 4);
  const uint64_t scalar_items = packed ? MaskWordsFor(params.n) : DropoutBlocksFor(params.n);
  cudaError_t err = GridFor(vector ? std::max<uint64_t>(params.n / kN, 1) : scalar_items, &grid);
  if (err != cudaSuccess) return err;
  if (params.counter != nullptr) {
    static_assert(sizeof(unsigned long long) == sizeof(uint64_t), "64-bit atomics");
    ReserveBlocks<<<1, 1, 0, stream>>>(reinterpret_cast<unsigned long long*>(params.counter),
                                       static_cast<unsigned long long>(DropoutBlocksFor(params.n)),
                                       reinterpret_cast<unsigned long long*>(params.slot));
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  if (!vector) {
    DropoutForwardScalar<E, K><<<grid, kThreads, 0, stream>>>(x, y, mask, params, draws, keep_all);
  } else if (mask != nullptr) {
    DropoutForwardVec<E, K, true><<<grid, kThreads, 0, stream>>>(x, y, mask, params, draws, keep_all);
  } else {
    DropoutForwardVec<E, MaskKind::kBool, false><<<grid, kThreads, 0, stream>>>(x, y, nullptr, params, draws,
                                                                               keep_all);
  }
  return cudaGetLastError();
}

template <Elem E>
cudaError_t LaunchApplyKeepBits(const typename ElemTraits<E>::Storage* x, typename ElemTraits<E>::Storage* y,
                                bool* mask, const uint64_t* bits, uint64_t n, float scale, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  constexpr int kN = Dev<E>::kUnit;
  unsigned grid = 0;
  const bool vector = Aligned(x, 16) && Aligned(y, 16) && Aligned(mask, kN);
  cudaError_t err = GridFor(vector ? std::max<uint64_t>(n / kN, 1) : n, &grid);
  if (err != cudaSuccess) return err;
  if (!vector) {
    ApplyKeepBitsScalar<E><<<grid, kThreads, 0, stream>>>(x, y, mask, bits, n, scale);
  } else if (mask != nullptr) {
    ApplyKeepBitsVec<E, true><<<grid, kThreads, 0, stream>>>(x, y, mask, bits, n, scale);
  } else {
    ApplyKeepBitsVec<E, false><<<grid, kThreads, 0, stream>>>(x, y, nullptr, bits, n, scale);
  }
  return cudaGetLastError();
}

template <Elem E, MaskKind K>
cudaError_t LaunchDropoutBackward(const typename ElemTraits<E>::Storage* dy, const typename MaskTraits<K>::Word* mask,
                                  bool keep_all, typename ElemTraits<E>::Storage* dx, uint64_t n, float scale,
                                  cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  constexpr int kN = Dev<E>::kUnit;
  unsigned grid = 0;
  const bool vector = Aligned(dy, 16) && Aligned(dx, 16) && Aligned(mask, K == MaskKind::kBool ? kN : 4);
  cudaError_t err = GridFor(vector ? std::max<uint64_t>(n / kN, 1) : n, &grid);
  if (err != cudaSuccess) return err;
  if (vector) {
    DropoutBackwardVec<E, K><<<grid, kThreads, 0, stream>>>(dy, mask, keep_all, dx, n, scale);
  } else {
    DropoutBackwardScalar<E, K><<<grid, kThreads, 0, stream>>>(dy, mask, keep_all, dx, n, scale);
  }
  return cudaGetLastError();
}

cudaError_t LaunchFillKeptMaskWords(uint32_t* words, uint64_t n, cudaStream_t stream) {
  // Little endian: the n valid bits are the first n / 8 bytes and the low n % 8 bits of the next one.
  const uint64_t bytes = MaskWordsFor(n) * sizeof(uint32_t);
  unsigned char* p = reinterpret_cast<unsigned char*>(words);
  const uint64_t full = n / 8;
  cudaError_t err = full > 0 ? cudaMemsetAsync(p, 0xFF, full, stream) : cudaSuccess;
  if (err == cudaSuccess && full < bytes) {
    err = cudaMemsetAsync(p + full, static_cast<int>((1u << (n % 8)) - 1), 1, stream);
  }
  if (err == cudaSuccess && full + 1 < bytes) err = cudaMemsetAsync(p + full + 1, 0, bytes - full - 1, stream);
  return err;
}

#define C2ORT_INSTANTIATE_KIND(E, K)                                                                          \
  template cudaError_t LaunchDropoutForward<E, K>(const ElemTraits<E>::Storage*, ElemTraits<E>::Storage*,       \
                                                  MaskTraits<K>::Word*, const ForwardParams&, cudaStream_t);    \
  template cudaError_t LaunchDropoutBackward<E, K>(const ElemTraits<E>::Storage*, const MaskTraits<K>::Word*,   \
                                                   bool, ElemTraits<E>::Storage*, uint64_t, float, cudaStream_t);
#define C2ORT_INSTANTIATE(E)                                                                                   \
  C2ORT_INSTANTIATE_KIND(E, MaskKind::kBool)                                                                   \
  C2ORT_INSTANTIATE_KIND(E, MaskKind::kBits)                                                                   \
  template cudaError_t LaunchApplyKeepBits<E>(const ElemTraits<E>::Storage*, ElemTraits<E>::Storage*, bool*, \
                                              const uint64_t*, uint64_t, float, cudaStream_t);

C2ORT_FOR_EACH_ELEM(C2ORT_INSTANTIATE)
#undef C2ORT_INSTANTIATE
#undef C2ORT_INSTANTIATE_KIND

}  // namespace cuda
}  // namespace caffe2_ort
