// The pybind11 boundary of the CPU extension fastopt._C. Each kernel family binds its own
// functions; this file only gathers them.
#include <omp.h>

#include "cpu/cpu_common.h"

namespace fastopt {
void bind_optim(py::module_& m);
void bind_stream(py::module_& m);
void bind_norm(py::module_& m);
void bind_halton(py::module_& m);
void bind_compact(py::module_& m);
}  // namespace fastopt

namespace py = pybind11;

namespace {

// The Numba kernels' boundary, checked here at C++ speed: lists[k] must be like lists[0]
// (take_arrays: exact dtype, C-contiguous, the same element counts, writable where written).
// Returns each list's data addresses as an int64 array; the arrays must outlive their use.
template <class T>
py::list checked_addresses(const py::list& lists, const std::vector<std::string>& names,
                           const std::vector<bool>& written) {
  using namespace fastopt;
  py::list out;
  auto emit = [&](const Arrays<T>& a) {
    py::array_t<int64_t> r(static_cast<py::ssize_t>(a.count()));
    for (size_t i = 0; i < a.count(); ++i) r.mutable_data()[i] = int64_t(uintptr_t(a.ptr[i]));
    out.append(std::move(r));
  };
  const auto first = take_arrays<T>(lists[0], names[0].c_str(), written[0]);
  emit(first);
  for (size_t k = 1; k < lists.size(); ++k)
    emit(take_arrays<T>(lists[k], names[k].c_str(), written[k], &first, names[0].c_str()));
  return out;
}

py::list kernel_addresses(const py::list& lists, const std::vector<std::string>& names,
                          const std::vector<bool>& written) {
  if (lists.size() == 0 || names.size() != lists.size() || written.size() != lists.size())
    throw py::value_error("lists, names and written must have one entry per list");
  if (!py::isinstance<py::list>(lists[0])) throw py::type_error(names[0] + " must be a list");
  const auto first = py::reinterpret_borrow<py::list>(lists[0]);
  if (first.size() == 0) {
    py::list out;
    for (size_t k = 0; k < lists.size(); ++k) {
      if (!py::isinstance<py::list>(lists[k]) || py::len(lists[k]) != 0)
        throw py::value_error(names[k] + " must be empty like " + names[0]);
      out.append(py::array_t<int64_t>(0));
    }
    return out;
  }
  if (!py::isinstance<py::array>(first[0])) throw py::type_error(names[0] + "[0] is not an ndarray");
  const auto dt = py::reinterpret_borrow<py::array>(first[0]).dtype();
  if (dt.equal(py::dtype::of<float>())) return checked_addresses<float>(lists, names, written);
  if (dt.equal(py::dtype::of<double>())) return checked_addresses<double>(lists, names, written);
  throw py::type_error(names[0] + "[0] must be float32 or float64");
}

}  // namespace

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
  m.def("host_views", [](const py::list& owners, const std::vector<uintptr_t>& ptrs,
                         const py::list& like) -> py::list {
    // fastopt.torch's grads, viewed without torch's .numpy() (a few microseconds a tensor,
    // most of a step's Python time on a sharded model): view i is an ndarray of like[i]'s
    // dtype and shape over the memory at ptrs[i], C-contiguous, kept alive by owners[i] (its
    // base). The caller has checked that owners[i] holds that many contiguous elements of
    // that dtype at ptrs[i] (torch tensors' data_ptr(), dtype, shape and contiguity).
    const size_t n = like.size();
    if (owners.size() != n || ptrs.size() != n)
      throw py::value_error("owners, ptrs and like must have one entry per view");
    py::list out(n);
    for (size_t i = 0; i < n; ++i) {
      PyObject* a = PyList_GET_ITEM(like.ptr(), i);
      if (!py::isinstance<py::array>(a)) throw py::type_error("like holds ndarrays only");
      auto A = py::reinterpret_borrow<py::array>(a);
      std::vector<py::ssize_t> shape(A.shape(), A.shape() + A.ndim());
      if (ptrs[i] == 0 && A.size() != 0) throw py::value_error("a null pointer with elements");
      py::array v(A.dtype(), shape, reinterpret_cast<void*>(ptrs[i]),
                  py::reinterpret_borrow<py::object>(PyList_GET_ITEM(owners.ptr(), i)));
      PyList_SET_ITEM(out.ptr(), i, v.release().ptr());
    }
    return out;
  }, py::arg("owners"), py::arg("ptrs"), py::arg("like"),
     "ndarrays over foreign host memory, shaped and typed as like[i], based on owners[i].");
  m.def("kernel_addresses", &kernel_addresses, py::arg("lists"), py::arg("names"),
        py::arg("written"),
        "Checked data addresses for the Numba kernels: every list like the first (dtype, "
        "element counts, C-contiguous, writable where written), or an error naming the array.");
  fastopt::bind_optim(m);
  fastopt::bind_stream(m);
  fastopt::bind_norm(m);
  fastopt::bind_halton(m);
  fastopt::bind_compact(m);
}
