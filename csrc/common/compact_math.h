// Compact precision (SPEC §2a, fastopt/_precision.py, the normative reference): one element's
// conversions between float32 and the compact storages -- bfloat16 and float16 (nearest-even
// or stochastic), the bf16 + int16 remainder split of a float32 master, the 8-bit maps with
// their block absmax -- and the counter-based random stream of stochastic rounding.
//
// Everything is integer arithmetic or float32 operations with one correctly rounded result
// each, written branch-free (selects), so that the loops over a tile vectorise and every
// instruction set gives the reference's bits. The CPU's SIMD conversions (F16C) are in
// csrc/cpu/compact.cpp; these scalar forms are their specification and the tails' code.
#pragma once
#include <cstdint>
#include <cstring>

#include "macros.h"

namespace fastopt {

// Elements per 8-bit block (one float32 absmax each); the maps' smallest normal exponents
// (signed int8: first moments; unsigned uint8: second moments, accumulators) and mantissa bits.
constexpr int kQBlock = 256;
constexpr int kEminSigned = -14, kEminUnsigned = -30, kMapMant = 3;

FO_HD FO_INLINE uint32_t f2u(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}
FO_HD FO_INLINE float u2f(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}
// |x|'s bits, as int32 (they are < 2^31): NaN is > 0x7F800000, inf == it, finite < it.
FO_HD FO_INLINE int32_t abs_i(uint32_t M) { return int32_t(M & 0x7FFFFFFFu); }
FO_HD FO_INLINE bool nan_bits(uint32_t M) { return abs_i(M) > 0x7F800000; }

// -- the random stream ----------------------------------------------------------------------------

// C. Wellons' lowbias32: a 32-bit integer hash.
FO_HD FO_INLINE uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

// The key of one stream: h <- mix32(h ^ w) from 0x6A09E667 over the words seed (low, high),
// step (low, high), array id, lane (0: the param, 1 + j: state buffer j) and the high 32 bits
// of the element index. Element i's word is then mix32(uint32(i) ^ key).
FO_HD FO_INLINE uint32_t stream_key(uint64_t seed, uint64_t step, uint32_t array, uint32_t lane,
                                    uint32_t hi) {
  const uint32_t words[7] = {uint32_t(seed), uint32_t(seed >> 32), uint32_t(step),
                             uint32_t(step >> 32), array, lane, hi};
  uint32_t h = 0x6A09E667u;
  for (uint32_t w : words) h = mix32(h ^ w);
  return h;
}

// -- bfloat16 -------------------------------------------------------------------------------------
// Integer rounding on the float32 bits, never a hardware bf16 conversion: AVX512-BF16's
// vcvtneps2bf16 treats denormal inputs as zero, so it would differ from the reference there.

FO_HD FO_INLINE uint32_t bf16_nan(uint32_t M) { return ((M >> 16) & 0x8000u) | 0x7FC0u; }

// The roundings on the bits of a non-NaN x (a NaN may carry out of 32 bits or round to inf;
// the full forms below give it the canonical 0x7FC0 with its sign instead):
// nearest-even adds 0x7FFF plus the kept part's lowest bit and drops 16 bits; stochastic adds
// the word's low 16 bits (up, in magnitude, with probability dropped / 2^16); the remainder
// split's param rounds to nearest, ties away (+0x8000).
FO_HD FO_INLINE uint32_t bf16_nearest_bits(uint32_t M) {
  return (M + 0x7FFFu + ((M >> 16) & 1u)) >> 16;
}
FO_HD FO_INLINE uint32_t bf16_stochastic_bits(uint32_t M, uint32_t r) {
  return (M + (r & 0xFFFFu)) >> 16;
}
FO_HD FO_INLINE uint32_t remainder_hi_bits(uint32_t M) { return (M + 0x8000u) >> 16; }

FO_HD FO_INLINE uint16_t bf16_nearest(float x) {
  const uint32_t M = f2u(x);
  return uint16_t(nan_bits(M) ? bf16_nan(M) : bf16_nearest_bits(M));
}
FO_HD FO_INLINE uint16_t bf16_stochastic(float x, uint32_t r) {
  const uint32_t M = f2u(x);
  return uint16_t(nan_bits(M) ? bf16_nan(M) : bf16_stochastic_bits(M, r));
}
FO_HD FO_INLINE float bf16_widen(uint16_t h) { return u2f(uint32_t(h) << 16); }

// The bf16 param + int16 remainder of a float32 master: hi = round to nearest, ties away
// ((M + 0x8000) >> 16), rem = M's low 16 bits; join subtracts the carry back (rem's top bit
// says one happened), so join(split(M)) == M for every non-NaN M.
FO_HD FO_INLINE void remainder_split(float x, uint16_t& hi, int16_t& rem) {
  const uint32_t M = f2u(x);
  hi = uint16_t(nan_bits(M) ? bf16_nan(M) : remainder_hi_bits(M));
  rem = int16_t(uint16_t(M));
}
FO_HD FO_INLINE float remainder_join(uint16_t hi, int16_t rem) {
  const uint32_t r = uint16_t(rem);
  return u2f((((uint32_t(hi) - (r >> 15)) & 0xFFFFu) << 16) | r);
}

// -- float16 --------------------------------------------------------------------------------------

// float32 -> float16 bits, IEEE nearest-even (as numpy's astype(float16)); NaN -> 0x7E00 | sign.
// Normal results: rebias the exponent (-112 << 23) and round at bit 13 by adding 0xFFF plus the
// kept lowest bit (a carry into the exponent is the right result, up to inf from 65520 on).
// |x| < 2^-14: x + 0.5f rounds (once, nearest-even) to a multiple of 2^-24, 0.5's float32 ulp
// and float16's subnormal spacing, so the low bits of the sum are the subnormal's bits.
FO_HD FO_INLINE uint16_t f16_nearest(float x) {
  const uint32_t M = f2u(x);
  const int32_t a = abs_i(M);
  const uint32_t normal = (uint32_t(a) - 0x38000000u + 0xFFFu + ((uint32_t(a) >> 13) & 1u)) >> 13;
  const uint32_t sub = f2u(u2f(uint32_t(a)) + 0.5f) - 0x3F000000u;
  uint32_t h = a < 0x38800000 ? sub : normal;
  h = a >= 0x47800000 ? 0x7C00u : h;  // |x| >= 2^16: inf
  h = a > 0x7F800000 ? 0x7E00u : h;
  return uint16_t(h | ((M >> 16) & 0x8000u));
}

// float16 bits -> float32 (exact; NaN payloads kept, as numpy).
FO_HD FO_INLINE float f16_widen(uint16_t h) {
  const uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
  const uint32_t sub = f2u(float(int32_t(m)) * 0x1p-24f);  // m 2^-24, exact
  const uint32_t normal = ((e + 112u) << 23) | (m << 13);
  const uint32_t big = 0x7F800000u | (m << 13);
  const uint32_t bits = e == 0 ? sub : (e == 31 ? big : normal);
  return u2f(bits | (uint32_t(h & 0x8000u) << 16));
}

// The float32 that stochastic float16 rounding of finite x gives (then converted by
// f16_nearest, exactly: it is a float16 value or beyond float16's range): with u the float16
// spacing at |x|, 2^(e-10), e = max(exponent of |x|, -14), q = |x|/u (exact scaling; q < 2^11),
// up to (floor(q) + 1) u iff (r & 0xFFFF) < frac(q) 2^16, else floor(q) u; x's sign.
FO_HD FO_INLINE float f16_stochastic_value(float x, uint32_t r) {
  const uint32_t M = f2u(x), A = M & 0x7FFFFFFFu;
  const int32_t e = int32_t(A >> 23) - 127;
  const int32_t ue = (e > -14 ? e : -14) - 10;
  const float inv = u2f(uint32_t(127 - ue) << 23), u = u2f(uint32_t(127 + ue) << 23);
  const float q0 = u2f(A) * inv;
  const float q = q0 < 2048.0f ? q0 : 0.0f;  // inf, NaN -> 0 (no int conversion of them)
  const float fl = float(int32_t(q));        // floor, as q >= 0
  const float frac = q - fl;
  const float up = float(float(int32_t(r & 0xFFFFu)) < frac * 65536.0f);
  const float mag = (fl + up) * u;
  return u2f(f2u(mag) | (M & 0x80000000u));
}
// Stochastic float16 rounding; inf and NaN as f16_nearest.
FO_HD FO_INLINE uint16_t f16_stochastic(float x, uint32_t r) {
  const bool finite = abs_i(f2u(x)) < 0x7F800000;
  return f16_nearest(finite ? f16_stochastic_value(x, r) : x);
}

// -- the 8-bit maps -------------------------------------------------------------------------------
// A code's magnitude m = |code| = 8e + f (f < 8) stands for 2^(e - 1 + emin) (1 + f/8) if e >= 1
// (the float32 with exponent field e - 1 + emin + 127 and mantissa f: (m + (126 + emin) 8) << 20)
// and for f 2^(emin - 3) if e = 0; int8 codes carry the sign, uint8 codes are magnitudes.

template <bool Signed>
FO_HD FO_INLINE float code_value(uint8_t byte) {
  constexpr int emin = Signed ? kEminSigned : kEminUnsigned;
  const int32_t c = Signed ? int32_t(int8_t(byte)) : int32_t(byte);
  const int32_t m = c < 0 ? -c : c;
  const float normal = u2f(uint32_t(m + ((127 + emin - 1) << kMapMant)) << (23 - kMapMant));
  const float sub = float(m) * (Signed ? 0x1p-17f : 0x1p-33f);  // 2^(emin - 3), exact
  const float v = m >= (1 << kMapMant) ? normal : sub;
  return c < 0 ? -v : v;
}
// decode: code_value(code) * the block's absmax (one float32 product).

// The code of x in a block with absmax `scale`, finite and > 0 (else every code is 0): a =
// |x| / scale (one division: a <= 1 as |x| <= scale), then the nearest map magnitude, ties to
// even: below 2^emin a (2^(3 - emin)) rounded to an integer (adding 2^23 rounds nearest-even
// in float32), above it a's float32 bits rounded to 3 mantissa bits (nearest-even, as in
// bf16_nearest) and rebased. Signed codes take x's sign; an unsigned code of a nonzero a is >= 1.
template <bool Signed>
FO_HD FO_INLINE int32_t quantise_code_i32(float x, float scale) {  // the code as an int32
  constexpr int emin = Signed ? kEminSigned : kEminUnsigned;
  const uint32_t X = f2u(x);
  float a = u2f(X & 0x7FFFFFFFu) / scale;
  a = a <= 1.0f ? a : 0.0f;  // total even for a NaN x (not possible in a finite block)
  const float scaled = a * (Signed ? 0x1p17f : 0x1p33f);  // 2^(3 - emin), exact
  const int32_t k = int32_t(f2u(scaled + 0x1p23f) - 0x4B000000u);  // used only when < 8
  const uint32_t A = f2u(a);
  const int32_t R = int32_t((A + ((1u << (22 - kMapMant)) - 1u) + ((A >> (23 - kMapMant)) & 1u)) >>
                            (23 - kMapMant)) - ((127 + emin - 1) << kMapMant);
  const int32_t m = a < (Signed ? 0x1p-14f : 0x1p-30f) ? k : R;
  if (Signed) return (X >> 31) ? -m : m;
  return m > int32_t(a > 0.0f) ? m : int32_t(a > 0.0f);  // m >= 0: max(m, a > 0)
}
template <bool Signed>
FO_HD FO_INLINE uint8_t quantise_code(float x, float scale) {
  return uint8_t(quantise_code_i32<Signed>(x, scale));
}

// Block absmax on the bits: for non-negative floats, integer order is float order, and a NaN's
// |bits| exceed inf's, so the integer max of |x|'s bits is max |x|, or a NaN if the block holds
// one -- written canonical, 0x7FC00000 (which NaN is not specified; NumPy's max picks one of
// the block's NaNs depending on its reduction order).
FO_HD FO_INLINE uint32_t abs_bits(float x) { return f2u(x) & 0x7FFFFFFFu; }
FO_HD FO_INLINE float absmax_from_bits(uint32_t mx) {
  return u2f(mx > 0x7F800000u ? 0x7FC00000u : mx);
}
FO_HD FO_INLINE bool absmax_usable(float s) {  // finite and > 0: the block is quantised
  const uint32_t b = f2u(s);
  return b != 0 && b < 0x7F800000u;  // absmax is never negative (abs bits)
}

}  // namespace fastopt
