// The fused AVX2 loop of the compact kernels (csrc/cpu/compact.cpp) for the all-bfloat16
// layout: a bf16 param (bare, or + its int16 remainder), a bf16 grad and bf16 states. Each
// element is loaded, widened, updated by the rule, rounded and stored in one loop of 16
// elements per iteration, written with intrinsics.
//
// Why by hand: the tile loops of compact.cpp make one pass per conversion through L1 buffers,
// so a bf16 step costs the float32 rule's loop plus every conversion loop. GCC's own
// vectorisation of a fused loop (tried) picks 16-bit lanes, spills, and is slower still. Here
// widening is an interleave with zeros (or with the remainder's 16 bits), which puts elements
// 0-3 and 8-11 in one vector and 4-7, 12-15 in the other; packing the two back (packus works per
// 128-bit lane) restores the order, so no permutes are needed. Measured on the project machine
// (Zen 3, one thread, in cache): remainder + bf16 state 1.21 -> 1.01 ns/element, stochastic
// rounding + bf16 state 1.55 -> 1.26.
//
// Same bits: the rule is R::apply itself, instantiated on V8 (operators that are single
// correctly rounded instructions, no contraction: -ffp-contract=off), and every conversion is
// the integer formula of compact_math.h on 8 lanes. An iteration whose results hold a NaN
// rewrites its 16 elements with the scalar full forms (canonical NaNs); a tail of < 16
// elements runs the scalar element.
#pragma once
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include <type_traits>

#include "common/compact_math.h"
#include "common/optim_math.h"
#include "cpu_common.h"

namespace fastopt {
namespace avx2 {

#define FO_V8 FO_TARGET_AVX2_F16C inline __attribute__((always_inline))
// The operators are not always_inline: the rules' always-inline helpers (effective_grad, of the
// default target) call them, and GCC refuses to force AVX2 code into a default-target body.
// They are inlined once the rule sits in the loop, whose caller is `flatten`.
#define FO_V8_OP FO_TARGET_AVX2_F16C inline

// Eight float32 lanes, with the operators R::apply uses.
struct V8 {
  __m256 v;
  V8() = default;  // trivial: OptimCoef<V8> is filled by broadcast() below
  FO_V8 V8(__m256 x) : v(x) {}
  FO_V8 explicit V8(float x) : v(_mm256_set1_ps(x)) {}
};
FO_V8_OP V8 operator+(V8 a, V8 b) { return _mm256_add_ps(a.v, b.v); }
FO_V8_OP V8 operator-(V8 a, V8 b) { return _mm256_sub_ps(a.v, b.v); }
FO_V8_OP V8 operator*(V8 a, V8 b) { return _mm256_mul_ps(a.v, b.v); }
FO_V8_OP V8 operator/(V8 a, V8 b) { return _mm256_div_ps(a.v, b.v); }
FO_V8_OP V8 fo_sqrt(V8 a) { return _mm256_sqrt_ps(a.v); }

// The rules whose apply is plain arithmetic (Lion's sign is a select: it keeps the tile loops).
template <class R>
constexpr bool kFusable = !std::is_same_v<R, Lion>;

FO_V8 OptimCoef<V8> broadcast(const OptimCoef<float>& k) {
  OptimCoef<V8> c;
  c.lr = V8(k.lr); c.wd = V8(k.wd); c.gscale = V8(k.gscale); c.momentum = V8(k.momentum);
  c.rho = V8(k.rho); c.omrho = V8(k.omrho); c.beta1 = V8(k.beta1); c.omb1 = V8(k.omb1);
  c.beta2 = V8(k.beta2); c.omb2 = V8(k.omb2); c.eps = V8(k.eps); c.alpha = V8(k.alpha);
  c.c = V8(k.c); c.decay = V8(k.decay); c.nm = V8(k.nm); c.ng = V8(k.ng);
  c.eps_out = V8(k.eps_out); c.lr_out = V8(k.lr_out);
  return c;
}

// -- lane conversions: compact_math.h's formulas on 8 lanes ---------------------------------------

FO_V8 __m256i bits(V8 x) { return _mm256_castps_si256(x.v); }
FO_V8 __m256i load16(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
// 16 bf16 -> elements 0-3, 8-11 (lo) and 4-7, 12-15 (hi) as float32
FO_V8 V8 lo_widen(__m256i x) {
  return _mm256_castsi256_ps(_mm256_unpacklo_epi16(_mm256_setzero_si256(), x));
}
FO_V8 V8 hi_widen(__m256i x) {
  return _mm256_castsi256_ps(_mm256_unpackhi_epi16(_mm256_setzero_si256(), x));
}
// remainder_join on 32-bit lanes (rem | hi << 16): subtract the carry (rem's top bit) from hi
FO_V8 V8 join(__m256i x) {
  return _mm256_castsi256_ps(
      _mm256_sub_epi32(x, _mm256_slli_epi32(_mm256_and_si256(x, _mm256_set1_epi32(0x8000)), 1)));
}
// the two halves' 16-bit results (each lane <= 0xFFFF), back in element order
FO_V8 void pack_store(void* p, __m256i lo, __m256i hi) {
  _mm256_storeu_si256(static_cast<__m256i*>(p), _mm256_packus_epi32(lo, hi));
}
// bf16_nearest_bits: (M + 0x7FFF + ((M >> 16) & 1)) >> 16
FO_V8 __m256i bf16_nearest8(V8 x) {
  const __m256i M = bits(x);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(M, 16), _mm256_set1_epi32(1));
  return _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(M, _mm256_set1_epi32(0x7FFF)), odd),
                           16);
}
// bf16_stochastic_bits: (M + (r & 0xFFFF)) >> 16
FO_V8 __m256i bf16_stochastic8(V8 x, __m256i r) {
  return _mm256_srli_epi32(
      _mm256_add_epi32(bits(x), _mm256_and_si256(r, _mm256_set1_epi32(0xFFFF))), 16);
}
// the stream's words mix32((lo + i) ^ key) of elements i0 + {0-3, 8-11} (Half 0) or
// i0 + {4-7, 12-15} (Half 1)
template <int Half>
FO_V8 __m256i words(uint32_t lo, int i0, uint32_t key) {
  const __m256i idx = Half == 0 ? _mm256_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11)
                                : _mm256_setr_epi32(4, 5, 6, 7, 12, 13, 14, 15);
  __m256i x = _mm256_add_epi32(_mm256_set1_epi32(int(lo + uint32_t(i0))), idx);
  x = _mm256_xor_si256(x, _mm256_set1_epi32(int(key)));
  x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
  x = _mm256_mullo_epi32(x, _mm256_set1_epi32(int(0x7FEB352Du)));
  x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
  x = _mm256_mullo_epi32(x, _mm256_set1_epi32(int(0x846CA68Bu)));
  return _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
}
template <bool SR>
FO_V8 void bf16_store(uint16_t* p, V8 lo, V8 hi, uint32_t tlo, int i, uint32_t key) {
  if constexpr (SR)
    pack_store(p, bf16_stochastic8(lo, words<0>(tlo, i, key)),
               bf16_stochastic8(hi, words<1>(tlo, i, key)));
  else
    pack_store(p, bf16_nearest8(lo), bf16_nearest8(hi));
}
FO_V8 __m256i unord(V8 a, V8 b) {  // a lane of either is NaN
  return _mm256_castps_si256(_mm256_cmp_ps(a.v, b.v, _CMP_UNORD_Q));
}

// -- the loop ------------------------------------------------------------------------------------

// One tile's arrays, offset to its first element; `lo` is the low 32 bits of that element's
// index (the stream's counter), key[0] the param's stream key, key[1 + j] state j's.
struct Tile {
  uint16_t* ph;  // the bf16 param
  int16_t* rm;   // its remainder, or null
  const uint16_t* g;
  uint16_t* s[2];
  uint32_t lo;
  uint32_t key[3];
};

// Element i through the scalar full forms (tails, and iterations whose results hold a NaN).
template <class R, bool Rem, bool SR>
FO_INLINE void element(const Tile& t, int i, float p, float u[2]) {
  const uint32_t c = t.lo + uint32_t(i);
  if constexpr (Rem)
    remainder_split(p, t.ph[i], t.rm[i]);
  else
    t.ph[i] = SR ? bf16_stochastic(p, mix32(c ^ t.key[0])) : bf16_nearest(p);
  for (int j = 0; j < R::kStates; ++j)
    t.s[j][i] = SR ? bf16_stochastic(u[j], mix32(c ^ t.key[1 + j])) : bf16_nearest(u[j]);
}

// The rule over a tile's n elements: bf16 param (+ remainder when Rem), bf16 grad and states,
// stochastic rounding of the bare param and the states when SR.
template <class R, bool Rem, bool SR>
FO_TARGET_AVX2_F16C inline __attribute__((always_inline)) void bf16_tile(
    const Tile& t, int n, const OptimCoef<float>& k, const OptimCoef<V8>& kv) {
  constexpr int S = R::kStates;
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i H = load16(t.ph + i);
    V8 p0, p1;
    if constexpr (Rem) {
      const __m256i Rr = load16(t.rm + i);
      p0 = join(_mm256_unpacklo_epi16(Rr, H));
      p1 = join(_mm256_unpackhi_epi16(Rr, H));
    } else {
      p0 = lo_widen(H);
      p1 = hi_widen(H);
    }
    const __m256i G = load16(t.g + i);
    const V8 g0 = lo_widen(G), g1 = hi_widen(G);
    V8 a0(0.0f), a1(0.0f), b0(0.0f), b1(0.0f);
    if constexpr (S >= 1) {
      const __m256i A = load16(t.s[0] + i);
      a0 = lo_widen(A);
      a1 = hi_widen(A);
    }
    if constexpr (S >= 2) {
      const __m256i B = load16(t.s[1] + i);
      b0 = lo_widen(B);
      b1 = hi_widen(B);
    }
    R::apply(p0, g0, a0, b0, kv);
    R::apply(p1, g1, a1, b1, kv);

    if constexpr (Rem) {  // remainder_split: hi = (M + 0x8000) >> 16, rem = M's low 16 bits
      const __m256i M0 = bits(p0), M1 = bits(p1), half = _mm256_set1_epi32(0x8000),
                    low = _mm256_set1_epi32(0xFFFF);
      pack_store(t.ph + i, _mm256_srli_epi32(_mm256_add_epi32(M0, half), 16),
                 _mm256_srli_epi32(_mm256_add_epi32(M1, half), 16));
      pack_store(t.rm + i, _mm256_and_si256(M0, low), _mm256_and_si256(M1, low));
    } else {
      bf16_store<SR>(t.ph + i, p0, p1, t.lo, i, t.key[0]);
    }
    if constexpr (S >= 1) bf16_store<SR>(t.s[0] + i, a0, a1, t.lo, i, t.key[1]);
    if constexpr (S >= 2) bf16_store<SR>(t.s[1] + i, b0, b1, t.lo, i, t.key[2]);

    __m256i nan = unord(p0, p1);
    if constexpr (S >= 1) nan = _mm256_or_si256(nan, unord(a0, a1));
    if constexpr (S >= 2) nan = _mm256_or_si256(nan, unord(b0, b1));
    if (__builtin_expect(!_mm256_testz_si256(nan, nan), 0)) {
      alignas(32) float pv[16], av[16], bv[16];
      _mm256_store_ps(pv, p0.v); _mm256_store_ps(pv + 8, p1.v);
      _mm256_store_ps(av, a0.v); _mm256_store_ps(av + 8, a1.v);
      _mm256_store_ps(bv, b0.v); _mm256_store_ps(bv + 8, b1.v);
      static constexpr int kElem[16] = {0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15};
      for (int q = 0; q < 16; ++q) {
        float u[2] = {av[q], bv[q]};
        element<R, Rem, SR>(t, i + kElem[q], pv[q], u);
      }
    }
  }
  for (; i < n; ++i) {
    float p = Rem ? remainder_join(t.ph[i], t.rm[i]) : bf16_widen(t.ph[i]);
    float u[2] = {0, 0};
    for (int j = 0; j < S; ++j) u[j] = bf16_widen(t.s[j][i]);
    R::apply(p, bf16_widen(t.g[i]), u[0], u[1], k);
    element<R, Rem, SR>(t, i, p, u);
  }
}

#undef FO_V8
#undef FO_V8_OP

}  // namespace avx2
}  // namespace fastopt
#endif
