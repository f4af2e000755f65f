// rng = "caffe2_mt19937" on the CUDA execution provider: Caffe2's CPU MT19937 stream is drawn on the
// host, exactly as the CPU kernel draws it (cpu/mt19937_keep_bits.h), into pinned staging memory,
// copied to the device with cudaMemcpyAsync on ORT's compute stream, and applied there by
// LaunchApplyKeepBits (dropout_impl.cuh). So the GPU's masks are the CPU's, bit for bit, for the same
// seed and run. Header-only; used by cuda/dropout.cc.
//
// One training run holds the node's stream from the draw to the last enqueue (Mt19937Segment's run
// lock), so concurrent runs take consecutive, never overlapping segments, and everything below is
// used by one run at a time.
//
// No synchronisation in Compute: nothing waits on the host for the device.
// - Pinned staging: a pool of buffers (cudaHostAlloc, portable), each with an event recorded on the
//   stream right after the copy that reads it. A run takes the smallest buffer whose event has
//   completed (cudaEventQuery, which never blocks) and is large enough; when none is, a new buffer is
//   allocated (size rounded up to a power of two, at least kMinStagingBytes). Buffers are never freed
//   before the kernel is destroyed. When X's shape is static, one buffer of its size is allocated at
//   kernel creation; otherwise the first run (and a run with a larger tensor, or with every buffer
//   still in flight) allocates one. ORT synchronises its streams at the end of each Run, so in steady
//   state each concurrent Run reuses one buffer and nothing is allocated.
// - Device copy of the keep bits: ORT's stream-ordered scratch buffer (API >= 18); with API 17 a
//   per-node buffer grown when a larger tensor comes, its uses on several streams ordered by an event
//   (StreamOrder, a device-side wait).
// - CUDA graphs: a replay cannot advance a host-drawn stream, so a training run of such a node under
//   stream capture fails with a message naming the node and the rng (test mode, which draws nothing,
//   may be captured).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <utility>

#include "common/dropout_config.h"
#include "common/errors.h"
#include "cpu/keep_bits.h"
#include "cpu/mt19937_keep_bits.h"
#include "cuda/cuda_check.h"
#include "cuda/kernel_memory.h"

namespace caffe2_ort {
namespace cuda {

// Keep-bit words of an n-element run (bit j of word w: element 64 w + j).
inline uint64_t KeepBitWords(uint64_t n) { return (n + kBitsPerWord - 1) / kBitsPerWord; }

// Pinned host buffers, each reusable once the copy recorded on its event has run.
class PinnedStaging {
 public:
  static constexpr size_t kMinStagingBytes = size_t{64} << 10;

  explicit PinnedStaging(std::string where) : where_(std::move(where)) {}
  ~PinnedStaging() {
    // Destroyed with the kernel, after its session's runs; a pending copy still finishes first.
    for (Buffer& b : buffers_) {
      if (b.copied != nullptr) {
        (void)cudaEventSynchronize(b.copied);
        (void)cudaEventDestroy(b.copied);
      }
      if (b.host != nullptr) (void)cudaFreeHost(b.host);
    }
  }
  PinnedStaging(const PinnedStaging&) = delete;
  PinnedStaging& operator=(const PinnedStaging&) = delete;

  struct Buffer {
    void* host = nullptr;
    size_t bytes = 0;
    cudaEvent_t copied = nullptr;  // recorded after the last copy out of `host`
  };

  // A buffer of at least `bytes` that no enqueued copy still reads; never waits for the device.
  // Allocates when none is free, on the device of `on_device` (a device pointer of the call; null:
  // the current device), whose streams record the buffer's event; the memory itself is portable.
  Buffer& Take(size_t bytes, const void* on_device) {
    Buffer* best = nullptr;
    for (Buffer& b : buffers_) {
      if (b.bytes < bytes || (best != nullptr && best->bytes <= b.bytes)) continue;
      const cudaError_t state = cudaEventQuery(b.copied);
      if (state == cudaErrorNotReady) continue;
      CheckCuda(state, where_, "cudaEventQuery (staging buffer)");
      best = &b;
    }
    if (best != nullptr) return *best;
    if (on_device == nullptr) return Allocate(bytes);
    ScopedDevice scoped(DeviceOf(on_device, where_), where_);
    return Allocate(bytes);
  }

  // Records, on `stream`, that the copy just enqueued out of `b` is the last use of it so far.
  void Enqueued(Buffer& b, cudaStream_t stream) {
    CheckCuda(cudaEventRecord(b.copied, stream), where_, "cudaEventRecord (staging buffer)");
  }

 private:
  Buffer& Allocate(size_t bytes) {
    size_t rounded = kMinStagingBytes;
    while (rounded < bytes) rounded *= 2;
    Buffer b;
    CheckCuda(cudaEventCreateWithFlags(&b.copied, cudaEventDisableTiming), where_,
              "cudaEventCreateWithFlags (staging buffer)");
    const cudaError_t err = cudaHostAlloc(&b.host, rounded, cudaHostAllocPortable);
    if (err != cudaSuccess) {
      (void)cudaEventDestroy(b.copied);
      CheckCuda(err, where_, "cudaHostAlloc (pinned staging buffer for rng = 'caffe2_mt19937')");
    }
    b.bytes = rounded;
    buffers_.push_back(b);
    return buffers_.back();
  }

  std::string where_;
  std::deque<Buffer> buffers_;  // a deque: references stay valid as it grows
};

class HostStagedMt19937 {
 public:
  HostStagedMt19937(const OrtKernelInfo* info, const DropoutConfig& config)
      : where_(config.Where()), rng_text_(config.rng_text), memory_(info, where_), staging_(where_),
        stream_(config.Mt19937Seed(), SelectCpuIsa()), keep_below_(Mt19937KeepBelow(config.ratio)),
        constant_(config.ratio == 0.0f || config.DropsAll()) {
    // A static X: its staging buffer now, so that no run allocates pinned memory.
    const int64_t n = StaticElementCount(info);
    if (!constant_ && n > 0 && memory_.HasAllocator()) {
      ScopedDevice scoped(memory_.Device(), where_);
      staging_.Take(KeepBitWords(static_cast<uint64_t>(n)) * sizeof(uint64_t), nullptr);
    }
  }

  // Refuses a training run under CUDA-graph capture (before anything is drawn).
  void RefuseCapture(cudaStream_t stream) const {
    if (IsCapturing(stream, where_)) {
      Fail(ORT_NOT_IMPLEMENTED, where_, ": rng = '", rng_text_,
           "' draws Caffe2's MT19937 stream on the host, which a CUDA-graph replay cannot advance; a training "
           "run of this node cannot be captured into a CUDA graph (disable enable_cuda_graph, or use rng = 'philox')");
    }
  }

  // One training run of n > 0 elements. Ratio 0 and 1 draw (and discard) their 2 n words and call
  // constant(); otherwise the keep bits are drawn, copied to the device on `stream`, and
  // apply(device_bits) enqueues the kernel that reads them, while the run still holds the stream.
  template <typename Constant, typename Apply>
  void Run(OrtKernelContext* context, cudaStream_t stream, const void* x, uint64_t n, Constant&& constant,
           Apply&& apply) {
    const size_t elements = static_cast<size_t>(n);
    const size_t words = static_cast<size_t>(KeepBitWords(n));
    const size_t bytes = words * sizeof(uint64_t);
    // One chunk: the draw is sequential and the mask is applied on the device.
    Mt19937Segment segment(stream_, elements, words * kBitsPerWord, keep_below_);
    if (constant_) {
      segment.Skip();
      constant();
      return;
    }
    PinnedStaging::Buffer& host = staging_.Take(bytes, x);
    segment.DrawNext(static_cast<uint64_t*>(host.host));

    std::unique_ptr<KernelMemory::Scratch> scratch;
    void* device_bits = nullptr;
    const bool retained = !RuntimeHasKernelAllocator();
    if (retained) {
      if (order_ == nullptr) order_ = std::make_unique<StreamOrder>(where_);  // on the call's device
      device_bits = retained_.Get(memory_, context, x, bytes);
      order_->Before(stream, /*capturing=*/false, where_);
    } else {
      scratch = memory_.ScratchFor(context, bytes);
      device_bits = scratch->get();
    }
    CheckCuda(cudaMemcpyAsync(device_bits, host.host, bytes, cudaMemcpyHostToDevice, stream), where_,
              "cudaMemcpyAsync (keep bits to the device)");
    staging_.Enqueued(host, stream);
    apply(static_cast<const uint64_t*>(device_bits));
    if (retained) order_->After(stream, /*capturing=*/false, where_);
  }

 private:
  // X's element count when its shape is fully known at kernel creation, else -1.
  static int64_t StaticElementCount(const OrtKernelInfo* info) {
    try {
      const auto type_info = Ort::ConstKernelInfo(info).GetInputTypeInfo(0);
      const auto tensor = type_info.GetTensorTypeAndShapeInfo();
      if (tensor.GetDimensionsCount() == 0) return -1;  // unknown rank reads as 0 dimensions too
      int64_t n = 1;
      for (const int64_t d : tensor.GetShape()) {
        if (d < 0) return -1;
        n *= d;
      }
      return n;
    } catch (const Ort::Exception&) {
      return -1;  // no type information: allocate on the first run
    }
  }

  std::string where_;
  std::string rng_text_;
  KernelMemory memory_;
  PinnedStaging staging_;
  Mt19937Stream stream_;
  uint64_t keep_below_;
  bool constant_;                       // ratio 0 or 1: nothing to copy
  std::unique_ptr<StreamOrder> order_;  // API 17 only
  RetainedBuffer retained_;             // API 17 only: the device copy of the keep bits
};

}  // namespace cuda
}  // namespace caffe2_ort
