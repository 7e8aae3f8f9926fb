// The pybind11 boundary of the CPU extension fastopt._C. Each kernel family binds its own
// functions; this file only gathers them.
#include <omp.h>

#include "cpu/cpu_common.h"

namespace fastopt {
void bind_optim(py::module_& m);
void bind_stream(py::module_& m);
void bind_norm(py::module_& m);
void bind_halton(py::module_& m);
}  // namespace fastopt

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastopt CPU kernels (C++/OpenMP); use the public fastopt API instead";
  m.def("simd_level", &fastopt::simd_level, "Instruction set chosen at run time.");
  m.def("num_threads", [] { return omp_get_max_threads(); }, "OpenMP threads a kernel uses.");
  m.def("set_num_threads", [](int n) {
    if (n < 1 || n > 4096) throw py::value_error("n must be in [1, 4096]");
    omp_set_num_threads(n);
  }, py::arg("n"), "OpenMP threads for kernels called from this thread (tests vary it).");
  m.def("data_addresses", [](const py::list& arrays) {
    std::vector<uintptr_t> out;
    out.reserve(arrays.size());
    for (const auto& a : arrays) {
      if (!py::isinstance<py::array>(a)) throw py::type_error("data_addresses takes ndarrays");
      out.push_back(uintptr_t(py::reinterpret_borrow<py::array>(a).data()));
    }
    return out;
  }, "Data pointers of a list of ndarrays (fast argument validation).");
  m.def("like_addresses", [](const py::list& ref, const py::list& other) -> py::object {
    // The optimizers' per-step check in one pass: other[i] is exactly an ndarray of ref[i]'s
    // dtype and shape, C-contiguous, and ref[i] is still writable. Returns other's data
    // addresses, or None when anything differs (Python's detailed checks then say what).
    const size_t n = ref.size();
    if (other.size() != n) return py::none();
    auto* nd_type = reinterpret_cast<PyObject*>(py::detail::npy_api::get().PyArray_Type_);
    py::array_t<int64_t> out(static_cast<py::ssize_t>(n));
    int64_t* o = out.mutable_data();
    for (size_t i = 0; i < n; ++i) {
      PyObject* a = PyList_GET_ITEM(ref.ptr(), i);
      PyObject* b = PyList_GET_ITEM(other.ptr(), i);
      if (reinterpret_cast<PyObject*>(Py_TYPE(a)) != nd_type ||
          reinterpret_cast<PyObject*>(Py_TYPE(b)) != nd_type)
        return py::none();
      auto A = py::reinterpret_borrow<py::array>(a), B = py::reinterpret_borrow<py::array>(b);
      if (A.dtype().ptr() != B.dtype().ptr() || A.ndim() != B.ndim() || !A.writeable() ||
          !(B.flags() & py::array::c_style))
        return py::none();
      for (py::ssize_t k = 0; k < A.ndim(); ++k)
        if (A.shape(k) != B.shape(k)) return py::none();
      o[i] = int64_t(reinterpret_cast<uintptr_t>(B.data()));
    }
    return std::move(out);
  }, py::arg("ref"), py::arg("other"),
     "other's data addresses if it matches ref array by array (type, dtype, shape, "
     "C-contiguous; ref writable), else None.");
  fastopt::bind_optim(m);
  fastopt::bind_stream(m);
  fastopt::bind_norm(m);
  fastopt::bind_halton(m);
}
