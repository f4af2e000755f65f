#include "cpu/dropout.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/elementwise.h"
#include "cpu/parallel.h"

namespace caffe2_ort {
namespace {

// Outputs far beyond the caches go out with non-temporal stores (no read-for-ownership traffic).
constexpr size_t kStreamingBytes = size_t{32} << 20;
// Keep bits are produced and consumed in small slices: RNG arithmetic and memory traffic then sit
// close together in the instruction stream and overlap in the out-of-order window (4096-element
// slices measured 25-35% slower on one thread at N = 2^24).
constexpr size_t kSliceElements = 256;

// The elementwise step of one slice of elements [s, s + len) (s a multiple of 64) given its keep
// bits: Y, and the mask in the kernel's representation. A bool mask is written by ApplyKeepBits
// itself; a packed mask is the keep bits themselves, stored once Y is done.
template <Elem E>
void ApplySlice(CpuIsa isa, const typename ElemTraits<E>::Storage* x, typename ElemTraits<E>::Storage* y, bool* mask,
                size_t s, size_t len, const uint64_t* bits, float scale, bool streaming) {
  ApplyKeepBits<E>(isa, x + s, y + s, mask ? mask + s : nullptr, len, bits, scale, streaming);
}
template <Elem E>
void ApplySlice(CpuIsa isa, const typename ElemTraits<E>::Storage* x, typename ElemTraits<E>::Storage* y,
                uint32_t* words, size_t s, size_t len, const uint64_t* bits, float scale, bool streaming) {
  ApplyKeepBits<E>(isa, x + s, y + s, nullptr, len, bits, scale, streaming);
  if (words != nullptr) StoreMaskWords(bits, len, words + s / kMaskWordBits);
}

// Test mode: elements [begin, end) of the mask kept (begin a multiple of 32).
void FillKept(bool* mask, size_t begin, size_t end) { std::memset(mask + begin, 1, end - begin); }
void FillKept(uint32_t* words, size_t begin, size_t end) {
  FillKeptMaskWords(end - begin, words + begin / kMaskWordBits);
}

// The mask output: X's shape for bools, ceil(n / 32) words for a packed mask.
template <typename MaskWord>
MaskWord* MaskOutput(Ort::KernelContext& ctx, const std::vector<int64_t>& shape, size_t n) {
  if constexpr (std::is_same_v<MaskWord, bool>) {
    return ctx.GetOutput(1, shape).GetTensorMutableData<bool>();
  } else {
    const int64_t words[1] = {static_cast<int64_t>(MaskWordsFor(n))};
    return ctx.GetOutput(1, words, 1).GetTensorMutableData<MaskWord>();
  }
}

}  // namespace

template <Elem E, MaskKind K>
CpuDropout<E, K>::CpuDropout(const OrtKernelInfo* info)
    : config_(ReadDropoutConfig(info, MaskTraits<K>::kForwardOp, /*with_seed=*/true,
                                /*with_engine=*/K == MaskKind::kBool)),
      has_mask_(HasOutput(info, 1)),
      isa_(SelectCpuIsa()) {
  // engine CUDNN on the CPU EP runs this kernel, so rng applies as for the default engine.
  if (config_.rng == Rng::kCaffe2Mt19937) {
    mt_ = std::make_unique<Mt19937Stream>(config_.Mt19937Seed(), isa_);
    mt_keep_below_ = Mt19937KeepBelow(config_.ratio);
  }
}

template <Elem E, MaskKind K>
void CpuDropout<E, K>::Compute(OrtKernelContext* context) {
  using Storage = typename ElemTraits<E>::Storage;
  Ort::KernelContext ctx(context);
  auto input = ctx.GetInput(0);
  const std::vector<int64_t> shape = input.GetTensorTypeAndShapeInfo().GetShape();
  const size_t n = input.GetTensorTypeAndShapeInfo().GetElementCount();
  auto output = ctx.GetOutput(0, shape);
  MaskWord* mask = has_mask_ ? MaskOutput<MaskWord>(ctx, shape, n) : nullptr;
  if (n == 0) return;
  const Storage* x = static_cast<const Storage*>(input.GetTensorRawData());
  Storage* y = static_cast<Storage*>(output.GetTensorMutableRawData());

  if (config_.is_test) {
    // Exact copy, NaN payloads included; a requested mask is all true.
    ParallelOverElements(context, n, [&](size_t begin, size_t end) {
      if (x != y) std::memcpy(y + begin, x + begin, (end - begin) * sizeof(Storage));
      if (mask != nullptr) FillKept(mask, begin, end);
    });
    return;
  }

  if (mt_ != nullptr) return ComputeMt19937(context, n, x, y, mask);

  const uint64_t base = config_.ConsumesCounter() ? counter_.Reserve(DropoutBlocksFor(n)) : 0;
  const bool streaming = n * sizeof(Storage) >= kStreamingBytes;
  const PhiloxKey key = config_.Key();
  const float scale = config_.scale;
  const bool draws = config_.ConsumesCounter() && config_.threshold != 0 && !config_.DropsAll();
  const uint64_t constant_bits = config_.threshold == 0 ? ~uint64_t{0} : 0;  // ratio 0 keeps, ratio 1 drops
  const uint32_t threshold = static_cast<uint32_t>(config_.threshold);
  const CpuIsa isa = isa_;

  ParallelOverElements(context, n, [&](size_t begin, size_t end) {
    uint64_t bits[kSliceElements / kBitsPerWord];
    if (!draws) std::fill(std::begin(bits), std::end(bits), constant_bits);
    for (size_t s = begin; s < end; s += kSliceElements) {
      const size_t len = std::min(kSliceElements, end - s);
      if (draws) KeepBits(isa, key, base + s / 4, (len + kBitsPerWord - 1) / kBitsPerWord, threshold, bits);
      ApplySlice<E>(isa, x, y, mask, s, len, bits, scale, streaming);
    }
    if (streaming) StoreFence();
  });
}

template <Elem E, MaskKind K>
void CpuDropout<E, K>::ComputeMt19937(OrtKernelContext* context, size_t n, const typename ElemTraits<E>::Storage* x,
                                      typename ElemTraits<E>::Storage* y, MaskWord* mask) {
  // The run holds the node's stream until it returns, so concurrent runs take consecutive segments.
  // Caffe2 draws two words per element on every training run, ratio 0 and 1 included.
  Mt19937Segment segment(*mt_, n, kCpuTaskElements, mt_keep_below_);
  const bool constant = config_.ratio == 0.0f || config_.DropsAll();
  if (constant) segment.Skip();
  const uint64_t constant_bits = config_.ratio == 0.0f ? ~uint64_t{0} : 0;
  const bool streaming = n * sizeof(typename ElemTraits<E>::Storage) >= kStreamingBytes;
  const float scale = config_.scale;
  const CpuIsa isa = isa_;
  ParallelOverElements(context, n, [&](size_t task_begin, size_t task_end) {
    uint64_t bits[kCpuTaskElements / kBitsPerWord];
    size_t begin = task_begin, end = task_end;
    if (constant) {
      std::fill(std::begin(bits), std::end(bits), constant_bits);
    } else {
      // Each task draws the next chunk in stream order (serialised) and applies that chunk while
      // another task draws the following one; which chunk a task gets does not change the result.
      begin = segment.DrawNext(bits) * kCpuTaskElements;
      end = std::min(n, begin + kCpuTaskElements);
    }
    for (size_t s = begin; s < end; s += kSliceElements) {
      const size_t len = std::min(kSliceElements, end - s);
      ApplySlice<E>(isa, x, y, mask, s, len, bits + (s - begin) / kBitsPerWord, scale, streaming);
    }
    if (streaming) StoreFence();
  });
}

OrtStatusPtr InferDropoutShape(OrtShapeInferContext* ctx) {
  // Only Y's shape is set here: ORT's shape-inference context cannot tell whether the optional mask
  // output exists, and writing an absent output is out of bounds. The mask's type comes from ORT's
  // own custom-op type inference.
  return StatusFrom([&] {
    OrtTensorTypeAndShapeInfo* x_info = nullptr;  // owned by ctx
    Ort::ThrowOnError(Api().ShapeInferContext_GetInputTypeShape(ctx, 0, &x_info));
    // An X of unknown rank also reports 0 dimensions; passing that on would declare Y a scalar.
    size_t rank = 0;
    Ort::ThrowOnError(Api().GetDimensionsCount(x_info, &rank));
    if (rank > 0) Ort::ThrowOnError(Api().ShapeInferContext_SetOutputTypeShape(ctx, 0, x_info));
  });
}

C2ORT_INSTANTIATE_DROPOUT_KERNEL(CpuDropout)

}  // namespace caffe2_ort
