// The host-side entry points of the CUDA kernels, in plain C++ types so that the pybind11
// boundary (bindings.cpp, compiled by the host compiler) sees no kernel code. Pointers are
// device addresses and `stream` a cudaStream_t, both passed as integers: the Python layer
// reads them from __cuda_array_interface__ (or CuPy/PyTorch) and nothing is copied. `device`
// is the ordinal the arrays live on; it is made current for the call and restored after.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace fastopt {
namespace cuda {

enum class DType : int { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3 };

using Ptrs = std::vector<uintptr_t>;
using Sizes = std::vector<int64_t>;

// One fused step of `rule` over every array: one launch per kMaxOptimArrays arrays. States
// are float32 for 16-bit params, else the params' dtype. `scalars`: OPTIM_SCALARS order.
void optim_update(int device, const std::string& rule, DType dtype, const Ptrs& params,
                  const Ptrs& grads, const std::vector<Ptrs>& states, const Sizes& sizes,
                  const std::vector<double>& scalars, uintptr_t stream);

// A guarded step (fastopt/_reference/optim.py guarded_step): the norm of grads, then on the
// device the decisions of csrc/common/guard.h into ctl ((kGuardWindow + 1) x kGuardWidth
// float64 at that device address) and into the pinned host rows at `mirror` (0: none), then
// the update with scalars rows[count - t_lo] and the decided grad scale, or none when skipped.
// All on `stream`; nothing waits.
void guarded_step(int device, const std::string& rule, DType dtype, const Ptrs& params,
                  const Ptrs& grads, const std::vector<Ptrs>& states, const Sizes& sizes,
                  const std::vector<std::vector<double>>& rows, int64_t t_lo, double limit,
                  bool skip_nonfinite, uintptr_t ctl, int slot, double seq, uintptr_t mirror,
                  uintptr_t stream);

// The global norm of `arrays` into ctl[kGNorm] (a guarded step's norm pass with no limit and
// no skipping; the step count in ctl moves on, which a norm-only control array ignores).
void guarded_norm(int device, DType dtype, const Ptrs& arrays, const Sizes& sizes, uintptr_t ctl,
                  uintptr_t stream);

// Per array: the float64 sum of (scale*x)^2 in csrc/common/norm_math.h's fixed order and
// max |x| (0 unless want_max), copied to host_sum/host_max (length sizes.size()). Waits for
// the stream: the caller asked for numbers on the host.
void norm_partials(int device, DType dtype, const Ptrs& arrays, const Sizes& sizes,
                   double scale, bool want_max, uintptr_t stream, double* host_sum,
                   double* host_max);

// x <- A(factor) * x in place (A: float for 16-bit and float32, double for float64).
void norm_scale(int device, DType dtype, const Ptrs& arrays, const Sizes& sizes, double factor,
                uintptr_t stream);

// Rows start..start+n-1 of a Halton sequence into the (n, d) float64 device array at `out`,
// from the host tables of fastopt.halton.HaltonTables (shift may be null).
void halton(int device, uintptr_t out, int64_t n, int64_t d, uint64_t start,
            const int64_t* bases, const int64_t* ndig, const double* terms, int64_t nterms,
            const int64_t* offsets, const double* shift, uintptr_t stream);

// Host copy of the 32-bit division the Halton kernel uses (tests check it against `/`).
uint32_t halton_div32(uint32_t v, uint32_t q);

}  // namespace cuda
}  // namespace fastopt
