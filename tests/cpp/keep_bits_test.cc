// Every CPU path of KeepBits against the scalar Philox mapping, including block numbers that carry
// into the counter's high word (reachable through the ORT op only after 2^32 blocks of draws). Prints
// the path SelectCpuIsa picks, which the Python side (caffe2_ort.bench.cpu_isa_path) must agree with.
#include <cstdio>
#include <cstdint>
#include <vector>

#include "cpu/keep_bits.h"

using namespace caffe2_ort;

int main() {
  const CpuIsa best = SelectCpuIsa();
  std::printf("selected %s\n", CpuIsaName(best));
  const uint64_t starts[] = {0, 5, (uint64_t{1} << 32) - 3, (uint64_t{1} << 32) - 17, (uint64_t{7} << 32) + 11,
                             ~uint64_t{0} - 40};
  const uint32_t thresholds[] = {1u, 0x80000000u, 0xFFFFFFFFu, 123456789u};
  const PhiloxKey keys[] = {{0, 0}, {0xDEADBEEFu, 0x01234567u}};
  int failures = 0;
  for (CpuIsa isa : {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAvx512Ifma}) {
    if (static_cast<int>(isa) > static_cast<int>(best)) continue;  // not supported on this CPU
    for (uint64_t start : starts) {
      for (uint32_t t : thresholds) {
        for (PhiloxKey key : keys) {
          const size_t words = 5;  // odd, so the AVX-512 path's single-word tail runs too
          std::vector<uint64_t> bits(words);
          KeepBits(isa, key, start, words, t, bits.data());
          for (size_t e = 0; e < words * kBitsPerWord; ++e) {
            const PhiloxBlock r = DropoutBlock(start + e / 4, key);
            const bool want = r.w[e % 4] >= t;
            const bool got = (bits[e / 64] >> (e % 64)) & 1u;
            if (want != got && failures++ < 10) {
              std::printf("mismatch: isa %s start %llu threshold %u element %zu\n", CpuIsaName(isa),
                          static_cast<unsigned long long>(start), t, e);
            }
          }
        }
      }
    }
    std::printf("checked %s\n", CpuIsaName(isa));
  }
  std::printf(failures == 0 ? "ok\n" : "FAILED\n");
  return failures == 0 ? 0 : 1;
}
