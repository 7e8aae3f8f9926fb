// CPU-side plumbing shared by the kernel families: taking arrays from Python without copies,
// choosing the instruction set at run time, and sharing a chunk table out over OpenMP threads.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/chunks.h"
#include "common/macros.h"

namespace fastopt {
namespace py = pybind11;

// Arrays whose per-ISA loop is compiled for AVX2 carry this; the loop body is an always-inline
// template, so it is compiled once per instruction set (no -march=native in what we ship).
#if defined(__x86_64__) || defined(__i386__)
#define FO_TARGET_AVX2 __attribute__((target("avx2,fma")))
inline bool cpu_has_avx2() {
  static const bool v = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return v;
}
#else
#define FO_TARGET_AVX2
inline bool cpu_has_avx2() { return false; }
#endif

inline const char* simd_level() { return cpu_has_avx2() ? "avx2" : "baseline"; }

// The pointers of a list of arrays, after the checks that guarantee we never touch a copy:
// the exact dtype, C-contiguous, writable when written. Python validated already; this is the
// last line of defence at the native boundary, so it raises rather than converts.
template <class T>
std::vector<T*> array_pointers(const py::list& arrays, const char* name, bool writable,
                               std::vector<int64_t>* sizes = nullptr) {
  std::vector<T*> out;
  out.reserve(arrays.size());
  const auto want = py::dtype::of<T>();
  size_t i = 0;
  for (const auto& obj : arrays) {
    if (!py::isinstance<py::array>(obj))
      throw py::type_error(std::string(name) + "[" + std::to_string(i) + "] is not an ndarray");
    auto a = py::reinterpret_borrow<py::array>(obj);
    if (!a.dtype().is(want) && !a.dtype().equal(want))
      throw py::type_error(std::string(name) + "[" + std::to_string(i) + "] has the wrong dtype");
    if (!(a.flags() & py::array::c_style))
      throw py::value_error(std::string(name) + "[" + std::to_string(i) + "] is not C-contiguous");
    if (writable && !a.writeable())
      throw py::value_error(std::string(name) + "[" + std::to_string(i) + "] is read-only");
    if (sizes) sizes->push_back(a.size());
    out.push_back(static_cast<T*>(const_cast<void*>(a.data())));
    ++i;
  }
  return out;
}

// Runs body(chunk) over the table; the schedule is dynamic so a busy core does not hold the
// step back, and small jobs stay on the calling thread.
template <class Body>
void parallel_chunks(const std::vector<Chunk>& chunks, int64_t total, Body&& body) {
  const int64_t n = int64_t(chunks.size());
#pragma omp parallel for schedule(dynamic, 1) if (total >= (1 << 15) && n > 1)
  for (int64_t c = 0; c < n; ++c) body(chunks[c]);
}

constexpr int64_t kCpuChunk = 1 << 15;

}  // namespace fastopt
