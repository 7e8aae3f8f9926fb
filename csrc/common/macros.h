// Portability macros: the per-element math in csrc/common compiles both as C++ (CPU backend)
// and as CUDA __host__ __device__ code, so the CPU tests exercise the math the GPU runs.
#pragma once

#if defined(__CUDACC__)
#define FO_HD __host__ __device__
#define FO_INLINE __forceinline__
#else
#define FO_HD
#define FO_INLINE inline __attribute__((always_inline))
#endif

#include <cmath>

namespace fastopt {
FO_HD FO_INLINE float fo_sqrt(float x) { return sqrtf(x); }
FO_HD FO_INLINE double fo_sqrt(double x) { return sqrt(x); }
}  // namespace fastopt
