// Every CPU path of the caffe2_mt19937 stream against std::mt19937 (the standard library's MT19937,
// an independent implementation) and against Caffe2's keep rule computed in double.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "cpu/mt19937_keep_bits.h"

using namespace caffe2_ort;

int main() {
  const CpuIsa best = SelectCpuIsa();
  const uint32_t seeds[] = {0u, 1u, 5489u, 1234u, 0xFFFFFFFFu};
  const float ratios[] = {0.0f, 1e-7f, 0.1f, 0.5f, 0.999f, 1.0f};
  // sizes that are not multiples of 64 (tails), of a 624-word block, or of the 512-element batch
  const size_t sizes[] = {1, 63, 64, 65, 311, 312, 313, 511, 512, 513, 4099};
  int failures = 0;
  for (CpuIsa isa : {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAvx512Ifma}) {
    if (static_cast<int>(isa) > static_cast<int>(best)) continue;  // not supported on this CPU
    for (uint32_t seed : seeds) {
      // raw words, drawn in pieces that straddle block boundaries
      std::mt19937 ref(seed);
      Mt19937 gen(seed, isa);
      for (size_t piece : {size_t{1}, size_t{623}, size_t{2}, size_t{1249}, size_t{5000}}) {
        std::vector<uint32_t> got(piece);
        gen.Draw(got.data(), piece);
        for (size_t i = 0; i < piece; ++i) {
          if (got[i] != ref() && failures++ < 10) std::printf("word mismatch: isa %s seed %u\n", CpuIsaName(isa), seed);
        }
      }
      gen.Skip(777);
      ref.discard(777);
      uint32_t after_skip = 0;
      gen.Draw(&after_skip, 1);
      if (after_skip != ref() && failures++ < 10) std::printf("skip mismatch: isa %s seed %u\n", CpuIsaName(isa), seed);

      for (float ratio : ratios) {
        std::mt19937 words(seed);
        Mt19937Stream stream(seed, isa);
        const uint64_t keep_below = Mt19937KeepBelow(ratio);
        for (size_t n : sizes) {
          // one segment per size, in chunks of 64 and of 512 elements (and ratio 0 / 1 skip)
          const size_t chunk = n % 2 == 0 ? 64 : 512;
          std::vector<uint64_t> bits((n + 63) / 64, ~uint64_t{0});
          Mt19937Segment segment(stream, n, chunk, keep_below);
          if (n == 313) {  // the skip path consumes the same words
            segment.Skip();
            for (size_t e = 0; e < 2 * n; ++e) words();
            continue;
          }
          for (size_t k = 0; k < segment.chunks(); ++k) {
            std::vector<uint64_t> part((chunk + 63) / 64, ~uint64_t{0});
            const size_t c = segment.DrawNext(part.data());
            if (c != k && failures++ < 10) std::printf("chunk order: %zu after %zu\n", c, k);
            const size_t len = std::min(chunk, n - c * chunk);
            for (size_t w = 0; w < (len + 63) / 64; ++w) bits[c * chunk / 64 + w] = part[w];
          }
          for (size_t e = 0; e < n; ++e) {
            const uint64_t hi = words(), lo = words();
            const double u = static_cast<double>(((hi << 32) | lo) & ((uint64_t{1} << 53) - 1)) * std::ldexp(1.0, -53);
            const bool want = u < 1.0 - static_cast<double>(ratio);
            const bool got = (bits[e / 64] >> (e % 64)) & 1u;
            if (want != got && failures++ < 10) {
              std::printf("keep mismatch: isa %s seed %u ratio %g n %zu element %zu\n", CpuIsaName(isa), seed,
                          static_cast<double>(ratio), n, e);
            }
          }
          if (n % 64 != 0 && (bits.back() >> (n % 64)) != 0 && failures++ < 10) {
            std::printf("unused bits set: isa %s n %zu\n", CpuIsaName(isa), n);
          }
        }
      }
    }
    std::printf("checked %s\n", CpuIsaName(isa));
  }
  std::printf(failures == 0 ? "ok\n" : "FAILED\n");
  return failures == 0 ? 0 : 1;
}
