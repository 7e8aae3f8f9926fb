// Scrambled, shifted Halton sequences on the CPU (SPEC §4): OpenMP threads over blocks of rows,
// vector lanes over consecutive points.
//
// Because the spec's fold runs from the lowest digit up, the partial sums over the m low digits
// of an index depend on (index mod b^m) alone: they are tabulated once per call (the prefix
// table, b^m <= 4096 entries), and each run of points that shares its high digits then costs
// one load and ndig - m additions of the same constants per point. The constants come from
// the high digits of the run's first index by multiply-shift division; nothing divides per point.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "common/halton_math.h"
#include "common/halton_tables.h"
#include "cpu_common.h"

namespace fastopt {
namespace {

constexpr int kMaxDigits = 64;       // digits of a 64-bit index in base 2
constexpr uint64_t kMaxPrefix = 4096;  // entries of a prefix table (fits in L1/L2 beside the rows)

struct HaltonDim {
  const double* terms;   // ndig rows of w terms
  const double* prefix;  // L = b^m partial folds over the m low digits
  DivBy base, low;       // division by b and by L
  uint64_t L;
  int64_t w;             // entries per row: b, or fewer (narrow rows start at start's digits)
  uint64_t start_lo, start_hi;  // start mod L and start div L: narrow rows' origins
  int ndig, m;
  bool narrow;
  double u;  // the shift (unused without one)
};

// Four doubles; GCC/Clang vector extensions compile to one AVX register in the avx2 build and
// to two SSE2 registers in the baseline build.
typedef double vd4 __attribute__((vector_size(32), aligned(8)));

constexpr int64_t kRows = 512;  // rows per block: the unit of work of a thread
constexpr int kGroup = 8;        // dimensions transposed together (a cache line of a row)

// V vectors of four consecutive points: x = prefix[p] + c_0 + c_1 + ... (in this order), as
// independent chains that keep the adders busy.
template <bool Shift, int V>
FO_INLINE void fold_vectors(double* __restrict out, const double* __restrict pre,
                            const double* __restrict c, int nc, double u) {
  vd4 v[V];
  for (int q = 0; q < V; ++q) __builtin_memcpy(&v[q], pre + 4 * q, sizeof(vd4));
  for (int t = 0; t < nc; ++t) {
    const double ct = c[t];
    for (int q = 0; q < V; ++q) v[q] += ct;
  }
  if constexpr (Shift)
    for (int q = 0; q < V; ++q) {  // halton_shift, lane by lane
      const vd4 y = v[q] + u;
      v[q] = y >= 1.0 ? y - 1.0 : y;
    }
  for (int q = 0; q < V; ++q) __builtin_memcpy(out + 4 * q, &v[q], sizeof(vd4));
}

// One run of points that share their high digits (constants c_0..c_{nc-1}).
template <bool Shift, int V>
FO_INLINE void run_points(double* __restrict out, const double* __restrict pre, int64_t len,
                          const double* __restrict c, int nc, double u) {
  int64_t p = 0;
  for (; p + 4 * V <= len; p += 4 * V) fold_vectors<Shift, V>(out + p, pre + p, c, nc, u);
  for (; p + 4 <= len; p += 4) fold_vectors<Shift, 1>(out + p, pre + p, c, nc, u);
  for (; p < len; ++p) {
    double x = pre[p];
    for (int t = 0; t < nc; ++t) x += c[t];
    if constexpr (Shift) x = halton_shift(x, u);
    out[p] = x;
  }
}

// Points i .. i+count-1 of one dimension into col, contiguous.
template <bool Shift, int V>
FO_INLINE void column(double* __restrict col, const HaltonDim& D, uint64_t i, int64_t count) {
  double c[kMaxDigits];
  const uint32_t b = D.base.v;
  const int nc = D.ndig - D.m;
  for (int64_t r = 0; r < count;) {
    const uint64_t hi = div_by(D.low, i);
    const uint64_t lo = i - hi * D.L;
    const int64_t len = std::min<int64_t>(int64_t(D.L - lo), count - r);
    uint64_t q = hi, qs = D.start_hi;
    for (int t = 0; t < nc; ++t) {  // the run's high digits -> its constants
      const uint64_t h = div_by(D.base, q);
      uint64_t e = q - h * b;
      if (D.narrow) {
        const uint64_t hs = div_by(D.base, qs);
        e = halton_slot(e, qs - hs * b, b);
        qs = hs;
      }
      c[t] = D.terms[int64_t(D.m + t) * D.w + int64_t(e)];
      q = h;
    }
    // a narrow row 0 (then m = 1, L = b) is the prefix table, from start's low digit on
    const uint64_t at = D.narrow ? halton_slot(lo, D.start_lo, b) : lo;
    run_points<Shift, V>(col + r, D.prefix + at, len, c, nc, D.u);
    r += len;
    i += uint64_t(len);
  }
}

// Rows r0..r1-1 (at most kRows) of the (n, d) output: columns of kGroup dimensions are computed
// contiguously, then written row by row, a whole cache line of each row at once.
template <bool Shift, int V>
FO_INLINE void rows_loop(double* out, int64_t d, uint64_t start, int64_t r0, int64_t r1,
                         const HaltonDim* dims) {
  const uint64_t i0 = start + uint64_t(r0);
  const int64_t count = r1 - r0;
  if (d == 1) return column<Shift, V>(out + r0, dims[0], i0, count);
  alignas(64) double buf[kGroup][kRows];
  for (int64_t j0 = 0; j0 < d; j0 += kGroup) {
    double* o = out + r0 * d + j0;
    if (d - j0 >= kGroup) {
      for (int g = 0; g < kGroup; ++g) column<Shift, V>(buf[g], dims[j0 + g], i0, count);
      for (int64_t r = 0; r < count; ++r)
        for (int g = 0; g < kGroup; ++g) o[r * d + g] = buf[g][r];
    } else {
      const int gn = int(d - j0);
      for (int g = 0; g < gn; ++g) column<Shift, V>(buf[g], dims[j0 + g], i0, count);
      for (int64_t r = 0; r < count; ++r)
        for (int g = 0; g < gn; ++g) o[r * d + g] = buf[g][r];
    }
  }
}

template <bool Shift>
FO_TARGET_AVX2 void rows_avx2(double* out, int64_t d, uint64_t start, int64_t r0, int64_t r1,
                              const HaltonDim* dims) {
  rows_loop<Shift, 8>(out, d, start, r0, r1, dims);
}
template <bool Shift>
void rows_base(double* out, int64_t d, uint64_t start, int64_t r0, int64_t r1,
               const HaltonDim* dims) {
  rows_loop<Shift, 4>(out, d, start, r0, r1, dims);
}

// prefix[lo] for lo < b^m: the fold over the m low digits of lo, built digit by digit
// (S_{k+1}[lo + e b^k] = S_k[lo] + t_k[e]), the same additions in the same order as per point.
void build_prefix(double* S, const double* terms, uint32_t b, int m) {
  S[0] = 0.0;
  uint64_t size = 1;
  for (int k = 0; k < m; ++k) {
    const double* t = terms + int64_t(k) * b;
    for (uint32_t e = b; e-- > 0;)  // e = 0 last: it overwrites S_k in place
      for (uint64_t lo = 0; lo < size; ++lo) S[e * size + lo] = S[lo] + t[e];
    size *= b;
  }
}

// Most threads a call may start: a thread per processor, or this many where there are fewer.
constexpr int kMaxWorkers = 256;

// An integer argument (a Python int or a NumPy integer) in [lo, hi], or an error naming it,
// rather than pybind11's dump of the signature.
uint64_t index_arg(const py::handle& value, const char* name, uint64_t hi) {
  PyObject* idx = PyNumber_Index(value.ptr());
  if (!idx) {
    PyErr_Clear();
    throw py::type_error(std::string(name) + " must be an integer");
  }
  const py::object v = py::reinterpret_steal<py::object>(idx);
  const unsigned long long r = PyLong_AsUnsignedLongLong(v.ptr());
  if (PyErr_Occurred() || r > hi) {
    PyErr_Clear();
    throw py::value_error(std::string(name) + " is out of range [0, " + std::to_string(hi) + "]");
  }
  return r;
}

void halton(py::array out, const py::object& start_arg, const py::array& bases,
            const py::array& ndig, const py::array& terms, const py::array& offsets,
            const py::array& shift, const py::object& workers_arg) {
  const uint64_t start = index_arg(start_arg, "start", ~uint64_t(0));
  int workers = int(index_arg(workers_arg, "workers", uint64_t(std::max(kMaxWorkers,
                                                                         omp_get_num_procs()))));
  if (!out.dtype().equal(py::dtype::of<double>())) throw py::type_error("out must be float64");
  if (out.ndim() != 2) throw py::value_error("out must be 2-D (n, d)");
  if (!(out.flags() & py::array::c_style)) throw py::value_error("out is not C-contiguous");
  if (!(out.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
    throw py::value_error("out is not aligned");
  if (!out.writeable()) throw py::value_error("out is read-only");
  const int64_t n = out.shape(0), d = out.shape(1);
  const HaltonHostTables tab = halton_tables(bases, ndig, terms, offsets, shift, n, d, start);
  const int64_t *B = tab.bases, *K = tab.ndig, *O = tab.offsets;
  const double *T = tab.terms, *U = tab.shift;
  const bool has_shift = U != nullptr;
  double* X = static_cast<double*>(out.mutable_data());
  if (n == 0 || d == 0) return;
  // out is written while the tables are read: they must not share a byte
  const uintptr_t x0 = uintptr_t(X), x1 = x0 + uintptr_t(out.nbytes());
  for (const py::array* a : {&bases, &ndig, &terms, &offsets, &shift}) {
    const uintptr_t a0 = uintptr_t(a->data()), a1 = a0 + uintptr_t(a->nbytes());
    if (a->nbytes() > 0 && a0 < x1 && x0 < a1)
      throw py::value_error("out overlaps a table it is computed from");
  }

  std::vector<HaltonDim> dims(d);
  std::vector<int64_t> pre_at(d + 1, 0);
  static const double zero = 0.0;
  for (int64_t j = 0; j < d; ++j) {
    const int64_t b = B[j], k = K[j];
    int64_t w = 0;
    if (const char* why = halton_check_dim(b, k, O[j], O[j + 1], tab.nterms, n, &w))
      throw py::value_error(why);
    HaltonDim& D = dims[j];
    D.terms = T + O[j];
    D.base = make_divby(uint32_t(b));
    D.ndig = int(k);
    D.w = w;
    D.narrow = k > 0 && w < b;
    D.u = has_shift ? U[j] : 0.0;
    // The most low digits whose table is no longer than the call (a 1-row call builds nothing)
    // and no longer than kMaxPrefix; one digit always, as that table is t_0 itself. Narrow rows
    // mean n < b, hence m = 1 exactly; wider tables (m >= 2, n >= b^2) read full rows only.
    const uint64_t cap = std::max<uint64_t>(uint64_t(b), std::min<uint64_t>(kMaxPrefix, n));
    int m = 0;
    uint64_t L = 1;
    while (m < k && L * uint64_t(b) <= cap) L *= uint64_t(b), ++m;
    D.m = m;
    D.L = L;
    D.low = make_divby(uint32_t(L));
    D.start_hi = div_by(D.low, start);
    D.start_lo = start - D.start_hi * L;
    pre_at[j + 1] = pre_at[j] + (m >= 2 ? int64_t(L) : 0);
  }
  std::vector<double> prefix(pre_at[d]);
  for (int64_t j = 0; j < d; ++j)
    dims[j].prefix = dims[j].m == 0 ? &zero : dims[j].m == 1 ? dims[j].terms
                                                              : prefix.data() + pre_at[j];
  if (workers <= 0) workers = omp_get_max_threads();

  const int64_t blocks = (n + kRows - 1) / kRows;
  const bool many = n * d >= (int64_t(1) << 15);
  auto fn = has_shift ? (cpu_has_avx2() ? &rows_avx2<true> : &rows_base<true>)
                      : (cpu_has_avx2() ? &rows_avx2<false> : &rows_base<false>);
  py::gil_scoped_release nogil;
#pragma omp parallel num_threads(workers) if (many && workers > 1)
  {
#pragma omp for schedule(dynamic, 1)
    for (int64_t j = 0; j < d; ++j)
      if (dims[j].m >= 2)
        build_prefix(prefix.data() + pre_at[j], dims[j].terms, dims[j].base.v, dims[j].m);
#pragma omp for schedule(dynamic, 1)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t r0 = blk * kRows, r1 = std::min(n, r0 + kRows);
      fn(X, d, start, r0, r1, dims.data());
    }
  }
}

}  // namespace

void bind_halton(py::module_& m) {
  m.def("halton", &halton, py::arg("out").noconvert(), py::arg("start"), py::arg("bases"),
        py::arg("ndig"), py::arg("terms"), py::arg("offsets"), py::arg("shift"),
        py::arg("workers"),
        "Rows start..start+n-1 of a Halton sequence into out (n, d), from tabulated terms "
        "t_k[digit] = pi_k[digit] * f_k (GIL released).");
}

}  // namespace fastopt
