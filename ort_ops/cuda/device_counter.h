// The per-node Philox counter of the RNG contract, kept in device memory for the CUDA kernels.
//
// Each training run's kernels take base = atomicAdd(counter, ceil(numel / 4)) on the device (the
// reserve kernel of dropout_impl.cu writes it into the calling stream's base slot; the dropout
// kernel then reads it), so a run captured into a CUDA graph draws a fresh mask on every replay,
// and run k of a fresh session still uses the base the CPU kernels use for run k. Concurrent runs
// on different streams get disjoint ranges (the add is atomic) and their own slots.
//
// Memory: one block from ORT's allocator holding the counter and the first kSlots - 1 stream slots;
// more streams get a slot each, allocated once per stream. Header-only; used by cuda/dropout.cc.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "common/errors.h"
#include "cuda/cuda_check.h"
#include "cuda/kernel_memory.h"

namespace caffe2_ort {
namespace cuda {

class DeviceCounter {
 public:
  struct Pointers {
    uint64_t* counter;  // device: the node's counter
    uint64_t* slot;     // device: this stream's base slot
  };

  // With KernelInfoGetAllocator (API >= 18) the block is taken and zeroed here; else on the first call.
  DeviceCounter(const OrtKernelInfo* info, const std::string& where) : memory_(info, where) {
    if (!memory_.HasAllocator()) return;
    block_ = static_cast<uint64_t*>(memory_.Alloc(kSlots * sizeof(uint64_t)));
    InitAtCreation(memory_.Device(), where, [&](cudaStream_t stream) {
      CheckCuda(cudaMemsetAsync(block_, 0, sizeof(uint64_t), stream), where, "cudaMemsetAsync (Philox counter)");
    });
  }
  ~DeviceCounter() {
    if (init_event_ != nullptr) (void)cudaEventDestroy(init_event_);
  }
  DeviceCounter(const DeviceCounter&) = delete;
  DeviceCounter& operator=(const DeviceCounter&) = delete;

  // The counter and `stream`'s slot; x is any device pointer of the call (it names the device on API 17).
  Pointers For(OrtKernelContext* context, cudaStream_t stream, const void* x) {
    const std::string& where = memory_.Where();
    std::lock_guard<std::mutex> lock(mutex_);
    if (block_ == nullptr) InitOnFirstCall(context, stream, x);
    for (const auto& s : slots_) {
      if (s.first == stream) return {block_, s.second};
    }
    uint64_t* slot = slots_.size() + 1 < kSlots ? block_ + 1 + slots_.size()
                                                 : static_cast<uint64_t*>(memory_.Alloc(sizeof(uint64_t)));
    // API 17: a stream other than the one that zeroed the counter waits for the zeroing, once.
    if (init_event_ != nullptr && stream != init_stream_ && !IsCapturing(stream, where)) {
      CheckCuda(cudaStreamWaitEvent(stream, init_event_, 0), where, "cudaStreamWaitEvent (Philox counter)");
    }
    slots_.emplace_back(stream, slot);
    return {block_, slot};
  }

 private:
  static constexpr size_t kSlots = 16;

  void InitOnFirstCall(OrtKernelContext* context, cudaStream_t stream, const void* x) {
    const std::string& where = memory_.Where();
    if (IsCapturing(stream, where)) {
      Fail(ORT_FAIL, where, ": the first run of this node is being captured into a CUDA graph; with onnxruntime ",
           "older than 1.18 its Philox counter is set up on the first run, which must not be captured");
    }
    memory_.AcquireFrom(context, DeviceOf(x, where));
    block_ = static_cast<uint64_t*>(memory_.Alloc(kSlots * sizeof(uint64_t)));
    CheckCuda(cudaMemsetAsync(block_, 0, sizeof(uint64_t), stream), where, "cudaMemsetAsync (Philox counter)");
    CheckCuda(cudaEventCreateWithFlags(&init_event_, cudaEventDisableTiming), where, "cudaEventCreateWithFlags");
    CheckCuda(cudaEventRecord(init_event_, stream), where, "cudaEventRecord");
    init_stream_ = stream;
  }

  KernelMemory memory_;
  std::mutex mutex_;
  uint64_t* block_ = nullptr;  // [0] the counter, [1 .. kSlots - 1] stream slots
  std::vector<std::pair<cudaStream_t, uint64_t*>> slots_;
  cudaEvent_t init_event_ = nullptr;  // API 17 only
  cudaStream_t init_stream_ = nullptr;
};

}  // namespace cuda
}  // namespace caffe2_ort
