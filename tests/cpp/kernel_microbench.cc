// In-cache, single-thread timing of the CPU kernel's halves as dropout.cc drives them: one ORT task
// (2^15 float32 elements) in 256-element slices, minimum over many repeats (robust on a shared
// machine). The clock comes from a dependent imul chain (3 cycles per imul on Intel and AMD cores),
// so cycles per element are core cycles even where perf counters are missing.
//
// From the repository root (tests/test_cpu_paths.py runs it once with a few repeats):
//   g++ -std=c++17 -O3 -ffp-contract=off -Iort_ops tests/cpp/kernel_microbench.cc ort_ops/cpu/keep_bits.cc ort_ops/cpu/elementwise.cc -o kernel_microbench
//   CAFFE2_ORT_CPU_ISA=avx512 ./kernel_microbench [repeats]
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "cpu/elementwise.h"
#include "cpu/keep_bits.h"

using namespace caffe2_ort;

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

template <typename Fn>
double Best(Fn&& fn, int repeats) {
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    const double t0 = Now();
    fn();
    const double t = Now() - t0;
    if (t < best) best = t;
  }
  return best;
}

__attribute__((noinline)) void ImulChain(long n) {
  long x = 1;
  for (long i = 0; i < n; ++i) {
#if defined(__x86_64__)
    asm volatile("imul %0, %0\n\timul %0, %0\n\timul %0, %0\n\timul %0, %0" : "+r"(x));
#else
    asm volatile("" : "+r"(x));
#endif
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int repeats = argc > 1 ? std::atoi(argv[1]) : 1000;
  const CpuIsa isa = SelectCpuIsa();
  constexpr size_t kN = size_t{1} << 15, kSlice = 256;
  constexpr long kChain = 100000;
  const double seconds_per_cycle = Best([] { ImulChain(kChain); }, repeats / 4 + 1) / (12.0 * kChain);

  // 64-byte aligned, as ORT allocates.
  char* mem = static_cast<char*>(std::aligned_alloc(64, 9 * kN + 256));
  std::memset(mem, 0, 9 * kN + 256);
  float* x = reinterpret_cast<float*>(mem);
  float* y = reinterpret_cast<float*>(mem + 4 * kN + 64);
  bool* mask = reinterpret_cast<bool*>(mem + 8 * kN + 128);
  for (size_t i = 0; i < kN; ++i) x[i] = static_cast<float>(i % 97) - 48.0f;
  uint64_t bits[kSlice / kBitsPerWord];
  const PhiloxKey key{1, 0};
  const uint32_t threshold = 0x80000000u;

  auto keep_bits = [&] {
    for (size_t s = 0; s < kN; s += kSlice) {
      KeepBits(isa, key, s / 4, kSlice / kBitsPerWord, threshold, bits);
      asm volatile("" : : "r"(bits) : "memory");
    }
  };
  auto forward = [&](bool* m) {
    for (size_t s = 0; s < kN; s += kSlice) {
      KeepBits(isa, key, s / 4, kSlice / kBitsPerWord, threshold, bits);
      ApplyKeepBits<Elem::kFloat>(isa, x + s, y + s, m ? m + s : nullptr, kSlice, bits, 2.0f, false);
    }
  };
  auto grad = [&] { ApplyMaskGrad<Elem::kFloat>(isa, x, mask, y, kN, 2.0f); };
  // BitmaskDropout: the packed mask written from the keep bits, and its gradient reading the words.
  static uint32_t words[kN / 32];
  for (size_t i = 0; i < kN; i += 3) words[i / 32] |= uint32_t{1} << (i % 32);
  auto forward_packed = [&] {
    for (size_t s = 0; s < kN; s += kSlice) {
      KeepBits(isa, key, s / 4, kSlice / kBitsPerWord, threshold, bits);
      ApplyKeepBits<Elem::kFloat>(isa, x + s, y + s, nullptr, kSlice, bits, 2.0f, false);
      StoreMaskWords(bits, kSlice, words + s / 32);
    }
  };
  auto grad_packed = [&] { ApplyMaskGrad<Elem::kFloat>(isa, x, words, y, kN, 2.0f); };

  std::printf("isa %s, clock %.2f GHz (imul chain), %zu float32 elements in %zu-element slices, min of %d\n",
              CpuIsaName(isa), 1e-9 / seconds_per_cycle, kN, kSlice, repeats);
  auto report = [&](const char* what, double seconds) {
    std::printf("%-31s %6.3f ns/elem %6.3f cycles/elem\n", what, seconds * 1e9 / kN, seconds / seconds_per_cycle / kN);
  };
  report("keep bits", Best(keep_bits, repeats));
  report("keep bits + apply, mask", Best([&] { forward(mask); }, repeats));
  report("keep bits + apply, no mask", Best([&] { forward(nullptr); }, repeats));
  report("grad apply", Best(grad, repeats));
  report("keep bits + apply, packed mask", Best(forward_packed, repeats));
  report("grad apply, packed mask", Best(grad_packed, repeats));
  std::free(mem);
  return 0;
}
