// A guarded optimizer step's decisions (fastopt/_reference/optim.py guard_decide), for code
// that runs where the norm is: the clip/skip/step-count control array and the norm's finishing
// rules of fastopt/norm.py (_rescale_exp, _finish), in the same float64 operations.
// The numbers must match fastopt._registry.GUARD_WINDOW / GUARD_WIDTH / G_*.
#pragma once
#include <cmath>

#include "macros.h"

namespace fastopt {

constexpr int kGuardWindow = 16;  // rows of scalars a step may choose from
constexpr int kGuardWidth = 8;    // doubles per control row
enum GuardField { kGApplied, kGNorm, kGScale, kGSkipped, kGClipped, kGRow, kGExp, kGMaxabs };
constexpr int kGSeq = kGExp;  // in a slot row: the step's issue number

// fastopt.norm: a sum of squares at least kSafeSum (and finite) needs no rescaling; below
// kTiny a max |x| calls for it; the exponent is clamped to +-kExpLimit.
constexpr double kSafeSum = 0x1p-900;
constexpr double kTiny = 0x1p-480;
constexpr int kExpLimit = 1000;

FO_HD inline bool norm_sum_is_safe(double total) {
  return std::isnan(total) || (total >= kSafeSum && total < INFINITY);
}

// _rescale_exp: 0, or e such that 2^e * max|x| is near 1.
FO_HD inline int norm_rescale_exp(double total, double maxabs) {
  if (std::isnan(total) || std::isinf(maxabs) || maxabs == 0) return 0;
  if (!(std::isinf(total) || maxabs < kTiny)) return 0;
  int e;
  frexp(maxabs, &e);
  return -e < -kExpLimit ? -kExpLimit : (-e > kExpLimit ? kExpLimit : -e);
}

// _finish: the norm from a sum of squares taken at scale 2^exp (ldexp overflows to inf).
FO_HD inline double norm_finish(double total, double maxabs, int exp) {
  if (std::isnan(total)) return NAN;
  if (std::isinf(maxabs)) return INFINITY;
  return ldexp(sqrt(total), -exp);
}

// guard_decide: skip / clip / row / count from the step's norm, into the live row 0 and the
// step's own row `slot` (with the issue number `seq`); that row also goes to `mirror` (host
// memory the device can write; may be null), the issue number last, after a system fence.
FO_HD inline void guard_decide(double* ctl, double norm, int nrows, double t_lo, double limit,
                               bool skip_nonfinite, int slot, double seq, double* mirror) {
  double* live = ctl;
  double* mine = ctl + slot * kGuardWidth;
  const double applied = live[kGApplied];
  const bool finite = std::isfinite(norm);
  const bool skip = skip_nonfinite && !finite;
  const bool clipped = !skip && finite && norm > limit;
  const double scale = clipped ? limit / norm : 1.0;
  double row = applied - t_lo;
  row = row < 0.0 ? 0.0 : (row > nrows - 1.0 ? nrows - 1.0 : row);
  for (int c = 0; c < kGuardWidth; ++c) mine[c] = 0.0;
  mine[kGApplied] = applied;
  double* both[2] = {live, mine};
  for (double* r : both) {
    r[kGNorm] = norm;
    r[kGScale] = scale;
    r[kGRow] = row;
    r[kGSkipped] = skip ? 1.0 : 0.0;
    r[kGClipped] = clipped ? 1.0 : 0.0;
  }
  mine[kGSeq] = seq;
  live[kGApplied] = skip ? applied : applied + 1.0;
  live[kGExp] = live[kGMaxabs] = 0.0;
  if (mirror) {
    double* out = mirror + slot * kGuardWidth;
    for (int c = 0; c < kGuardWidth; ++c)
      if (c != kGSeq) out[c] = mine[c];
#ifdef __CUDA_ARCH__
    __threadfence_system();  // the row before its issue number, as the host sees them
#endif
    *reinterpret_cast<volatile double*>(out + kGSeq) = seq;
  }
}

}  // namespace fastopt
