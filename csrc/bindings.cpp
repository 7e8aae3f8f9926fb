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
  m.def("data_addresses", [](const py::list& arrays) {
    std::vector<uintptr_t> out;
    out.reserve(arrays.size());
    for (const auto& a : arrays) out.push_back(uintptr_t(py::cast<py::array>(a).data()));
    return out;
  }, "Data pointers of a list of ndarrays (fast argument validation).");
  fastopt::bind_optim(m);
  fastopt::bind_stream(m);
  fastopt::bind_norm(m);
  fastopt::bind_halton(m);
}
