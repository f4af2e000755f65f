// Philox4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel random numbers: as easy as 1, 2, 3", SC'11)
// and the mapping from (seed, base, element index) to a keep/drop decision that every backend of
// this library shares. Header-only so the CPU kernels, the CUDA kernels and the tests use the
// exact same code.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define C2ORT_HD __host__ __device__ __forceinline__
#else
#define C2ORT_HD inline
#endif

namespace caffe2_ort {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;  // sqrt(3) - 1
constexpr int kPhiloxRounds = 10;

struct PhiloxKey {
  uint32_t k0, k1;
};

struct PhiloxBlock {
  uint32_t w[4];
};

// The seed is read as uint64: key = (low word, high word).
C2ORT_HD PhiloxKey PhiloxKeyFromSeed(uint64_t seed) {
  return PhiloxKey{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
}

C2ORT_HD void PhiloxMulHiLo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
}

C2ORT_HD PhiloxBlock Philox4x32_10(PhiloxBlock ctr, PhiloxKey key) {
  for (int round = 0; round < kPhiloxRounds; ++round) {
    if (round > 0) {
      key.k0 += kPhiloxW0;
      key.k1 += kPhiloxW1;
    }
    uint32_t hi0, lo0, hi1, lo1;
    PhiloxMulHiLo(kPhiloxM0, ctr.w[0], &hi0, &lo0);
    PhiloxMulHiLo(kPhiloxM1, ctr.w[2], &hi1, &lo1);
    ctr = PhiloxBlock{{hi1 ^ ctr.w[1] ^ key.k0, lo1, hi0 ^ ctr.w[3] ^ key.k1, lo0}};
  }
  return ctr;
}

// Block b of a mask stream: counter (b mod 2^32, floor(b / 2^32), 0, 0).
C2ORT_HD PhiloxBlock DropoutBlock(uint64_t block, PhiloxKey key) {
  return Philox4x32_10(PhiloxBlock{{static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), 0u, 0u}},
                       key);
}

// Each block feeds four consecutive elements, so a run over n elements consumes ceil(n / 4) blocks.
C2ORT_HD uint64_t DropoutBlocksFor(uint64_t numel) { return (numel + 3) / 4; }

}  // namespace caffe2_ort
