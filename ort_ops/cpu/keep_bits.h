// Philox -> keep bits on the CPU, with AVX-512, AVX2 and scalar paths chosen at run time.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/philox.h"

namespace caffe2_ort {

// In increasing order; each path needs the extensions of the ones below it, plus:
//   kAvx2        AVX2, F16C
//   kAvx512      AVX512F, AVX512BW, AVX512DQ, AVX512VL, BMI2
//   kAvx512Ifma  AVX512IFMA, on Intel only: the Philox high words come from vpmadd52huq, which
//                shortens a round's dependency chain from 7 to 5 cycles and leaves no uop tied to one
//                port (10% faster on a Sapphire Rapids-class Xeon). It doubles the multiplies per
//                round, and AMD's Zen 4 runs 512-bit multiplies on two pipes only, so AMD keeps kAvx512.
// The apply step is the same for both AVX-512 paths.
enum class CpuIsa { kScalar, kAvx2, kAvx512, kAvx512Ifma };

// The best path this CPU supports, capped by the environment variable CAFFE2_ORT_CPU_ISA
// ("scalar", "avx2", "avx512", "avx512ifma"; unset or empty: no cap) so tests can pin every path. A
// cap above what the CPU supports gives the CPU's best. Any other value throws
// std::invalid_argument naming the accepted ones (kernel creation then fails with that message).
CpuIsa SelectCpuIsa();
const char* CpuIsaName(CpuIsa isa);

// Elements per keep-bit word, and the blocks that feed one word.
constexpr size_t kBitsPerWord = 64;
constexpr size_t kBlocksPerWord = kBitsPerWord / 4;

// For the run of elements fed by Philox blocks first_block, first_block + 1, ...: writes `words`
// 64-bit words, bit j of word w being the keep decision (word >= threshold) of element 64 w + j.
// 0 < threshold < 2^32.
void KeepBits(CpuIsa isa, PhiloxKey key, uint64_t first_block, size_t words, uint32_t threshold, uint64_t* bits);

}  // namespace caffe2_ort
