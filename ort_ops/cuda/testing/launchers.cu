// Test-only C entry points to the CUDA kernels, for driving them without onnxruntime-gpu (ctypes on
// device pointers from CuPy or PyTorch; see tests/gpu/gpu_checks.py). Built into
// libcaffe2_ort_cuda_testing.so, which is never installed and never part of the plugin.
//
// dtype codes: 0 float32, 1 float64, 2 float16, 3 bfloat16. Functions returning int give 0 on
// success and nonzero on failure, with the message in c2ort_test_last_error(). Nothing here
// synchronises: callers order work on the stream they pass.
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include <exception>
#include <memory>
#include <string>

#include "common/dropout_math.h"
#include "common/philox.h"
#include "cuda/dropout_cudnn.h"
#include "cuda/dropout_impl.cuh"

#define C2ORT_TEST_API extern "C" __attribute__((visibility("default")))

namespace caffe2_ort {
namespace cuda {
namespace {

thread_local std::string last_error;

int Report(const std::string& message) {
  last_error = message;
  return 1;
}

int Report(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return 0;
  return Report(std::string(what) + ": " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
}

bool ToElem(int dtype, Elem* elem) {
  switch (dtype) {
    case 0: *elem = Elem::kFloat; return true;
    case 1: *elem = Elem::kDouble; return true;
    case 2: *elem = Elem::kHalf; return true;
    case 3: *elem = Elem::kBFloat16; return true;
    default: return false;
  }
}

template <typename Fn>
int Guarded(Fn&& fn) {
  try {
    return fn();
  } catch (const std::exception& e) {
    return Report(e.what());
  } catch (...) {
    return Report("unknown error");
  }
}

template <Elem E>
cudaError_t Forward(const void* x, void* y, void* mask, const ForwardParams& p, cudaStream_t s) {
  using S = typename ElemTraits<E>::Storage;
  return LaunchDropoutForward<E, MaskKind::kBool>(static_cast<const S*>(x), static_cast<S*>(y), static_cast<bool*>(mask), p, s);
}

// Both forward entry points: the node's attributes (seed, ratio) into p, then the launch for dtype.
int ForwardFor(int dtype, const void* x, void* y, void* mask, ForwardParams p, uint64_t seed, float ratio,
               void* stream) {
  Elem elem;
  if (!ToElem(dtype, &elem)) return Report("unknown dtype code " + std::to_string(dtype));
  p.key = PhiloxKeyFromSeed(seed);
  p.threshold = DropThreshold(ratio);
  p.scale = DropScale(ratio);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (elem) {
    case Elem::kFloat: return Report(Forward<Elem::kFloat>(x, y, mask, p, s), "forward launch");
    case Elem::kDouble: return Report(Forward<Elem::kDouble>(x, y, mask, p, s), "forward launch");
    case Elem::kHalf: return Report(Forward<Elem::kHalf>(x, y, mask, p, s), "forward launch");
    case Elem::kBFloat16: return Report(Forward<Elem::kBFloat16>(x, y, mask, p, s), "forward launch");
  }
  return Report("unreachable");
}

template <Elem E>
cudaError_t ApplyBits(const void* x, void* y, void* mask, const uint64_t* bits, uint64_t n, float scale,
                      cudaStream_t s) {
  using S = typename ElemTraits<E>::Storage;
  return LaunchApplyKeepBits<E>(static_cast<const S*>(x), static_cast<S*>(y), static_cast<bool*>(mask), bits, n,
                                scale, s);
}

template <Elem E>
cudaError_t Backward(const void* dy, const void* mask, bool keep_all, void* dx, uint64_t n, float scale,
                     cudaStream_t s) {
  using S = typename ElemTraits<E>::Storage;
  return LaunchDropoutBackward<E, MaskKind::kBool>(static_cast<const S*>(dy), static_cast<const bool*>(mask), keep_all,
                                  static_cast<S*>(dx), n, scale, s);
}

// The forward's states seeded, the backward's only attached (as the plugin's kernels do); the
// memory is the tester's own (cudaMalloc: test-only code, outside any ORT kernel).
struct CudnnTester {
  CudnnTester(Elem elem, float ratio, uint64_t seed)
      : forward("test cuDNN forward", elem, ratio, seed), backward("test cuDNN backward", elem, ratio, 0) {}
  ~CudnnTester() {
    if (handle != nullptr) cudnnDestroy(handle);
    cudaFree(forward_states);
    cudaFree(backward_states);
  }
  CudnnDropout forward;
  CudnnDropout backward;
  cudnnHandle_t handle = nullptr;
  void* forward_states = nullptr;
  void* backward_states = nullptr;
};

}  // namespace
}  // namespace cuda
}  // namespace caffe2_ort

using namespace caffe2_ort;
using namespace caffe2_ort::cuda;

C2ORT_TEST_API const char* c2ort_test_last_error() { return last_error.c_str(); }

// The default engine's Dropout: mask may be null; ratio and seed as the node's attributes, base as
// the node's counter would give it.
C2ORT_TEST_API int c2ort_test_forward(int dtype, const void* x, void* y, void* mask, uint64_t n, uint64_t seed,
                                      uint64_t base, float ratio, void* stream) {
  ForwardParams p;
  p.n = n;
  p.base = base;
  return ForwardFor(dtype, x, y, mask, p, seed, ratio, stream);
}

// The default engine's Dropout with the node's counter in device memory, as the plugin runs it: a
// reserve kernel takes base = atomicAdd(*counter, ceil(n / 4)) into *slot, then the dropout kernel
// reads it. counter and slot are device pointers to uint64 (CUDA-graph capturable).
C2ORT_TEST_API int c2ort_test_forward_counter(int dtype, const void* x, void* y, void* mask, uint64_t n,
                                              uint64_t seed, uint64_t* counter, uint64_t* slot, float ratio,
                                              void* stream) {
  if (counter == nullptr || slot == nullptr) return Report("counter and slot must be device pointers");
  ForwardParams p;
  p.n = n;
  p.counter = counter;
  p.slot = slot;
  return ForwardFor(dtype, x, y, mask, p, seed, ratio, stream);
}

// rng = "caffe2_mt19937"'s device half: Y and mask from keep-bit words (device memory, ceil(n / 64)
// words, bit i % 64 of word i / 64 = element i), as the plugin applies the host-drawn stream.
C2ORT_TEST_API int c2ort_test_apply_keep_bits(int dtype, const void* x, void* y, void* mask, const uint64_t* bits,
                                              uint64_t n, float ratio, void* stream) {
  Elem elem;
  if (!ToElem(dtype, &elem)) return Report("unknown dtype code " + std::to_string(dtype));
  const float scale = DropScale(ratio);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (elem) {
    case Elem::kFloat: return Report(ApplyBits<Elem::kFloat>(x, y, mask, bits, n, scale, s), "keep-bits launch");
    case Elem::kDouble: return Report(ApplyBits<Elem::kDouble>(x, y, mask, bits, n, scale, s), "keep-bits launch");
    case Elem::kHalf: return Report(ApplyBits<Elem::kHalf>(x, y, mask, bits, n, scale, s), "keep-bits launch");
    case Elem::kBFloat16:
      return Report(ApplyBits<Elem::kBFloat16>(x, y, mask, bits, n, scale, s), "keep-bits launch");
  }
  return Report("unreachable");
}

// The default engine's DropoutGrad; mask null means keep_all for every element.
C2ORT_TEST_API int c2ort_test_backward(int dtype, const void* dy, const void* mask, int keep_all, void* dx, uint64_t n,
                                       float ratio, void* stream) {
  Elem elem;
  if (!ToElem(dtype, &elem)) return Report("unknown dtype code " + std::to_string(dtype));
  const float scale = DropScale(ratio);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const bool k = keep_all != 0;
  switch (elem) {
    case Elem::kFloat: return Report(Backward<Elem::kFloat>(dy, mask, k, dx, n, scale, s), "backward launch");
    case Elem::kDouble: return Report(Backward<Elem::kDouble>(dy, mask, k, dx, n, scale, s), "backward launch");
    case Elem::kHalf: return Report(Backward<Elem::kHalf>(dy, mask, k, dx, n, scale, s), "backward launch");
    case Elem::kBFloat16: return Report(Backward<Elem::kBFloat16>(dy, mask, k, dx, n, scale, s), "backward launch");
  }
  return Report("unreachable");
}

// A cuDNN engine instance (forward states seeded with seed on stream, backward states attached
// only) with its own handle bound to stream. Returns null on failure.
C2ORT_TEST_API void* c2ort_test_cudnn_create(int dtype, float ratio, uint64_t seed, void* stream) {
  Elem elem;
  if (!ToElem(dtype, &elem)) {
    Report("unknown dtype code " + std::to_string(dtype));
    return nullptr;
  }
  std::unique_ptr<CudnnTester> t;
  const int rc = Guarded([&] {
    t = std::make_unique<CudnnTester>(elem, ratio, seed);
    cudnnStatus_t st = cudnnCreate(&t->handle);
    if (st == CUDNN_STATUS_SUCCESS) st = cudnnSetStream(t->handle, static_cast<cudaStream_t>(stream));
    if (st != CUDNN_STATUS_SUCCESS) return Report(std::string("cudnnCreate/cudnnSetStream: ") + cudnnGetErrorString(st));
    const size_t bytes = CudnnDropout::StatesBytes(t->handle, "test cuDNN");
    if (Report(cudaMalloc(&t->forward_states, bytes), "cudaMalloc (states)") != 0) return 1;
    if (Report(cudaMalloc(&t->backward_states, bytes), "cudaMalloc (states)") != 0) return 1;
    // The backward's states are poisoned: it must not read them.
    if (Report(cudaMemsetAsync(t->backward_states, 0xA5, bytes, static_cast<cudaStream_t>(stream)), "cudaMemsetAsync") != 0) return 1;
    t->forward.SeedStates(t->handle, t->forward_states, bytes);
    t->backward.AttachStates(t->handle, t->backward_states, bytes);
    return 0;
  });
  return rc == 0 ? t.release() : nullptr;
}

C2ORT_TEST_API void c2ort_test_cudnn_destroy(void* tester) { delete static_cast<CudnnTester*>(tester); }

// Reserve-space bytes for n elements, or 0 with an error message.
C2ORT_TEST_API uint64_t c2ort_test_cudnn_reserve_bytes(void* tester, uint64_t n) {
  uint64_t bytes = 0;
  Guarded([&] {
    bytes = static_cast<CudnnTester*>(tester)->forward.ReserveBytes(n);
    return 0;
  });
  return bytes;
}

C2ORT_TEST_API int c2ort_test_cudnn_forward(void* tester, const void* x, void* y, void* reserve, uint64_t bytes,
                                            uint64_t n) {
  return Guarded([&] {
    auto* t = static_cast<CudnnTester*>(tester);
    t->forward.Forward(t->handle, x, y, reserve, bytes, n);
    return 0;
  });
}

C2ORT_TEST_API int c2ort_test_cudnn_backward(void* tester, const void* dy, const void* reserve, uint64_t bytes,
                                             void* dx, uint64_t n) {
  return Guarded([&] {
    auto* t = static_cast<CudnnTester*>(tester);
    t->backward.Backward(t->handle, dy, reserve, bytes, dx, n);
    return 0;
  });
}
