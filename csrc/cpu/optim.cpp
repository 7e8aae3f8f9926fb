// Fused optimizer updates on the CPU: one call for the whole list of arrays.
#include <stdexcept>

#include "common/optim_math.h"
#include "cpu_common.h"
#include "update_loop.h"

namespace fastopt {
namespace {

template <class R, class T>
FO_TARGET_AVX2 void update_avx2(T* p, const T* g, T* s1, T* s2, int64_t n, const OptimCoef<T>& k) {
  update_loop<R, T, int64_t>(p, g, s1, s2, n, k);
}
// AVX-512: the same loop on 512-bit vectors; only correctly rounded operations and no
// contraction (-ffp-contract=off), so the bits equal the other paths'.
template <class R, class T>
FO_TARGET_AVX512 void update_avx512(T* p, const T* g, T* s1, T* s2, int64_t n,
                                    const OptimCoef<T>& k) {
  update_loop<R, T, int64_t>(p, g, s1, s2, n, k);
}
template <class R, class T>
void update_base(T* p, const T* g, T* s1, T* s2, int64_t n, const OptimCoef<T>& k) {
  update_loop<R, T, int64_t>(p, g, s1, s2, n, k);
}

template <class R, class T>
void run(const py::list& params, const py::list& grads, const py::list& states,
         const std::vector<double>& scalars) {
  if (scalars.size() != kNumOptimScalars) throw py::value_error("wrong number of scalars");
  if (int(states.size()) != R::kStates)
    throw py::value_error("states must hold " + std::to_string(R::kStates) + " lists for this rule");
  const auto P = take_arrays<T>(params, "params", true);
  const auto G = take_arrays<T>(grads, "grads", false, &P, "params");
  std::vector<Arrays<T>> S;
  for (int s = 0; s < R::kStates; ++s)
    S.push_back(take_arrays<T>(states[s], s == 0 ? "states[0]" : "states[1]", true, &P, "params"));
  std::vector<Span> spans;
  spans.reserve(P.count() * (2 + R::kStates));
  add_spans(spans, P, true);
  add_spans(spans, G, false);
  for (const auto& st : S) add_spans(spans, st, true);
  check_disjoint(spans);
  const auto k = OptimCoef<T>::make(scalars.data());
  auto fn = cpu_has_avx512() ? &update_avx512<R, T>
             : cpu_has_avx2() ? &update_avx2<R, T> : &update_base<R, T>;
  int64_t total = 0;
  for (auto n : P.size) total += n;
  const auto chunks = make_chunks(P.size, kCpuChunk);
  T* const* s0 = R::kStates > 0 ? S[0].ptr.data() : nullptr;
  T* const* s1 = R::kStates > 1 ? S[1].ptr.data() : nullptr;
  py::gil_scoped_release nogil;
  parallel_chunks(chunks, total, [&](const Chunk& c) {
    const int64_t b = c.begin, a = c.array;
    fn(P.ptr[a] + b, G.ptr[a] + b, s0 ? s0[a] + b : nullptr, s1 ? s1[a] + b : nullptr,
       c.end - b, k);
  });
}

template <class R>
void run_dtype(const py::list& params, const py::list& grads, const py::list& states,
               const std::vector<double>& scalars) {
  if (params.size() == 0) return;
  if (!py::isinstance<py::array>(params[0])) throw py::type_error("params[0] is not an ndarray");
  auto first = py::reinterpret_borrow<py::array>(params[0]);
  if (first.dtype().equal(py::dtype::of<float>())) return run<R, float>(params, grads, states, scalars);
  if (first.dtype().equal(py::dtype::of<double>())) return run<R, double>(params, grads, states, scalars);
  throw py::type_error("params must be float32 or float64");
}

// `kernel`: a rule declaration's kernel name (fastopt/_rules), one of FASTOPT_OPTIM_RULES.
void optim_update(const std::string& kernel, const py::list& params, const py::list& grads,
                  const py::list& states, const std::vector<double>& scalars) {
#define FO_RULE_CASE(NAME, R) \
  if (kernel == #NAME) return run_dtype<R>(params, grads, states, scalars);
  FASTOPT_OPTIM_RULES(FO_RULE_CASE)
#undef FO_RULE_CASE
  throw py::value_error("unknown optimizer kernel: " + kernel);
}

}  // namespace

void bind_optim(py::module_& m) {
  m.def("optim_update", &optim_update, py::arg("kernel"), py::arg("params"), py::arg("grads"),
        py::arg("states"), py::arg("scalars"),
        "Fused in-place optimizer update over lists of arrays (one call, GIL released).");
}

}  // namespace fastopt
