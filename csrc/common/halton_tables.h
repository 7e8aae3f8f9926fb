// The Halton tables as the host bindings receive them from fastopt/halton.py, checked once for
// both extensions (CPU and CUDA): exact dtypes, C order, lengths; never converted or copied.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "common/halton_math.h"

namespace fastopt {

struct HaltonHostTables {
  const int64_t *bases, *ndig, *offsets;
  const double *terms, *shift;  // shift is nullptr when there is none
  int64_t nterms;
};

template <class T>
const T* checked_table(const pybind11::array& a, const char* name, int64_t size) {
  namespace py = pybind11;
  if (!a.dtype().equal(py::dtype::of<T>()))
    throw py::type_error(std::string(name) + " has the wrong dtype");
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + " is not C-contiguous");
  if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
    throw py::value_error(std::string(name) + " is not aligned");
  if (size >= 0 && a.size() != size)
    throw py::value_error(std::string(name) + " has the wrong length");
  return static_cast<const T*>(a.data());
}

inline HaltonHostTables halton_tables(const pybind11::array& bases, const pybind11::array& ndig,
                                      const pybind11::array& terms,
                                      const pybind11::array& offsets,
                                      const pybind11::array& shift, int64_t n, int64_t d,
                                      uint64_t start) {
  const bool has_shift = shift.size() > 0;
  HaltonHostTables t{checked_table<int64_t>(bases, "bases", d),
                     checked_table<int64_t>(ndig, "ndig", d),
                     checked_table<int64_t>(offsets, "offsets", d + 1),
                     checked_table<double>(terms, "terms", -1),
                     checked_table<double>(shift, "shift", has_shift ? d : 0),
                     int64_t(terms.size())};
  if (!has_shift) t.shift = nullptr;
  if (n < 0 || d < 0) throw pybind11::value_error("n and d must be >= 0");
  if (n > 1 && uint64_t(n - 1) > ~uint64_t(0) - start)
    throw pybind11::value_error("start + n exceeds 2**64");
  for (int64_t j = 0, w; j < d; ++j)
    if (const char* why = halton_check_dim(t.bases[j], t.ndig[j], t.offsets[j], t.offsets[j + 1],
                                           t.nterms, n, &w))
      throw pybind11::value_error(std::string(why) + " (dimension " + std::to_string(j) + ")");
  return t;
}

}  // namespace fastopt
