// The fixed summation order of the global norm (SPEC §3), apart from any loop over memory, so the
// CPU kernels, the CUDA kernels and fastopt/_reference/norm.py all produce the same bits:
//   * an array is cut into blocks of kNormBlock elements from its first element;
//   * in a block, element i goes to lane i mod kNormLanes; each lane adds its squares in order;
//   * the lanes fold in halves (lane j += lane j + L/2, then L/4, ... down to lane 0);
//   * an array's block sums fold in halves the same way (zero-padded to a power of two).
// Squares are taken in double after an exact power-of-two scaling (1 when none is needed).
// The numbers must match fastopt._registry.NORM_BLOCK / NORM_LANES.
#pragma once
#include <cstdint>

#include "macros.h"

namespace fastopt {

constexpr int64_t kNormBlock = int64_t(1) << 14;
constexpr int kNormLanes = 16;

// One element's contribution to its lane: acc += (s x)^2 in double; m = max(m, |x|) in T when
// asked (the max is only needed for ord=inf and for the rare rescaling decision). The max skips
// NaN (a NaN shows in the sum instead), like the SIMD max instructions do.
template <bool Scaled, bool WantMax, class T>
FO_HD FO_INLINE void norm_lane_add(double& acc, T& m, T x, double s) {
  double v = double(x);
  if (Scaled) v = v * s;
  acc = acc + v * v;
  if (WantMax) {
    const T a = x < T(0) ? -x : x;
    m = a > m ? a : m;
  }
}

// Lanes -> block sum: fold in halves, in place.
FO_HD FO_INLINE double norm_fold_lanes(double* acc) {
  for (int h = kNormLanes / 2; h >= 1; h /= 2)
    for (int j = 0; j < h; ++j) acc[j] = acc[j] + acc[j + h];
  return acc[0];
}

// Block sums -> array sum: fold v[0..n) in halves as if zero-padded to a power of two (adding
// +0.0 to a sum of squares changes no bit, so the padding need not exist).
FO_HD inline double norm_fold_pairwise(double* v, int64_t n) {
  if (n == 0) return 0.0;
  int64_t w = 1;
  while (w < n) w *= 2;
  while (w > 1) {
    const int64_t h = w / 2;
    for (int64_t j = 0; j + h < n; ++j) v[j] = v[j] + v[j + h];
    if (n > h) n = h;
    w = h;
  }
  return v[0];
}

}  // namespace fastopt
