// CPU-side plumbing shared by the kernel families: taking arrays from Python without copies,
// choosing the instruction set at run time, and sharing a chunk table out over OpenMP threads.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/chunks.h"
#include "common/macros.h"

namespace fastopt {
namespace py = pybind11;

// The instruction set of the per-ISA loops, chosen once at run time (no -march=native in what
// we ship): each loop body is an always-inline template, compiled once per target below and
// called through the function the path picks. Every path gives the same bits (no contraction:
// -ffp-contract=off; conversions by integer rules or IEEE-exact instructions only), so the
// path only changes speed.
//
// FASTOPT_SIMD=baseline|avx2|avx512 caps the path (tests compare the paths' bits on one
// machine); a cap above what the CPU has gives what it has; unset, empty or any other value:
// no cap. Read once, at the first kernel call.
enum SimdPath : int { kSimdBaseline = 0, kSimdAvx2 = 1, kSimdAvx512 = 2 };

#if defined(__x86_64__) || defined(__i386__)
#define FO_TARGET_AVX2 __attribute__((target("avx2,fma")))
// + F16C for the compact kernels' float16 conversions (every AVX2 CPU has it; it is checked).
#define FO_TARGET_AVX2_F16C __attribute__((target("avx2,fma,f16c")))
#define FO_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c,prefer-vector-width=512")))
inline int simd_cpu() {
  __builtin_cpu_init();
  if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c")))
    return kSimdBaseline;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return kSimdAvx512;
  return kSimdAvx2;
}
#else
#define FO_TARGET_AVX2
#define FO_TARGET_AVX2_F16C
#define FO_TARGET_AVX512
inline int simd_cpu() { return kSimdBaseline; }
#endif

inline int simd_path() {
  static const int v = [] {
    const char* env = std::getenv("FASTOPT_SIMD");
    const std::string cap = env ? env : "";
    const int cpu = simd_cpu();
    if (cap == "baseline") return int(kSimdBaseline);
    if (cap == "avx2") return std::min(cpu, int(kSimdAvx2));
    return cpu;  // "avx512", unset or unknown
  }();
  return v;
}
inline bool cpu_has_avx2() { return simd_path() >= kSimdAvx2; }  // the path uses AVX2 (+FMA, F16C)
inline bool cpu_has_avx512() { return simd_path() >= kSimdAvx512; }

inline const char* simd_level() {
  static const char* const names[] = {"baseline", "avx2", "avx512"};
  return names[simd_path()];
}

// One argument's list of arrays, taken after the checks that guarantee a kernel never touches
// a copy or anything outside an array: each item an ndarray of exactly dtype T, C-contiguous,
// writable when written, and (given `like`) of the same element count as like's item. The
// arrays are held (owned references) for the call, so another thread cannot free one while the
// GIL is released. Python validated already; this is the last line of defence at the native
// boundary, so it raises rather than converts or trusts.
template <class T>
struct Arrays {
  std::vector<py::array> held;
  std::vector<T*> ptr;
  std::vector<int64_t> size;
  size_t count() const { return ptr.size(); }
};

inline std::string item_name(const char* name, size_t i) {
  return std::string(name) + "[" + std::to_string(i) + "]";
}

template <class T>
Arrays<T> take_arrays(const py::handle& obj, const char* name, bool writable,
                      const Arrays<T>* like = nullptr, const char* like_name = nullptr) {
  if (!py::isinstance<py::list>(obj)) throw py::type_error(std::string(name) + " must be a list");
  const auto arrays = py::reinterpret_borrow<py::list>(obj);
  if (arrays.size() >= size_t(INT32_MAX))  // Chunk::array is 32-bit
    throw py::value_error(std::string(name) + " holds too many arrays");
  if (like && arrays.size() != like->count())
    throw py::value_error(std::string(name) + " has " + std::to_string(arrays.size()) +
                          " arrays but " + like_name + " has " + std::to_string(like->count()));
  Arrays<T> out;
  out.held.reserve(arrays.size());
  out.ptr.reserve(arrays.size());
  out.size.reserve(arrays.size());
  const auto want = py::dtype::of<T>();
  for (size_t i = 0; i < arrays.size(); ++i) {
    py::handle item = PyList_GET_ITEM(arrays.ptr(), py::ssize_t(i));  // borrowed: no refcount
    if (!py::isinstance<py::array>(item))
      throw py::type_error(item_name(name, i) + " is not an ndarray");
    auto a = py::reinterpret_borrow<py::array>(item);
    if (!a.dtype().is(want) && !a.dtype().equal(want))
      throw py::type_error(item_name(name, i) + " has the wrong dtype");
    if (!(a.flags() & py::array::c_style))
      throw py::value_error(item_name(name, i) + " is not C-contiguous");
    if (writable && !a.writeable()) throw py::value_error(item_name(name, i) + " is read-only");
    const int64_t n = int64_t(a.size());
    if (like && n != like->size[i])
      throw py::value_error(item_name(name, i) + " has " + std::to_string(n) + " elements but " +
                            item_name(like_name, i) + " has " + std::to_string(like->size[i]));
    out.ptr.push_back(static_cast<T*>(const_cast<void*>(a.data())));
    out.size.push_back(n);
    out.held.push_back(std::move(a));
  }
  return out;
}

// No array that is written shares a byte with any other array of the call (read-only ones may
// overlap each other): a kernel with aliased outputs would compute garbage in a race.
struct Span {
  uintptr_t begin, end;
  bool written;
};
template <class T>
void add_spans(std::vector<Span>& spans, const Arrays<T>& a, bool written) {
  for (size_t i = 0; i < a.count(); ++i)
    if (a.size[i] > 0)
      spans.push_back({uintptr_t(a.ptr[i]), uintptr_t(a.ptr[i] + a.size[i]), written});
}
void check_disjoint(std::vector<Span>& spans);  // cpu_common.cpp

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
