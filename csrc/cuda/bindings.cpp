// The pybind11 boundary of the CUDA extension fastopt._C_cuda. Arrays arrive as device
// addresses (integers) read by fastopt/_cuda.py from __cuda_array_interface__, CuPy or
// PyTorch, after fastopt/_validate.py checked them; nothing here copies or converts an array.
// Importing this module needs no GPU: the CUDA runtime is linked statically and only asked
// for a device when a function is called.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include <cuda_runtime_api.h>

#include "common/guard.h"
#include "common/halton_tables.h"
#include "cuda/launch.h"

namespace py = pybind11;
using namespace fastopt::cuda;

namespace {

int device_count(std::string* error) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (error) *error = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
    cudaGetLastError();  // clear it
    return 0;
  }
  if (n == 0 && error) *error = "cudaGetDeviceCount found no device";
  return n;
}

int pointer_device(uintptr_t ptr) {
  cudaPointerAttributes attr;
  const cudaError_t e = cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(ptr));
  if (e != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged ? attr.device : -1;
}

std::string runtime_version() {
  int rt = 0, drv = 0;
  cudaRuntimeGetVersion(&rt);
  cudaDriverGetVersion(&drv);
  return "runtime " + std::to_string(rt) + ", driver " + std::to_string(drv);
}

DType dtype_of(const std::string& name) {
  if (name == "float32") return DType::kF32;
  if (name == "float64") return DType::kF64;
  if (name == "float16") return DType::kF16;
  if (name == "bfloat16") return DType::kBF16;
  throw py::type_error("unsupported dtype for the CUDA kernels: " + name);
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "fastopt CUDA kernels; use the public fastopt API instead";
  m.def("device_count", [] {
    std::string err;
    const int n = device_count(&err);
    return py::make_tuple(n, err);
  }, "(number of CUDA devices, the runtime's message when there are none).");
  m.def("pointer_device", &pointer_device, py::arg("ptr"),
        "Device ordinal owning a device address, -1 if unknown.");
  m.def("runtime_version", &runtime_version);
  m.def("optim_update", [](int device, const std::string& rule, const std::string& dtype,
                           const Ptrs& params, const Ptrs& grads, const std::vector<Ptrs>& states,
                           const Sizes& sizes, const std::vector<double>& scalars,
                           uintptr_t stream) {
    const DType dt = dtype_of(dtype);
    py::gil_scoped_release nogil;
    optim_update(device, rule, dt, params, grads, states, sizes, scalars, stream);
  }, py::arg("device"), py::arg("rule"), py::arg("dtype"), py::arg("params"), py::arg("grads"),
     py::arg("states"), py::arg("sizes"), py::arg("scalars"), py::arg("stream"),
     "Fused optimizer update over device arrays given by address (one launch per 640 arrays).");
  m.def("guarded_step", [](int device, const std::string& rule, const std::string& dtype,
                           const Ptrs& params, const Ptrs& grads, const std::vector<Ptrs>& states,
                           const Sizes& sizes, const std::vector<std::vector<double>>& rows,
                           int64_t t_lo, double limit, bool skip_nonfinite, uintptr_t ctl,
                           int slot, double seq, uintptr_t mirror, uintptr_t stream) {
    const DType dt = dtype_of(dtype);
    py::gil_scoped_release nogil;
    guarded_step(device, rule, dt, params, grads, states, sizes, rows, t_lo, limit,
                 skip_nonfinite, ctl, slot, seq, mirror, stream);
  }, py::arg("device"), py::arg("rule"), py::arg("dtype"), py::arg("params"), py::arg("grads"),
     py::arg("states"), py::arg("sizes"), py::arg("rows"), py::arg("t_lo"), py::arg("limit"),
     py::arg("skip_nonfinite"), py::arg("ctl"), py::arg("slot"), py::arg("seq"),
     py::arg("mirror"), py::arg("stream"),
     "A guarded step: norm, clip/skip/count decisions and update on the device, no waiting.");
  m.def("guarded_norm", [](int device, const std::string& dtype, const Ptrs& arrays,
                           const Sizes& sizes, uintptr_t ctl, uintptr_t stream) {
    const DType dt = dtype_of(dtype);
    py::gil_scoped_release nogil;
    guarded_norm(device, dt, arrays, sizes, ctl, stream);
  }, py::arg("device"), py::arg("dtype"), py::arg("arrays"), py::arg("sizes"), py::arg("ctl"),
     py::arg("stream"), "The global norm into the control array's row 0 (no waiting).");
  m.attr("guard_window") = fastopt::kGuardWindow;
  m.attr("guard_width") = fastopt::kGuardWidth;
  m.def("norm_partials", [](int device, const std::string& dtype, const Ptrs& arrays,
                            const Sizes& sizes, double scale, bool want_max, uintptr_t stream) {
    const DType dt = dtype_of(dtype);
    py::array_t<double> sums(py::ssize_t(arrays.size())), maxes(py::ssize_t(arrays.size()));
    double* s = sums.mutable_data();
    double* x = maxes.mutable_data();
    {
      py::gil_scoped_release nogil;
      norm_partials(device, dt, arrays, sizes, scale, want_max, stream, s, x);
    }
    return py::make_tuple(sums, maxes);
  }, py::arg("device"), py::arg("dtype"), py::arg("arrays"), py::arg("sizes"), py::arg("scale"),
     py::arg("want_max"), py::arg("stream"),
     "Per array: float64 sum of (scale*x)^2 in the fixed block/lane order and max |x|.");
  m.def("norm_scale", [](int device, const std::string& dtype, const Ptrs& arrays,
                         const Sizes& sizes, double factor, uintptr_t stream) {
    const DType dt = dtype_of(dtype);
    py::gil_scoped_release nogil;
    norm_scale(device, dt, arrays, sizes, factor, stream);
  }, py::arg("device"), py::arg("dtype"), py::arg("arrays"), py::arg("sizes"),
     py::arg("factor"), py::arg("stream"), "x <- factor * x in place for every array.");
  m.def("halton", [](int device, uintptr_t out, int64_t n, int64_t d, uint64_t start,
                     const py::array& bases, const py::array& ndig, const py::array& terms,
                     const py::array& offsets, const py::array& shift, uintptr_t stream) {
    const auto t = fastopt::halton_tables(bases, ndig, terms, offsets, shift, n, d, start);
    py::gil_scoped_release nogil;
    halton(device, out, n, d, start, t.bases, t.ndig, t.terms, t.nterms, t.offsets, t.shift,
           stream);
  }, py::arg("device"), py::arg("out"), py::arg("n"), py::arg("d"), py::arg("start"),
     py::arg("bases"), py::arg("ndig"), py::arg("terms"), py::arg("offsets"), py::arg("shift"),
     py::arg("stream"), "Rows start..start+n-1 of a Halton sequence into the device array out.");
  m.def("halton_div32", &halton_div32, py::arg("v"), py::arg("q"),
        "The Halton kernel's 32-bit division, run on the host (for tests).");
}
