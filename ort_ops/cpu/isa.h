// x86 vector extensions used by the CPU kernels. The library is built for baseline x86-64; the
// AVX2 and AVX-512 functions carry target attributes and are called only after a run-time check
// (SelectCpuIsa), so one binary serves every x86-64 CPU.
#pragma once

#if defined(__x86_64__) || defined(_M_X64)
#define C2ORT_X86 1
#include <immintrin.h>

#define C2ORT_TARGET_AVX2 __attribute__((target("avx2,f16c")))
#define C2ORT_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,bmi2")))
#define C2ORT_TARGET_AVX512_IFMA __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,bmi2,avx512ifma")))
// Helpers inlined into the functions above.
#define C2ORT_INLINE_AVX2 __attribute__((target("avx2,f16c"), always_inline)) inline
#define C2ORT_INLINE_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,bmi2"), always_inline)) inline
#define C2ORT_INLINE_AVX512_IFMA \
  __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,bmi2,avx512ifma"), always_inline)) inline
#else
#define C2ORT_X86 0
#endif
