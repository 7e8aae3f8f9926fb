// The machine's own ceiling: streaming kernels that move exactly a kernel's bytes with trivial
// arithmetic, threaded and vectorised like the real kernels. Benchmarks report % of these.
#include "cpu_common.h"

namespace fastopt {
namespace {

// arrays[0..written) += arrays[last] / 2, every array read once: e.g. Adam = 4 reads, 3 writes.
FO_INLINE void update_loop(float* const* a, int nw, const float* __restrict src, int64_t b, int64_t e) {
  for (int j = 0; j < nw; ++j) {
    float* __restrict x = a[j];
#pragma omp simd
    for (int64_t i = b; i < e; ++i) x[i] = x[i] + 0.5f * src[i];
  }
}
FO_TARGET_AVX2 void update_avx2(float* const* a, int nw, const float* s, int64_t b, int64_t e) {
  update_loop(a, nw, s, b, e);
}
void update_base(float* const* a, int nw, const float* s, int64_t b, int64_t e) {
  update_loop(a, nw, s, b, e);
}

FO_INLINE float read_loop(const float* __restrict x, int64_t b, int64_t e) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = b; i < e; ++i) acc += x[i];
  return acc;
}
FO_TARGET_AVX2 float read_avx2(const float* x, int64_t b, int64_t e) { return read_loop(x, b, e); }
float read_base(const float* x, int64_t b, int64_t e) { return read_loop(x, b, e); }

void stream_update(const py::list& arrays, int written) {
  const auto arr = take_arrays<float>(arrays, "arrays", true);
  const auto& A = arr.ptr;
  const auto& sizes = arr.size;
  if (A.size() < 2 || written < 1 || written >= int(A.size()))
    throw py::value_error("need 1 <= written < len(arrays) and at least 2 arrays");
  for (auto n : sizes)
    if (n != sizes[0]) throw py::value_error("arrays must have equal sizes");
  const auto chunks = make_chunks({sizes[0]}, kCpuChunk);
  auto fn = cpu_has_avx2() ? &update_avx2 : &update_base;
  py::gil_scoped_release nogil;
  parallel_chunks(chunks, sizes[0], [&](const Chunk& c) {
    fn(A.data(), written, A.back(), c.begin, c.end);
  });
}

double stream_read(const py::array_t<float, 0>& x) {
  if (!(x.flags() & py::array::c_style)) throw py::value_error("x must be C-contiguous");
  const float* p = x.data();
  const auto chunks = make_chunks({int64_t(x.size())}, kCpuChunk);
  std::vector<float> part(chunks.size());
  auto fn = cpu_has_avx2() ? &read_avx2 : &read_base;
  {
    py::gil_scoped_release nogil;
    parallel_chunks(chunks, x.size(), [&](const Chunk& c) {
      part[&c - chunks.data()] = fn(p, c.begin, c.end);
    });
  }
  double s = 0;
  for (float v : part) s += v;
  return s;
}

}  // namespace

void bind_stream(py::module_& m) {
  m.def("stream_update", &stream_update, py::arg("arrays"), py::arg("written"),
        "Ceiling kernel: arrays[:written] += arrays[-1] / 2 (float32), one pass.");
  m.def("stream_read", &stream_read, py::arg("x"), "Ceiling kernel: sum of a float32 array.");
}

}  // namespace fastopt
