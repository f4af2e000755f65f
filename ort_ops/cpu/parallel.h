// Splitting elementwise work over ORT's intra-op thread pool.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>

#include "common/ort_api.h"

namespace caffe2_ort {

// Elements per task. A multiple of 4 * 64 so every task starts on a Philox block and on a keep-bit
// word, which makes the result independent of how tasks land on threads.
constexpr size_t kCpuTaskElements = size_t{1} << 15;

// Calls fn(begin, end) over [0, n) in kCpuTaskElements pieces, in parallel on ORT's intra-op pool.
// An exception thrown by fn never enters ORT's thread pool: the first one is kept, the remaining
// tasks return at once, and it is rethrown here once ParallelFor has returned.
template <typename Fn>
void ParallelOverElements(OrtKernelContext* context, size_t n, Fn&& fn) {
  const size_t tasks = (n + kCpuTaskElements - 1) / kCpuTaskElements;
  if (tasks <= 1) {
    if (n > 0) fn(size_t{0}, n);
    return;
  }
  struct Job {
    Fn* fn = nullptr;
    size_t n = 0;
    std::atomic<bool> failed{false};
    std::exception_ptr error;  // written once, by the task that set failed
  } job;
  job.fn = &fn;
  job.n = n;
  auto run = [](void* data, size_t task) noexcept {
    auto* j = static_cast<Job*>(data);
    if (j->failed.load(std::memory_order_relaxed)) return;
    try {
      const size_t begin = task * kCpuTaskElements;
      (*j->fn)(begin, std::min(j->n, begin + kCpuTaskElements));
    } catch (...) {
      if (!j->failed.exchange(true)) j->error = std::current_exception();
    }
  };
  Ort::ThrowOnError(Api().KernelContext_ParallelFor(context, run, tasks, 0, &job));
  if (job.error) std::rethrow_exception(job.error);
}

}  // namespace caffe2_ort
