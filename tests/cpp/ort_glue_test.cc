// Glue between our kernels and ORT, without a runtime: a fake OrtApi whose KernelContext_ParallelFor
// runs the tasks on real threads (as ORT's pool does, which must never see an exception), and the
// kernel table of a registered op. Prints "ok" on success.
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/custom_op.h"
#include "common/ort_api.h"
#include "cpu/parallel.h"

namespace {

int failures = 0;
void Expect(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what);
    ++failures;
  }
}

// Like ORT's pool: tasks run on several threads; an escaping exception would terminate the process
// (the callback is a C function pointer, and these threads have no handler).
OrtStatus* ORT_API_CALL FakeParallelFor(const OrtKernelContext*, void (*fn)(void*, size_t), size_t total, size_t,
                                        void* usr_data) noexcept {
  std::vector<std::thread> threads;
  for (size_t t = 0; t < 4; ++t) {
    threads.emplace_back([=] {
      for (size_t i = t; i < total; i += 4) fn(usr_data, i);
    });
  }
  for (auto& th : threads) th.join();
  return nullptr;
}

struct NoopKernel {
  explicit NoopKernel(const OrtKernelInfo*) {}
  void Compute(OrtKernelContext*) {}
  static constexpr std::array<std::pair<int, int>, 0> kMayInplace{};
};

}  // namespace

int main() {
  static OrtApi api;
  std::memset(&api, 0, sizeof(api));
  api.KernelContext_ParallelFor = FakeParallelFor;
  caffe2_ort::SetApi(&api, 17);

  const size_t n = caffe2_ort::kCpuTaskElements * 16 + 3;
  std::vector<int> seen(17, 0);
  bool caught = false;
  try {
    caffe2_ort::ParallelOverElements(nullptr, n, [&](size_t begin, size_t) {
      const size_t task = begin / caffe2_ort::kCpuTaskElements;
      seen[task] = 1;
      if (task == 5) throw std::runtime_error("task 5 failed");
    });
  } catch (const std::runtime_error& e) {
    caught = std::string(e.what()) == "task 5 failed";
  }
  Expect(caught, "the task's exception is rethrown on the calling thread");
  Expect(seen[5] == 1, "the failing task ran");

  size_t calls = 0;
  caffe2_ort::ParallelOverElements(nullptr, n, [&](size_t, size_t) { __atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED); });
  Expect(calls == 17, "without an exception every task runs");

  caffe2_ort::OpSignature sig{"Noop", "CPUExecutionProvider", {}, {}, nullptr};
  caffe2_ort::KernelOp<NoopKernel> op(sig, 17);
  Expect(op.CreateKernel == nullptr && op.KernelCompute == nullptr, "legacy CreateKernel/KernelCompute are null");
  Expect(op.CreateKernelV2 != nullptr && op.KernelComputeV2 != nullptr, "the V2 entry points are set");

  if (failures == 0) std::printf("ok\n");
  return failures == 0 ? 0 : 1;
}
