// Fused optimizer updates on the GPU: one launch covers a whole list of arrays (up to
// kMaxOptimArrays of them; more take one launch per group). The table of arrays travels in the
// kernel arguments; block b updates chunk b, found by a binary search over the arrays' first
// chunks. Inside a chunk: 16-byte vector loads and stores, then a scalar tail; indices are
// 64-bit. The per-element math is csrc/common/optim_math.h, the very code the CPU runs.
#include <memory>

#include "common/guard.h"
#include "common/optim_math.h"
#include "cuda/cuda_common.cuh"

namespace fastopt {
namespace cuda {
namespace {

constexpr int64_t kChunk = int64_t(1) << 16;  // elements per block
constexpr int kThreads = 256;
// Kernel arguments may hold 32764 bytes (CUDA >= 12.1, Volta and newer): 576 arrays fit
// beside a guarded step's rows of scalars.
constexpr int kMaxOptimArrays = 576;

template <class A>
struct OptimArgs {
  OptimCoef<A> k;
  const double* ctl;                  // a guarded step's control array, else null
  int32_t nrows;                      // guarded: the rows of scalars to pick from
  OptimCoef<A> rows[kGuardWindow];
  int32_t n;                          // arrays in this launch
  int32_t first[kMaxOptimArrays + 1];  // first chunk of each array; first[n] = chunks
  int64_t size[kMaxOptimArrays];
  void* ptr[4][kMaxOptimArrays];       // params, grads, state 1, state 2
};
static_assert(sizeof(OptimArgs<double>) <= 32764, "kernel arguments are limited to 32764 bytes");

// V elements of P per 16-byte word of the params: 4 float32, 2 float64, 8 float16/bfloat16
// (whose float32 state then takes two words per vector).
template <class R, class P>
__device__ FO_INLINE void update_chunk(P* __restrict__ p, const P* __restrict__ g,
                                       typename Arith<P>::type* __restrict__ s1,
                                       typename Arith<P>::type* __restrict__ s2, int64_t len,
                                       const OptimCoef<typename Arith<P>::type>& k) {
  using A = typename Arith<P>::type;
  constexpr int V = 16 / sizeof(P);
  int64_t i0 = 0;
  if (aligned16(p) && aligned16(g) && aligned16(s1) && aligned16(s2)) {
    const int64_t nv = len / V;
    for (int64_t v = threadIdx.x; v < nv; v += blockDim.x) {
      const int64_t i = v * V;
      P pv[V], gv[V];
      A a1[V] = {}, a2[V] = {};
      vload(pv, p + i);
      vload(gv, g + i);
      if (R::kStates > 0) vload(a1, s1 + i);
      if (R::kStates > 1) vload(a2, s2 + i);
#pragma unroll
      for (int e = 0; e < V; ++e) {
        A x = widen(pv[e]);
        R::apply(x, widen(gv[e]), a1[e], a2[e], k);
        pv[e] = narrow<P>(x);
      }
      vstore(p + i, pv);
      if (R::kStates > 0) vstore(s1 + i, a1);
      if (R::kStates > 1) vstore(s2 + i, a2);
    }
    i0 = nv * V;
  }
  for (int64_t i = i0 + threadIdx.x; i < len; i += blockDim.x) {  // tail, or unaligned arrays
    A x = widen(p[i]), a1 = R::kStates > 0 ? s1[i] : A(0), a2 = R::kStates > 1 ? s2[i] : A(0);
    R::apply(x, widen(g[i]), a1, a2, k);
    p[i] = narrow<P>(x);
    if (R::kStates > 0) s1[i] = a1;
    if (R::kStates > 1) s2[i] = a2;
  }
}

template <class R, class P>
__global__ void __launch_bounds__(kThreads)
optim_kernel(const __grid_constant__ OptimArgs<typename Arith<P>::type> a) {
  using A = typename Arith<P>::type;
  const int32_t c = int32_t(blockIdx.x);
  const int j = find_array(a.first, a.n, c);
  const int64_t begin = int64_t(c - a.first[j]) * kChunk;
  const int64_t len = a.size[j] - begin < kChunk ? a.size[j] - begin : kChunk;
  auto at = [&](int s) { return static_cast<A*>(a.ptr[s][j]) == nullptr
                                    ? nullptr : static_cast<A*>(a.ptr[s][j]) + begin; };
  OptimCoef<A> k = a.k;
  if (a.ctl) {  // guarded: the device decided (csrc/common/guard.h)
    if (a.ctl[kGSkipped] != 0.0) return;
    const int r = int(a.ctl[kGRow]);
    k = a.rows[r < 0 ? 0 : (r >= a.nrows ? a.nrows - 1 : r)];
    k.gscale = A(a.ctl[kGScale]);
  }
  update_chunk<R, P>(static_cast<P*>(a.ptr[0][j]) + begin,
                     static_cast<const P*>(a.ptr[1][j]) + begin, at(2), at(3), len, k);
}

// A guarded step's part of the launch: its control array and rows of scalars.
struct Guarded {
  const double* ctl;
  const std::vector<std::vector<double>>* rows;
};

template <class R, class P>
void launch(const Ptrs& params, const Ptrs& grads, const std::vector<Ptrs>& states,
            const Sizes& sizes, const std::vector<double>& scalars, cudaStream_t stream,
            const Guarded* guarded) {
  using A = typename Arith<P>::type;
  if (int(states.size()) != R::kStates) throw std::invalid_argument("wrong number of state lists");
  for (const auto& s : states)
    if (s.size() != params.size()) throw std::invalid_argument("state and params differ in length");
  if (grads.size() != params.size() || sizes.size() != params.size())
    throw std::invalid_argument("grads, sizes and params differ in length");
  if (scalars.size() != kNumOptimScalars) throw std::invalid_argument("wrong number of scalars");
  auto args = std::make_unique<OptimArgs<A>>();  // 28 KB: not on the stack
  OptimArgs<A>& a = *args;
  a.k = OptimCoef<A>::make(scalars.data());
  a.ctl = guarded ? guarded->ctl : nullptr;
  a.nrows = guarded ? int32_t(guarded->rows->size()) : 0;
  for (int32_t r = 0; r < a.nrows; ++r) {
    if ((*guarded->rows)[r].size() != kNumOptimScalars)
      throw std::invalid_argument("wrong number of scalars in a row");
    a.rows[r] = OptimCoef<A>::make((*guarded->rows)[r].data());
  }
  size_t i = 0;
  while (i < params.size()) {
    a.n = 0;
    int64_t chunks = 0;
    for (; i < params.size() && a.n < kMaxOptimArrays; ++i) {
      if (sizes[i] <= 0) continue;
      const int64_t nc = (sizes[i] + kChunk - 1) / kChunk;
      if (chunks + nc > INT32_MAX) break;  // next launch
      a.first[a.n] = int32_t(chunks);
      a.size[a.n] = sizes[i];
      a.ptr[0][a.n] = reinterpret_cast<void*>(params[i]);
      a.ptr[1][a.n] = reinterpret_cast<void*>(grads[i]);
      for (int s = 0; s < 2; ++s)
        a.ptr[2 + s][a.n] = s < R::kStates ? reinterpret_cast<void*>(states[s][i]) : nullptr;
      chunks += nc;
      ++a.n;
    }
    if (a.n == 0) continue;
    a.first[a.n] = int32_t(chunks);
    optim_kernel<R, P><<<unsigned(chunks), kThreads, 0, stream>>>(a);
    check(cudaGetLastError(), "optimizer kernel launch");
  }
}

template <class R>
void launch_dtype(DType dt, const Ptrs& params, const Ptrs& grads, const std::vector<Ptrs>& states,
                  const Sizes& sizes, const std::vector<double>& scalars, cudaStream_t stream,
                  const Guarded* g) {
  switch (dt) {
    case DType::kF32: return launch<R, float>(params, grads, states, sizes, scalars, stream, g);
    case DType::kF64: return launch<R, double>(params, grads, states, sizes, scalars, stream, g);
    case DType::kF16: return launch<R, __half>(params, grads, states, sizes, scalars, stream, g);
    case DType::kBF16:
      return launch<R, __nv_bfloat16>(params, grads, states, sizes, scalars, stream, g);
  }
  throw std::invalid_argument("unsupported dtype");
}

// `rule`: a rule declaration's kernel name (fastopt/_rules), one of FASTOPT_OPTIM_RULES.
void launch_rule(const std::string& rule, DType dt, const Ptrs& params, const Ptrs& grads,
                 const std::vector<Ptrs>& states, const Sizes& sizes,
                 const std::vector<double>& scalars, cudaStream_t st, const Guarded* g) {
#define FO_RULE_CASE(NAME, R) \
  if (rule == #NAME) return launch_dtype<R>(dt, params, grads, states, sizes, scalars, st, g);
  FASTOPT_OPTIM_RULES(FO_RULE_CASE)
#undef FO_RULE_CASE
  throw std::invalid_argument("unknown optimizer kernel: " + rule);
}

}  // namespace

void optim_update(int device, const std::string& rule, DType dt, const Ptrs& params,
                  const Ptrs& grads, const std::vector<Ptrs>& states, const Sizes& sizes,
                  const std::vector<double>& scalars, uintptr_t stream_handle) {
  if (params.empty()) return;
  DeviceGuard guard(device);
  launch_rule(rule, dt, params, grads, states, sizes, scalars, as_stream(stream_handle), nullptr);
}

void guarded_step(int device, const std::string& rule, DType dt, const Ptrs& params,
                  const Ptrs& grads, const std::vector<Ptrs>& states, const Sizes& sizes,
                  const std::vector<std::vector<double>>& rows, int64_t t_lo, double limit,
                  bool skip_nonfinite, uintptr_t ctl, int slot, double seq, uintptr_t mirror,
                  uintptr_t stream_handle) {
  if (rows.empty() || rows.size() > size_t(kGuardWindow))
    throw std::invalid_argument("a guarded step takes 1 to 16 rows of scalars");
  if (slot < 1 || slot > kGuardWindow) throw std::invalid_argument("slot out of range");
  if (grads.size() != params.size()) throw std::invalid_argument("grads and params differ");
  DeviceGuard guard(device);
  const cudaStream_t st = as_stream(stream_handle);
  double* c = reinterpret_cast<double*>(ctl);
  guard_norm(dt, grads, sizes, st, c, int(rows.size()), t_lo, limit, skip_nonfinite, slot, seq,
             reinterpret_cast<double*>(mirror));
  const Guarded g{c, &rows};
  launch_rule(rule, dt, params, grads, states, sizes, rows[0], st, &g);
}

}  // namespace cuda
}  // namespace fastopt
