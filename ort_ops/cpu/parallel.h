// Splitting elementwise work over ORT's intra-op thread pool.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "common/ort_api.h"

namespace caffe2_ort {

// Elements per task. A multiple of 4 * 64 so every task starts on a Philox block and on a keep-bit
// word, which makes the result independent of how tasks land on threads.
constexpr size_t kCpuTaskElements = size_t{1} << 15;

// Calls fn(begin, end) over [0, n) in kCpuTaskElements pieces, in parallel on ORT's intra-op pool.
template <typename Fn>
void ParallelOverElements(OrtKernelContext* context, size_t n, Fn&& fn) {
  const size_t tasks = (n + kCpuTaskElements - 1) / kCpuTaskElements;
  if (tasks <= 1) {
    if (n > 0) fn(size_t{0}, n);
    return;
  }
  struct Job {
    Fn* fn;
    size_t n;
  } job{&fn, n};
  auto run = [](void* data, size_t task) {
    auto* j = static_cast<Job*>(data);
    const size_t begin = task * kCpuTaskElements;
    (*j->fn)(begin, std::min(j->n, begin + kCpuTaskElements));
  };
  Ort::ThrowOnError(Api().KernelContext_ParallelFor(context, run, tasks, 0, &job));
}

}  // namespace caffe2_ort
