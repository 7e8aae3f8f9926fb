// Global-norm partials and in-place scaling on the CPU: one call for the whole list of arrays.
// The summation order is csrc/common/norm_math.h's; blocks run on any thread into their own
// slot and are folded afterwards in a fixed order, so the bits never depend on the schedule.
#include <omp.h>

#include <algorithm>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "common/norm_math.h"
#include "cpu_common.h"

namespace fastopt {
namespace {

constexpr int L = kNormLanes;
// Blocks are summed kGroup at a time (sums only): independent streams keep more loads in
// flight, which a single core needs to approach its read bandwidth (one stream falls ~20%
// short; 8 streams are no better than 4 and 16 spill registers). The blocks of a group run
// together up to the shortest one, then each finishes alone. Every block still gets exactly
// its own lanes in its own order, so grouping changes no bit.
constexpr int kGroup = 4;

// One block of n <= kNormBlock elements: its sum of squares and (if asked) max |x|.
using BlockFn = void (*)(const void* x, int64_t n, double s, double* sum, double* mx);
// kGroup blocks of ns[q] <= kNormBlock elements: their sums of squares.
using GroupFn = void (*)(const void* const* xs, const int64_t* ns, double s, double* sums);

// -- storage -------------------------------------------------------------------------------------

// The storage S of an array, and its value type Wide<S>. 16-bit storage is read as its bits and
// widened exactly to float; from there on everything is the float32 path's (squares in double,
// max |x| in float), so the bits are those of a float32 copy's norm.
struct bf16 { uint16_t bits; };
struct f16 { uint16_t bits; };
template <class S> struct WideOf { using type = S; };
template <> struct WideOf<bf16> { using type = float; };
template <> struct WideOf<f16> { using type = float; };
template <class S> using Wide = typename WideOf<S>::type;

FO_INLINE float float_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
FO_INLINE float widen(float x) { return x; }
FO_INLINE double widen(double x) { return x; }
FO_INLINE float widen(bf16 x) { return float_bits(uint32_t(x.bits) << 16); }  // the top half
// IEEE half -> float, exactly (the AVX2 loop's F16C conversion gives the same value): a normal's
// exponent is rebiased (15 -> 127), a subnormal m 2^-24 is a normal float, inf and NaN keep
// their payload (F16C may quiet a signalling NaN; the square in double is quiet either way).
FO_INLINE float widen(f16 x) {
  const uint32_t sign = uint32_t(x.bits & 0x8000u) << 16, e = (x.bits >> 10) & 0x1fu,
                 m = x.bits & 0x3ffu;
  if (e == 0x1f) return float_bits(sign | 0x7f800000u | m << 13);
  if (e != 0) return float_bits(sign | (e + 112) << 23 | m << 13);
  const float v = float(m) * 0x1p-24f;  // exact: m < 2^10
  return sign ? -v : v;
}

// -- portable loops ------------------------------------------------------------------------------

// Rows of L elements from i on, then lanes 0..r-1 of a short last row. Also the tails of the
// SIMD loops.
template <bool Scaled, bool WantMax, class S>
FO_INLINE void block_rows(const S* __restrict x, int64_t i, int64_t n, double s, double* acc,
                          Wide<S>* m) {
  for (; i + L <= n; i += L)
    for (int j = 0; j < L; ++j) norm_lane_add<Scaled, WantMax>(acc[j], m[j], widen(x[i + j]), s);
  for (int j = 0; j < L && i < n; ++i, ++j)
    norm_lane_add<Scaled, WantMax>(acc[j], m[j], widen(x[i]), s);
}

template <class T>
FO_INLINE void block_finish(double* acc, const T* m, double* sum, double* mx) {
  T mm = 0;
  for (int j = 0; j < L; ++j) mm = m[j] > mm ? m[j] : mm;
  *sum = norm_fold_lanes(acc);
  *mx = double(mm);
}

template <bool Scaled, bool WantMax, class S>
void block_base(const void* px, int64_t n, double s, double* sum, double* mx) {
  double acc[L] = {};
  Wide<S> m[L] = {};
  block_rows<Scaled, WantMax>(static_cast<const S*>(px), 0, n, s, acc, m);
  block_finish(acc, m, sum, mx);
}

template <bool Scaled, class S>
void group_base(const void* const* xs, const int64_t* ns, double s, double* sums) {
  double unused;
  for (int q = 0; q < kGroup; ++q) block_base<Scaled, false, S>(xs[q], ns[q], s, &sums[q], &unused);
}

// -- AVX2 ----------------------------------------------------------------------------------------
#if defined(__x86_64__) || defined(__i386__)
static_assert(kNormLanes == 16, "the AVX2 loops hold a block's 16 lanes in 4 registers");

// The same lanes, four doubles per register: lane j of register k is lane 4k + j of the portable
// loop. No reassociation and no FMA (-ffp-contract=off), so both give the same bits. The loops
// also take F16C (float16 loads), which every AVX2 CPU has; simd_ok() checks it all the same.
#define FO_NORM_AVX2 __attribute__((target("avx2,fma,f16c")))
#define FO_AVX2_INLINE FO_NORM_AVX2 inline __attribute__((always_inline))
bool simd_ok() {
  static const bool v = cpu_has_avx2() && __builtin_cpu_supports("f16c");
  return v;
}

template <bool Scaled>
FO_AVX2_INLINE __m256d square(__m256d v, __m256d s) {
  if (Scaled) v = _mm256_mul_pd(v, s);
  return _mm256_mul_pd(v, v);
}
FO_AVX2_INLINE __m256d load4(const float* x) { return _mm256_cvtps_pd(_mm_loadu_ps(x)); }  // exact
FO_AVX2_INLINE __m256d load4(const double* x) { return _mm256_loadu_pd(x); }
// 16-bit storage, widened exactly as widen() does: bf16 as the top half of a float32 (under
// 16 zero bits by an unpack for 4, by zero-extension and a shift for 8); float16 by F16C.
FO_AVX2_INLINE __m128i bits4(const void* x) { return _mm_loadl_epi64((const __m128i*)x); }
FO_AVX2_INLINE __m128i bits8(const void* x) { return _mm_loadu_si128((const __m128i*)x); }
FO_AVX2_INLINE __m256d load4(const bf16* x) {
  return _mm256_cvtps_pd(_mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), bits4(x))));
}
FO_AVX2_INLINE __m256d load4(const f16* x) { return _mm256_cvtps_pd(_mm_cvtph_ps(bits4(x))); }
FO_AVX2_INLINE __m256 load8(const float* x) { return _mm256_loadu_ps(x); }
FO_AVX2_INLINE __m256 load8(const bf16* x) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits8(x)), 16));
}
FO_AVX2_INLINE __m256 load8(const f16* x) { return _mm256_cvtph_ps(bits8(x)); }

FO_AVX2_INLINE __m256 abs8(__m256 v) {
  return _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)));
}
FO_AVX2_INLINE __m256d abs4(__m256d v) {
  return _mm256_and_pd(v, _mm256_castsi256_pd(_mm256_set1_epi64x(0x7fffffffffffffffLL)));
}

// max |x| of one row into m (float and 16-bit: 2 x 8 float lanes; double: a short tree into 4
// lanes). max is exact and order-free; a NaN may hide other values from it, but the NaN itself
// shows in the sum, which then decides.
template <class S>
FO_AVX2_INLINE void row_max(const S* x, __m256* m) {
  m[0] = _mm256_max_ps(abs8(load8(x)), m[0]);
  m[1] = _mm256_max_ps(abs8(load8(x + 8)), m[1]);
}
FO_AVX2_INLINE void row_max(const double* x, __m256d* m) {
  const __m256d lo = _mm256_max_pd(abs4(_mm256_loadu_pd(x)), abs4(_mm256_loadu_pd(x + 4)));
  const __m256d hi = _mm256_max_pd(abs4(_mm256_loadu_pd(x + 8)), abs4(_mm256_loadu_pd(x + 12)));
  const __m256d t = _mm256_max_pd(lo, hi);
  m[0] = _mm256_max_pd(t, m[0]);
}
FO_AVX2_INLINE void store_max(float* out, const __m256* m) {
  _mm256_storeu_ps(out, m[0]);
  _mm256_storeu_ps(out + 8, m[1]);
}
FO_AVX2_INLINE void store_max(double* out, const __m256d* m) { _mm256_storeu_pd(out, m[0]); }

template <class T>
struct MaxReg;
template <>
struct MaxReg<float> { using type = __m256; static constexpr int n = 2; };
template <>
struct MaxReg<double> { using type = __m256d; static constexpr int n = 1; };

template <bool Scaled, bool WantMax, class S>
FO_NORM_AVX2 void block_avx2(const void* px, int64_t n, double s, double* sum, double* mx) {
  using T = Wide<S>;
  const S* x = static_cast<const S*>(px);
  const __m256d vs = _mm256_set1_pd(s);
  using M = typename MaxReg<T>::type;
  __m256d a[4];
  M m[MaxReg<T>::n];
  for (auto& r : a) r = _mm256_setzero_pd();
  for (auto& r : m) r = M{};
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    for (int k = 0; k < 4; ++k)
      a[k] = _mm256_add_pd(a[k], square<Scaled>(load4(x + i + 4 * k), vs));
    if (WantMax) row_max(x + i, m);
  }
  alignas(32) double acc[L];
  T mm[L] = {};
  for (int k = 0; k < 4; ++k) _mm256_store_pd(acc + 4 * k, a[k]);
  store_max(mm, m);
  block_rows<Scaled, WantMax>(x, i, n, s, acc, mm);
  block_finish(acc, mm, sum, mx);
}

template <bool Scaled, class S>
FO_NORM_AVX2 void group_avx2(const void* const* xs, const int64_t* ns, double s, double* sums) {
  const S* x[kGroup];
  int64_t common = kNormBlock;  // whole rows that every block of the group has
  for (int q = 0; q < kGroup; ++q) {
    x[q] = static_cast<const S*>(xs[q]);
    common = std::min(common, ns[q] / L * L);
  }
  const __m256d vs = _mm256_set1_pd(s);
  __m256d a[kGroup][4];
  for (auto& g : a)
    for (auto& r : g) r = _mm256_setzero_pd();
  for (int64_t i = 0; i < common; i += L)
    for (int q = 0; q < kGroup; ++q)
      for (int k = 0; k < 4; ++k)
        a[q][k] = _mm256_add_pd(a[q][k], square<Scaled>(load4(x[q] + i + 4 * k), vs));
  for (int q = 0; q < kGroup; ++q) {  // the rest of each block on its own, same lanes
    int64_t i = common;
    for (; i + L <= ns[q]; i += L)
      for (int k = 0; k < 4; ++k)
        a[q][k] = _mm256_add_pd(a[q][k], square<Scaled>(load4(x[q] + i + 4 * k), vs));
    alignas(32) double acc[L];
    Wide<S> unused[L] = {};
    for (int k = 0; k < 4; ++k) _mm256_store_pd(acc + 4 * k, a[q][k]);
    block_rows<Scaled, false>(x[q], i, ns[q], s, acc, unused);
    sums[q] = norm_fold_lanes(acc);
  }
}
#else
bool simd_ok() { return false; }
#endif

template <bool Scaled, bool WantMax, class S>
BlockFn pick_block(bool avx2) {
#if defined(__x86_64__) || defined(__i386__)
  if (avx2) return &block_avx2<Scaled, WantMax, S>;
#endif
  return &block_base<Scaled, WantMax, S>;
}

template <bool Scaled, class S>
GroupFn pick_group(bool avx2) {
#if defined(__x86_64__) || defined(__i386__)
  if (avx2) return &group_avx2<Scaled, S>;
#endif
  return &group_base<Scaled, S>;
}

// -- the whole list ------------------------------------------------------------------------------

// The work list: groups of kGroup blocks where allowed (sums only), else one block a task. Full
// blocks group in order; the short last blocks of the arrays group by length, longest first, so
// a group's blocks run together for most of their length.
struct Task {
  int64_t slot[kGroup];
  int count;  // 1: one block; kGroup: a group
};

std::vector<Task> make_tasks(const std::vector<Chunk>& chunks, bool group) {
  std::vector<Task> out;
  out.reserve(chunks.size());
  const int64_t nc = int64_t(chunks.size());
  if (!group) {
    for (int64_t k = 0; k < nc; ++k) out.push_back({{k}, 1});
    return out;
  }
  auto len = [&](int64_t k) { return chunks[k].end - chunks[k].begin; };
  std::vector<int64_t> full, rest;
  for (int64_t k = 0; k < nc; ++k) (len(k) == kNormBlock ? full : rest).push_back(k);
  std::stable_sort(rest.begin(), rest.end(), [&](int64_t a, int64_t b) { return len(a) > len(b); });
  for (const auto* list : {&full, &rest}) {
    size_t k = 0;
    for (; k + kGroup <= list->size(); k += kGroup) {
      Task t{{}, kGroup};
      for (int q = 0; q < kGroup; ++q) t.slot[q] = (*list)[k + q];
      out.push_back(t);
    }
    for (; k < list->size(); ++k) out.push_back({{(*list)[k]}, 1});
  }
  return out;
}

template <class S>
py::tuple partials(const Arrays<S>& A, double scale, bool want_max, bool baseline) {
  const auto& X = A.ptr;
  const auto& sizes = A.size;
  const int64_t na = int64_t(X.size());
  py::array_t<double> sumsq(na), maxabs(na);
  double* out_sum = sumsq.mutable_data();
  double* out_max = maxabs.mutable_data();
  const bool scaled = scale != 1.0, avx2 = simd_ok() && !baseline;
  BlockFn block;
  if (scaled) block = want_max ? pick_block<true, true, S>(avx2) : pick_block<true, false, S>(avx2);
  else block = want_max ? pick_block<false, true, S>(avx2) : pick_block<false, false, S>(avx2);
  const GroupFn group = scaled ? pick_group<true, S>(avx2) : pick_group<false, S>(avx2);
  const auto chunks = make_chunks(sizes, kNormBlock);  // the blocks, array by array, in order
  // Grouping only pays once every thread still gets several tasks.
  const bool group_ok = !want_max && int64_t(chunks.size()) >= 4 * kGroup * omp_get_max_threads();
  const auto tasks = make_tasks(chunks, group_ok);
  int64_t total = 0;
  for (auto n : sizes) total += n;
  std::vector<double> bsum(chunks.size()), bmax(chunks.size());
  {
    py::gil_scoped_release nogil;
    const int64_t nt = int64_t(tasks.size());
    // Any thread may take any task: each block writes only its own slot.
#pragma omp parallel for schedule(dynamic, 1) if (total >= (1 << 15) && nt > 1)
    for (int64_t t = 0; t < nt; ++t) {
      const Task& w = tasks[t];
      if (w.count == 1) {
        const Chunk& c = chunks[w.slot[0]];
        block(X[c.array] + c.begin, c.end - c.begin, scale, &bsum[w.slot[0]], &bmax[w.slot[0]]);
      } else {
        const void* xs[kGroup];
        int64_t ns[kGroup];
        double sums[kGroup];
        for (int q = 0; q < kGroup; ++q) {
          const Chunk& c = chunks[w.slot[q]];
          xs[q] = X[c.array] + c.begin;
          ns[q] = c.end - c.begin;
        }
        group(xs, ns, scale, sums);
        for (int q = 0; q < kGroup; ++q) bsum[w.slot[q]] = sums[q];
      }
    }
    int64_t k = 0;
    for (int64_t a = 0; a < na; ++a) {  // fixed order: an array's blocks, folded in halves
      const int64_t nb = (sizes[a] + kNormBlock - 1) / kNormBlock;
      double mx = 0;
      if (want_max)
        for (int64_t j = k; j < k + nb; ++j) mx = std::max(mx, bmax[j]);
      out_sum[a] = norm_fold_pairwise(bsum.data() + k, nb);
      out_max[a] = mx;
      k += nb;
    }
  }
  return py::make_tuple(sumsq, maxabs);
}

// x <- s x, s rounded once to the storage type (as the optimizer kernels apply grad_scale).
template <class T>
FO_INLINE void scale_loop(T* __restrict x, int64_t n, T s) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] = s * x[i];
}
template <class T>
FO_TARGET_AVX2 void scale_avx2(T* x, int64_t n, T s) { scale_loop(x, n, s); }
template <class T>
void scale_base(T* x, int64_t n, T s) { scale_loop(x, n, s); }

template <class T>
void scale(const py::list& arrays, double factor) {
  const auto A = take_arrays<T>(arrays, "arrays", true);
  std::vector<Span> spans;
  add_spans(spans, A, true);
  check_disjoint(spans);
  const auto& X = A.ptr;
  const auto& sizes = A.size;
  const T s = T(factor);
  auto fn = cpu_has_avx2() ? &scale_avx2<T> : &scale_base<T>;
  int64_t total = 0;
  for (auto n : sizes) total += n;
  const auto chunks = make_chunks(sizes, kCpuChunk);
  py::gil_scoped_release nogil;
  parallel_chunks(chunks, total, [&](const Chunk& c) {
    fn(X[c.array] + c.begin, c.end - c.begin, s);
  });
}

// The list's storage, from its first array (each array is then held to exactly that dtype).
// pybind11 knows no bfloat16 (NumPy has none; ml_dtypes adds it): a 2-byte dtype named
// "bfloat16" is one (a byte-swapped one is named otherwise, and refused).
enum class Kind { f32, f64, f16, bf16 };

Kind kind_of(const py::list& arrays, bool sixteen) {
  if (arrays.size() == 0) return Kind::f32;
  if (!py::isinstance<py::array>(arrays[0])) throw py::type_error("arrays[0] is not an ndarray");
  const auto dt = py::reinterpret_borrow<py::array>(arrays[0]).dtype();
  if (dt.equal(py::dtype::of<double>())) return Kind::f64;
  if (dt.equal(py::dtype::of<float>())) return Kind::f32;
  if (sixteen && dt.itemsize() == 2) {
    if (dt.equal(py::dtype("float16"))) return Kind::f16;
    if (py::str(dt.attr("name")).cast<std::string>() == "bfloat16") return Kind::bf16;
  }
  throw py::type_error(sixteen ? "arrays must be float32, float64, float16 or bfloat16"
                               : "arrays must be float32 or float64");
}

// take_arrays (read-only) for 16-bit storage, which py::dtype::of cannot name: every item an
// ndarray of exactly arrays[0]'s dtype, C-contiguous; read as its bits.
template <class S>
Arrays<S> take16(const py::list& arrays) {
  const auto want = py::reinterpret_borrow<py::array>(arrays[0]).dtype();
  if (arrays.size() >= size_t(INT32_MAX)) throw py::value_error("arrays holds too many arrays");
  Arrays<S> out;
  for (size_t i = 0; i < arrays.size(); ++i) {
    py::handle item = PyList_GET_ITEM(arrays.ptr(), py::ssize_t(i));  // borrowed
    if (!py::isinstance<py::array>(item))
      throw py::type_error(item_name("arrays", i) + " is not an ndarray");
    auto a = py::reinterpret_borrow<py::array>(item);
    if (!a.dtype().is(want) && !a.dtype().equal(want))
      throw py::type_error(item_name("arrays", i) + " has the wrong dtype (arrays[0] is " +
                           py::str(want).cast<std::string>() + ")");
    if (!(a.flags() & py::array::c_style))
      throw py::value_error(item_name("arrays", i) + " is not C-contiguous");
    out.ptr.push_back(static_cast<S*>(const_cast<void*>(a.data())));
    out.size.push_back(int64_t(a.size()));
    out.held.push_back(std::move(a));
  }
  return out;
}

py::tuple norm_partials(const py::list& arrays, double scale, bool want_max, bool baseline) {
  auto run = [&](const auto& A) { return partials(A, scale, want_max, baseline); };
  switch (kind_of(arrays, true)) {
    case Kind::f64: return run(take_arrays<double>(arrays, "arrays", false));
    case Kind::f16: return run(take16<f16>(arrays));
    case Kind::bf16: return run(take16<bf16>(arrays));
    default: return run(take_arrays<float>(arrays, "arrays", false));
  }
}

void norm_scale(const py::list& arrays, double factor) {
  if (arrays.size() == 0) return;
  if (kind_of(arrays, false) == Kind::f64) scale<double>(arrays, factor);
  else scale<float>(arrays, factor);
}

}  // namespace

void bind_norm(py::module_& m) {
  m.def("norm_partials", &norm_partials, py::arg("arrays"), py::arg("scale"),
        py::arg("want_max"), py::arg("baseline") = false,
        "Per array: float64 sum of (scale*x)^2 in the fixed block/lane order, and max |x| "
        "(0 unless want_max); one call over the list (float32, float64, float16 or bfloat16, "
        "one dtype), GIL released. baseline=True skips the AVX2 loops (tests check both give "
        "the same bits).");
  m.def("norm_scale", &norm_scale, py::arg("arrays"), py::arg("factor"),
        "x <- T(factor) * x in place for every array (one call).");
  m.attr("norm_block") = kNormBlock;
  m.attr("norm_lanes") = kNormLanes;
}

}  // namespace fastopt
