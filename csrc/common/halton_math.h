// Per-point math of the scrambled Halton sequence (SPEC §4), written once for the CPU and CUDA.
//
// Dimension j uses base b and a table of terms t_k[digit] = double(pi_k[digit]) * f_k, where
// f_0 = 1.0 / b and f_{k+1} = f_k / b (the spec's products, computed once on the host). A point
// is the left fold x = ((0 + t_0[q_0]) + t_1[q_1]) + ... over the base-b digits q_k of its index,
// in exactly this order: tabulating the products leaves only additions, so there is nothing to
// contract into an FMA and every backend produces the same bits.
#pragma once
#include <cstdint>

#include "common/macros.h"

namespace fastopt {

FO_HD FO_INLINE uint64_t mulhi64(uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __umul64hi(a, b);
#else
  return uint64_t((static_cast<unsigned __int128>(a) * b) >> 64);
#endif
}

// Unsigned 64-bit division by a fixed divisor 2 <= v < 2^32 as a multiply and shifts
// (Granlund & Montgomery 1994). For v not a power of two, with l = ceil(log2 v) and
// m = ceil(2^(64+l) / v) = 2^64 + magic, floor(q / v) = floor(q m / 2^(64+l)) for every q < 2^64;
// the 65-bit multiplier is applied as q + mulhi(q, magic) without overflowing 64 bits.
struct DivBy {
  uint64_t magic;
  uint32_t v;
  int32_t shift;  // l - 1, or log2 v when magic == 0 (a power of two)
};

inline DivBy make_divby(uint32_t v) {
  DivBy d{0, v, 0};
  const int bits = 64 - __builtin_clzll(uint64_t(v));  // bit length of v
  if ((v & (v - 1)) == 0) {
    d.shift = bits - 1;
  } else {
    const unsigned __int128 one = 1;
    const unsigned __int128 m = ((one << (64 + bits)) + v - 1) / v;
    d.magic = uint64_t(m - (one << 64));
    d.shift = bits - 1;
  }
  return d;
}

FO_HD FO_INLINE uint64_t div_by(const DivBy& d, uint64_t q) {
  if (d.magic == 0) return q >> d.shift;
  const uint64_t t = mulhi64(q, d.magic);
  return (((q - t) >> 1) + t) >> d.shift;
}

// The table layout (fastopt/halton.py's HaltonTables): dimension j has ndig rows of w entries,
// offsets[j] + k * w + slot. A full row (w == b) is indexed by the digit itself; a narrower
// one holds the digits s, s + 1, ... (mod b) from s = digit k of the call's start index, which
// covers every digit k of the indices start .. start + n - 1 when w >= n.
FO_HD FO_INLINE uint64_t halton_slot(uint64_t digit, uint64_t origin, uint32_t b) {
  return digit >= origin ? digit - origin : digit + b - origin;
}

// Checks one dimension's entry against the others and the call's n; returns nullptr and sets
// *w, or says what is wrong. Whatever the caller passes, a kernel that accepted it stays
// inside the terms: every row is within [offsets[j], offsets[j+1]) and each slot below w.
inline const char* halton_check_dim(int64_t b, int64_t ndig, int64_t begin, int64_t end,
                                    int64_t nterms, int64_t n, int64_t* w) {
  if (b < 2 || b >= (int64_t(1) << 32)) return "bases must be in [2, 2**32)";
  if (ndig < 0 || ndig > 64) return "ndig must be in [0, 64]";
  if (begin < 0 || end < begin || end > nterms) return "offsets must rise within terms";
  *w = ndig ? (end - begin) / ndig : 0;
  if (ndig && (*w * ndig != end - begin || *w > b || *w < (n < b ? n : b)))
    return "ndig, offsets and terms disagree (rows of min(b, n) to b entries each)";
  return nullptr;
}

// Continues the fold of one point over digit positions k0..k1-1 of q (q already divided by
// b^k0): x += t_k[slot of q mod b]; q = q div b. qs is start divided likewise (its digits are
// the origins of narrow rows, w < b).
FO_HD FO_INLINE double halton_fold(double x, const double* terms, const DivBy& base, int64_t w,
                                   uint64_t q, uint64_t qs, int k0, int k1) {
  const uint32_t b = base.v;
  for (int k = k0; k < k1; ++k) {
    const uint64_t h = div_by(base, q);
    uint64_t e = q - h * b;
    if (w < int64_t(b)) {
      const uint64_t hs = div_by(base, qs);
      e = halton_slot(e, qs - hs * b, b);
      qs = hs;
    }
    x += terms[int64_t(k) * w + int64_t(e)];
    q = h;
  }
  return x;
}

// The random shift: (x + u) mod 1 for x, u in [0, 1). The sum is below 2 and y - 1 is exact.
FO_HD FO_INLINE double halton_shift(double x, double u) {
  const double y = x + u;
  return y >= 1.0 ? y - 1.0 : y;
}

}  // namespace fastopt
