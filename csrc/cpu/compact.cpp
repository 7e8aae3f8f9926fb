// Compact-precision optimizer updates on the CPU (SPEC §2a; fastopt/_precision.py is the
// reference, reproduced bit for bit): 16-bit params with an optional float32 master or int16
// remainder, float32 / bfloat16 / 8-bit state, stochastic rounding -- one fused pass, one call
// for all arrays, the GIL released.
//
// Each chunk of the table (32768 elements, aligned to its array's start) is walked in tiles of
// 256 elements, one 8-bit quantisation block: the tile's param, grad and states are widened to
// float32 stack buffers (float32 arrays are used in place), the rule's element math
// (optim_math.h, A = float, as for float32 params) runs over them as one SIMD loop, and the
// results are rounded back to each array's storage. The storages are switched on per tile at
// run time; only the rule and the instruction set are template parameters. Each conversion is
// its own small loop, written so that GCC vectorises it (checked with -fopt-info-vec).
//
// The all-bfloat16 layout (bf16 param bare or with its remainder, bf16 grad and states) has a
// fused AVX2 loop instead (compact_avx2.h), on the AVX2 and AVX-512 paths: one pass, no tile
// buffers. It gives the tile loops' bits (tests/test_precision_kernels.py runs every path).
#include <algorithm>
#include <cstring>

#include "common/compact_math.h"
#include "common/optim_math.h"
#include "compact_avx2.h"
#include "cpu_common.h"
#include "update_loop.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FO_X86 1
#else
#define FO_X86 0
#endif

namespace fastopt {
namespace {

static_assert(kCpuChunk % kQBlock == 0, "a quantisation block must never straddle two chunks");
static_assert((int64_t(1) << 32) % kCpuChunk == 0, "a chunk never crosses a 2^32 boundary, so "
              "one stream key (it holds the index's high 32 bits) serves a whole chunk");

// The storage of one array as the adapter (fastopt/_cpp.py) declares it: 16-bit arrays come as
// uint16 views (pybind11 knows no bfloat16), so the kind is what tells bf16 from fp16.
enum Kind : int { kF32 = 0, kBF16 = 1, kF16 = 2, kI16 = 3, kI8 = 4, kU8 = 5, kNoArray = 6 };
const char* const kKindName[] = {"float32", "bfloat16", "float16", "int16 (remainder)",
                                 "int8 (signed codes)", "uint8 (unsigned codes)", "no array"};
constexpr int kItemsize[] = {4, 2, 2, 2, 1, 1, 0};

// One param's buffers as the kernel sees them (checked by Boundary below).
struct Item {
  void* p;
  const void* g;
  void* m;               // master (kF32) or remainder (kI16), else null
  void* s[2];
  float* am[2];          // block absmax of 8-bit state buffers
  int pk, gk, mk, sk[2];
  uint32_t id;           // low 32 bits of the stream's array id
};
struct Stream {
  bool on;
  uint64_t seed, step;
};

// -- the tile loops (always inline: compiled once per instruction set) ----------------------------

// float16 <-> float32 over a tile. F16C is called per tile (not inlined into the generic
// loops: GCC inlines target-specific code only into functions of that target). Its conversion
// with the nearest-even immediate is IEEE-exact (subnormals, overflow to inf), as is
// f16_nearest; only its NaNs keep their payload, and the reference's are canonical.
#if FO_X86
FO_TARGET_AVX2_F16C void widen_f16_f16c(float* __restrict d, const uint16_t* __restrict s, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128(
                                reinterpret_cast<const __m128i*>(s + i))));
  for (; i < n; ++i) d[i] = f16_widen(s[i]);
}
FO_TARGET_AVX2_F16C void narrow_f16_f16c(uint16_t* __restrict d, const float* __restrict x, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    if (!_mm256_testz_ps(nan, nan))
      for (int q = i; q < i + 8; ++q) d[q] = f16_nearest(x[q]);
  }
  for (; i < n; ++i) d[i] = f16_nearest(x[i]);
}
#endif

template <int Isa>
FO_INLINE void widen_f16(float* __restrict d, const uint16_t* __restrict s, int n) {
#if FO_X86
  if constexpr (Isa >= kSimdAvx2) return widen_f16_f16c(d, s, n);
#endif
  for (int i = 0; i < n; ++i) d[i] = f16_widen(s[i]);
}
template <int Isa>
FO_INLINE void narrow_f16(uint16_t* __restrict d, const float* __restrict x, int n) {
#if FO_X86
  if constexpr (Isa >= kSimdAvx2) return narrow_f16_f16c(d, x, n);
#endif
  for (int i = 0; i < n; ++i) d[i] = f16_nearest(x[i]);
}

FO_INLINE uint32_t word(uint32_t lo, int i, uint32_t key) {
  return mix32((lo + uint32_t(i)) ^ key);
}

// x -> float32, bfloat16 or float16 storage `dst` at t; 16-bit stochastically when `sr`, with
// element i's word mix32(uint32(t + i) ^ key) (a chunk never crosses 2^32: no carry to hi).
template <int Isa>
FO_INLINE void store_float(void* dst, int kind, const float* __restrict x, float* __restrict tmp,
                           int64_t t, int n, bool sr, uint32_t key) {
  const uint32_t lo = uint32_t(t);
  if (kind == kF32) {
    std::memcpy(static_cast<float*>(dst) + t, x, size_t(n) * 4);
  } else if (kind == kBF16) {
    // NaN-free fast loops (a NaN's fix-up is a second pass, only over a tile that holds one)
    uint16_t* __restrict d = static_cast<uint16_t*>(dst) + t;
    int nan = 0;
    if (sr) {
      for (int i = 0; i < n; ++i) {
        d[i] = uint16_t(bf16_stochastic_bits(f2u(x[i]), word(lo, i, key)));
        nan |= x[i] != x[i];
      }
      if (nan)
        for (int i = 0; i < n; ++i) d[i] = bf16_stochastic(x[i], word(lo, i, key));
    } else {
      for (int i = 0; i < n; ++i) {
        d[i] = uint16_t(bf16_nearest_bits(f2u(x[i])));
        nan |= x[i] != x[i];
      }
      if (nan)
        for (int i = 0; i < n; ++i) d[i] = bf16_nearest(x[i]);
    }
  } else {  // kF16: the stochastic value is a float16 (or beyond range), then rounded exactly
    if (sr) {
      for (int i = 0; i < n; ++i) {  // computed for every x (inf, NaN: q = 0), then chosen
        const float y = f16_stochastic_value(x[i], word(lo, i, key));
        tmp[i] = abs_i(f2u(x[i])) < 0x7F800000 ? y : x[i];
      }
      x = tmp;
    }
    narrow_f16<Isa>(static_cast<uint16_t*>(dst) + t, x, n);
  }
}

template <int Isa>
FO_INLINE void load_float(float* __restrict d, const void* src, int kind, int64_t t, int n) {
  if (kind == kF32) {
    std::memcpy(d, static_cast<const float*>(src) + t, size_t(n) * 4);
  } else if (kind == kBF16) {
    const uint16_t* __restrict s = static_cast<const uint16_t*>(src) + t;
    for (int i = 0; i < n; ++i) d[i] = bf16_widen(s[i]);
  } else {
    widen_f16<Isa>(d, static_cast<const uint16_t*>(src) + t, n);
  }
}

template <bool Signed>
FO_INLINE void decode_block(float* __restrict d, const uint8_t* __restrict c, float scale, int n) {
  for (int i = 0; i < n; ++i) d[i] = code_value<Signed>(c[i]) * scale;
}

// One block: its absmax (max of |x|'s bits: vectorises as an integer max), then the codes, or
// all 0 when the absmax is 0 or not finite.
template <bool Signed>
FO_INLINE void quantise_block(uint8_t* __restrict c, float* am, const float* __restrict x, int n) {
  uint32_t mx = 0;
  for (int i = 0; i < n; ++i) mx = std::max(mx, abs_bits(x[i]));
  const float s = absmax_from_bits(mx);
  *am = s;
  if (!absmax_usable(s)) {
    std::memset(c, 0, size_t(n));
    return;
  }
  // int32 codes first, narrowed in a second loop: GCC otherwise narrows every intermediate
  // select to bytes on its own (many packs; twice the instructions)
  alignas(64) int32_t code[kQBlock];
  for (int i = 0; i < n; ++i) code[i] = quantise_code_i32<Signed>(x[i], s);
  for (int i = 0; i < n; ++i) c[i] = uint8_t(code[i]);
}

#if FO_X86
// Elements [b, e) of one array in the all-bfloat16 layout, on the fused AVX2 loop
// (compact_avx2.h). `flatten` inlines the rule's V8 operators into the loop.
template <class R, bool Rem, bool SR>
FO_TARGET_AVX2_F16C __attribute__((flatten)) void bf16_chunk(const Item& it, int64_t b, int64_t e,
                                                             const OptimCoef<float>& k,
                                                             const Stream& sr) {
  const OptimCoef<avx2::V8> kv = avx2::broadcast(k);
  avx2::Tile tl{};
  if (SR)
    for (int L = 0; L <= R::kStates; ++L)
      tl.key[L] = stream_key(sr.seed, sr.step, it.id, uint32_t(L), uint32_t(uint64_t(b) >> 32));
  for (int64_t t = b; t < e; t += kQBlock) {
    tl.ph = static_cast<uint16_t*>(it.p) + t;
    tl.rm = Rem ? static_cast<int16_t*>(it.m) + t : nullptr;
    tl.g = static_cast<const uint16_t*>(it.g) + t;
    for (int j = 0; j < R::kStates; ++j) tl.s[j] = static_cast<uint16_t*>(it.s[j]) + t;
    tl.lo = uint32_t(t);
    avx2::bf16_tile<R, Rem, SR>(tl, int(std::min<int64_t>(kQBlock, e - t)), k, kv);
  }
}

// The fused loop when the array's storages are all bfloat16 (param with no master or with its
// remainder, grad, states); false: the tile loops run instead.
template <class R>
bool try_fused(const Item& it, int64_t b, int64_t e, const OptimCoef<float>& k, const Stream& sr) {
  if (it.pk != kBF16 || it.gk != kBF16 || (it.mk != kNoArray && it.mk != kI16)) return false;
  for (int j = 0; j < R::kStates; ++j)
    if (it.sk[j] != kBF16) return false;
  const bool rem = it.mk == kI16;
  if (rem)
    sr.on ? bf16_chunk<R, true, true>(it, b, e, k, sr) : bf16_chunk<R, true, false>(it, b, e, k, sr);
  else
    sr.on ? bf16_chunk<R, false, true>(it, b, e, k, sr) : bf16_chunk<R, false, false>(it, b, e, k, sr);
  return true;
}
#endif

// Elements [b, e) of one array (within one chunk).
template <class R, int Isa>
FO_INLINE void compact_chunk(const Item& it, int64_t b, int64_t e, const OptimCoef<float>& k,
                             const Stream& sr) {
#if FO_X86
  if constexpr (Isa >= kSimdAvx2 && avx2::kFusable<R>)
    if (try_fused<R>(it, b, e, k, sr)) return;
#endif
  constexpr int S = R::kStates;
  uint32_t key[1 + 2] = {0, 0, 0};  // lane 0: the param; 1 + j: state buffer j
  if (sr.on)
    for (int L = 0; L <= S; ++L)
      key[L] = stream_key(sr.seed, sr.step, it.id, uint32_t(L), uint32_t(uint64_t(b) >> 32));
  alignas(64) float xb[kQBlock], gb[kQBlock], sb[2][kQBlock], tmp[kQBlock];
  // float32 buffers are worked on in place (no copies); the others through the tile buffers
  auto at = [](void* base, int64_t t) { return static_cast<float*>(base) + t; };
  const bool x_in_place = it.mk == kF32 || (it.mk == kNoArray && it.pk == kF32);
  for (int64_t t = b; t < e; t += kQBlock) {
    const int n = int(std::min<int64_t>(kQBlock, e - t));
    const int64_t blk = t / kQBlock;
    // load: the param from its master, its bf16 + remainder, or itself
    float* x = x_in_place ? at(it.mk == kF32 ? it.m : it.p, t) : xb;
    if (it.mk == kI16) {
      const uint16_t* __restrict hi = static_cast<const uint16_t*>(it.p) + t;
      const int16_t* __restrict rem = static_cast<const int16_t*>(it.m) + t;
      for (int i = 0; i < n; ++i) xb[i] = remainder_join(hi[i], rem[i]);
    } else if (!x_in_place) {
      load_float<Isa>(xb, it.p, it.pk, t, n);
    }
    const float* g = it.gk == kF32 ? static_cast<const float*>(it.g) + t : gb;
    if (it.gk != kF32) load_float<Isa>(gb, it.g, it.gk, t, n);
    float* s[2] = {sb[0], sb[1]};
    for (int j = 0; j < S; ++j) {
      const int kind = it.sk[j];
      if (kind == kF32)
        s[j] = at(it.s[j], t);
      else if (kind == kI8)
        decode_block<true>(sb[j], static_cast<const uint8_t*>(it.s[j]) + t, it.am[j][blk], n);
      else if (kind == kU8)
        decode_block<false>(sb[j], static_cast<const uint8_t*>(it.s[j]) + t, it.am[j][blk], n);
      else
        load_float<Isa>(sb[j], it.s[j], kind, t, n);
    }

    update_loop<R, float, int>(x, g, s[0], s[1], n, k);  // the tile, in L1

    // store: only a 16-bit param without master rounds stochastically; a master (written in
    // place) gives the param rounded to nearest; a remainder pair is split from the result
    if (it.mk == kI16) {
      uint16_t* __restrict hi = static_cast<uint16_t*>(it.p) + t;
      int16_t* __restrict rem = static_cast<int16_t*>(it.m) + t;
      int nan = 0;
      for (int i = 0; i < n; ++i) {  // NaN-free, then the fix-up as for bf16 above
        hi[i] = uint16_t(remainder_hi_bits(f2u(xb[i])));
        rem[i] = int16_t(uint16_t(f2u(xb[i])));
        nan |= xb[i] != xb[i];
      }
      if (nan)
        for (int i = 0; i < n; ++i) remainder_split(xb[i], hi[i], rem[i]);
    } else if (!(it.mk == kNoArray && it.pk == kF32)) {
      store_float<Isa>(it.p, it.pk, x, tmp, t, n, sr.on && it.mk == kNoArray, key[0]);
    }
    for (int j = 0; j < S; ++j) {
      const int kind = it.sk[j];
      if (kind == kI8)
        quantise_block<true>(static_cast<uint8_t*>(it.s[j]) + t, it.am[j] + blk, sb[j], n);
      else if (kind == kU8)
        quantise_block<false>(static_cast<uint8_t*>(it.s[j]) + t, it.am[j] + blk, sb[j], n);
      else if (kind == kBF16)
        store_float<Isa>(it.s[j], kind, sb[j], tmp, t, n, sr.on, key[1 + j]);
    }
  }
}

using ChunkFn = void (*)(const Item&, int64_t, int64_t, const OptimCoef<float>&, const Stream&);

template <class R>
void chunk_base(const Item& it, int64_t b, int64_t e, const OptimCoef<float>& k, const Stream& sr) {
  compact_chunk<R, kSimdBaseline>(it, b, e, k, sr);
}
template <class R>
FO_TARGET_AVX2_F16C void chunk_avx2(const Item& it, int64_t b, int64_t e,
                                    const OptimCoef<float>& k, const Stream& sr) {
  compact_chunk<R, kSimdAvx2>(it, b, e, k, sr);
}
// The AVX-512 build of the same loops (the float16 conversions stay 256-bit F16C: AVX512VL).
template <class R>
FO_TARGET_AVX512 void chunk_avx512(const Item& it, int64_t b, int64_t e,
                                   const OptimCoef<float>& k, const Stream& sr) {
  compact_chunk<R, kSimdAvx512>(it, b, e, k, sr);
}

// -- the native boundary --------------------------------------------------------------------------

// Takes and checks every array of the call (the last line of defence: Python validated
// already, but nothing here trusts it): an ndarray whose dtype is the declared kind's,
// C-contiguous, writable when written, of the expected size; holds it for the call and records
// its bytes for check_disjoint.
class Boundary {
 public:
  std::vector<Span> spans;

  void* take(py::handle obj, const std::string& name, int kind, bool written, int64_t n) {
    if (!py::isinstance<py::array>(obj)) throw py::type_error(name + " is not an ndarray");
    auto a = py::reinterpret_borrow<py::array>(obj);
    if (!fits(a.dtype(), kind))
      throw py::type_error(name + " has dtype " + std::string(py::str(a.dtype())) +
                           ", not one that holds " + kKindName[kind]);
    if (!(a.flags() & py::array::c_style)) throw py::value_error(name + " is not C-contiguous");
    if (written && !a.writeable()) throw py::value_error(name + " is read-only");
    if (int64_t(a.size()) != n)
      throw py::value_error(name + " has " + std::to_string(a.size()) + " elements, not " +
                            std::to_string(n));
    void* ptr = const_cast<void*>(a.data());
    if (n > 0)
      spans.push_back({uintptr_t(ptr), uintptr_t(ptr) + uintptr_t(n) * kItemsize[kind], written});
    held_.push_back(std::move(a));
    return ptr;
  }

 private:
  std::vector<py::array> held_;
  const py::dtype f32_ = py::dtype::of<float>(), u16_ = py::dtype::of<uint16_t>(),
                  i16_ = py::dtype::of<int16_t>(), i8_ = py::dtype::of<int8_t>(),
                  u8_ = py::dtype::of<uint8_t>(), f16_ = py::dtype("float16");

  bool fits(const py::dtype& dt, int kind) const {
    switch (kind) {
      case kF32: return dt.equal(f32_);
      case kBF16:  // the uint16 view, or ml_dtypes' bfloat16 itself
        return dt.equal(u16_) || (dt.itemsize() == 2 && dt.kind() == 'V' &&
                                  std::string(py::str(dt.attr("name"))) == "bfloat16");
      case kF16: return dt.equal(u16_) || dt.equal(f16_);
      case kI16: return dt.equal(i16_) || dt.equal(u16_);  // the remainder's 16 bits
      case kI8: return dt.equal(i8_);
      case kU8: return dt.equal(u8_);
      default: return false;
    }
  }
};

py::list as_list(const py::handle& obj, const std::string& name, size_t n) {
  if (!py::isinstance<py::list>(obj)) throw py::type_error(name + " must be a list");
  auto l = py::reinterpret_borrow<py::list>(obj);
  if (l.size() != n)
    throw py::value_error(name + " has " + std::to_string(l.size()) + " entries, not " +
                          std::to_string(n));
  return l;
}

int check_kind(int kind, std::initializer_list<int> allowed, const std::string& name) {
  for (int a : allowed)
    if (kind == a) return kind;
  throw py::value_error(name + ": storage kind " + std::to_string(kind) + " is not allowed here");
}

// sr: None, or (seed, step, ids) -- seed and step ints in [0, 2^64), ids one int >= 0 per param
// (the stream keys with its low 32 bits, as the reference's mix32 of the word does).
struct SrArgs {
  bool on = false;
  uint64_t seed = 0, step = 0;
  std::vector<uint32_t> ids;
};

uint64_t u64_arg(const py::handle& h, const char* name) {
  if (!PyLong_Check(h.ptr())) throw py::type_error(std::string(name) + " must be an int");
  const unsigned long long v = PyLong_AsUnsignedLongLong(h.ptr());
  if (v == (unsigned long long)-1 && PyErr_Occurred()) {
    PyErr_Clear();
    throw py::value_error(std::string(name) + " must be in [0, 2^64)");
  }
  return uint64_t(v);
}

SrArgs parse_sr(const py::object& sr, size_t np) {
  SrArgs out;
  if (sr.is_none()) return out;
  if (!py::isinstance<py::tuple>(sr) || py::len(sr) != 3)
    throw py::type_error("sr must be None or a tuple (seed, step, ids)");
  const auto t = py::reinterpret_borrow<py::tuple>(sr);
  out.on = true;
  out.seed = u64_arg(t[0], "sr's seed");
  out.step = u64_arg(t[1], "sr's step");
  if (!py::isinstance<py::sequence>(t[2])) throw py::type_error("sr's ids must be a sequence");
  const auto ids = py::reinterpret_borrow<py::sequence>(t[2]);
  if (ids.size() != np) throw py::value_error("sr's ids need one entry per param");
  out.ids.reserve(np);
  for (size_t i = 0; i < np; ++i) {
    py::object id = ids[i];
    if (!PyIndex_Check(id.ptr())) throw py::type_error("sr's ids must be ints");
    id = py::reinterpret_steal<py::object>(PyNumber_Index(id.ptr()));
    if (!id) throw py::error_already_set();
    out.ids.push_back(uint32_t(u64_arg(id, "an id of sr")));  // the low 32 bits
  }
  return out;
}

template <class R>
void run(const py::list& params, const std::vector<int>& param_kinds, const py::list& grads,
         const std::vector<int>& grad_kinds, const py::list& masters,
         const std::vector<int>& master_kinds, const py::list& states,
         const std::vector<std::vector<int>>& state_kinds, const py::list& absmax,
         const std::vector<double>& scalars, const py::object& sr_obj) {
  constexpr int S = R::kStates;
  if (scalars.size() != kNumOptimScalars) throw py::value_error("wrong number of scalars");
  const size_t np = params.size();
  if (np >= size_t(INT32_MAX))  // Chunk::array is 32-bit
    throw py::value_error("params holds too many arrays");
  auto item = [](const char* name, size_t i) { return item_name(name, i); };
  if (param_kinds.size() != np || grad_kinds.size() != np)
    throw py::value_error("param_kinds and grad_kinds need one entry per param");
  as_list(grads, "grads", np);
  if (masters.size() != 0 && masters.size() != np)
    throw py::value_error("masters must be empty or hold one entry per param");
  if (master_kinds.size() != masters.size())
    throw py::value_error("master_kinds needs one entry per master");
  as_list(states, "states", S);
  if (state_kinds.size() != size_t(S))
    throw py::value_error("state_kinds needs one list per state");
  if (absmax.size() != 0 && absmax.size() != size_t(S))
    throw py::value_error("absmax must be empty or hold one list per state");
  const SrArgs sr = parse_sr(sr_obj, np);

  Boundary B;
  std::vector<Item> items(np);
  std::vector<int64_t> sizes(np);
  for (size_t i = 0; i < np; ++i) {
    Item& it = items[i];
    const auto pname = item("params", i);
    py::handle p = PyList_GET_ITEM(params.ptr(), py::ssize_t(i));
    if (!py::isinstance<py::array>(p)) throw py::type_error(pname + " is not an ndarray");
    const int64_t n = int64_t(py::reinterpret_borrow<py::array>(p).size());
    sizes[i] = n;
    it.pk = check_kind(param_kinds[i], {kF32, kBF16, kF16}, pname);
    it.p = B.take(p, pname, it.pk, true, n);
    it.gk = check_kind(grad_kinds[i], {kF32, kBF16, kF16}, item("grads", i));
    it.g = B.take(grads[i], item("grads", i), it.gk, false, n);
    it.mk = masters.size() ? master_kinds[i] : int(kNoArray);
    it.m = nullptr;
    if (masters.size()) {
      const auto mname = item("masters", i);
      check_kind(it.mk, {kNoArray, kF32, kI16}, mname);
      if (it.mk == kNoArray) {
        if (!masters[i].is_none())
          throw py::type_error(mname + " is declared absent but is not None");
      } else {
        if (it.mk == kI16 && it.pk != kBF16)
          throw py::value_error(mname + " is a remainder but " + pname + " is not bfloat16");
        it.m = B.take(masters[i], mname, it.mk, true, n);
      }
    }
    for (int j = 0; j < 2; ++j) it.s[j] = nullptr, it.am[j] = nullptr, it.sk[j] = kF32;
    it.id = sr.on ? sr.ids[i] : 0;
  }
  for (int j = 0; j < S; ++j) {
    const std::string sname = "states[" + std::to_string(j) + "]";
    const std::string aname = "absmax[" + std::to_string(j) + "]";
    const auto st = as_list(states[j], sname, np);
    if (state_kinds[j].size() != np)
      throw py::value_error("state_kinds[" + std::to_string(j) + "] needs one entry per param");
    py::list ab;  // absmax[j], taken at its first 8-bit buffer (others ignore absmax)
    for (size_t i = 0; i < np; ++i) {
      Item& it = items[i];
      const auto name = item(sname.c_str(), i);
      it.sk[j] = check_kind(state_kinds[j][i], {kF32, kBF16, kI8, kU8}, name);
      it.s[j] = B.take(st[i], name, it.sk[j], true, sizes[i]);
      if (it.sk[j] == kI8 || it.sk[j] == kU8) {
        if (absmax.size() == 0)
          throw py::value_error(name + " holds 8-bit codes but absmax is empty");
        if (ab.size() != np) ab = as_list(absmax[j], aname, np);
        it.am[j] = static_cast<float*>(B.take(ab[i], item(aname.c_str(), i), kF32, true,
                                              (sizes[i] + kQBlock - 1) / kQBlock));
      }
    }
  }
  check_disjoint(B.spans);

  const auto k = OptimCoef<float>::make(scalars.data());
  const Stream stream{sr.on, sr.seed, sr.step};
  const ChunkFn fn = cpu_has_avx512() ? &chunk_avx512<R>
                     : cpu_has_avx2() ? &chunk_avx2<R> : &chunk_base<R>;
  int64_t total = 0;
  for (auto n : sizes) total += n;
  const auto chunks = make_chunks(sizes, kCpuChunk);
  py::gil_scoped_release nogil;
  parallel_chunks(chunks, total, [&](const Chunk& c) {
    fn(items[size_t(c.array)], c.begin, c.end, k, stream);
  });
}

// `kernel`: a rule declaration's kernel name (fastopt/_rules), one of FASTOPT_OPTIM_RULES.
// Kinds (per array): 0 float32, 1 bfloat16, 2 float16 (16-bit as uint16 views), 3 int16
// remainder, 4 int8 codes, 5 uint8 codes, 6 no master.
void compact_update(const std::string& kernel, const py::list& params,
                    const std::vector<int>& param_kinds, const py::list& grads,
                    const std::vector<int>& grad_kinds, const py::list& masters,
                    const std::vector<int>& master_kinds, const py::list& states,
                    const std::vector<std::vector<int>>& state_kinds, const py::list& absmax,
                    const std::vector<double>& scalars, const py::object& sr) {
#define FO_RULE_CASE(NAME, R)                                                                \
  if (kernel == #NAME)                                                                       \
    return run<R>(params, param_kinds, grads, grad_kinds, masters, master_kinds, states,   \
                  state_kinds, absmax, scalars, sr);
  FASTOPT_OPTIM_RULES(FO_RULE_CASE)
#undef FO_RULE_CASE
  throw py::value_error("unknown optimizer kernel: " + kernel);
}

}  // namespace

void bind_compact(py::module_& m) {
  m.def("compact_update", &compact_update, py::arg("kernel"), py::arg("params"),
        py::arg("param_kinds"), py::arg("grads"), py::arg("grad_kinds"), py::arg("masters"),
        py::arg("master_kinds"), py::arg("states"), py::arg("state_kinds"), py::arg("absmax"),
        py::arg("scalars"), py::arg("sr"),
        "Fused in-place compact-precision update (fastopt/_precision.py) over lists of arrays; "
        "kinds: 0 float32, 1 bfloat16, 2 float16, 3 int16 remainder, 4 int8, 5 uint8, 6 none; "
        "sr: None or (seed, step, ids).");
}

}  // namespace fastopt
