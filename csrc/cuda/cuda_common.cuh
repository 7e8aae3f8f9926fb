// CUDA-side plumbing shared by the kernel families: error checks, the storage types and their
// arithmetic types, 16-byte vector loads, and the per-launch array tables.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/macros.h"
#include "cuda/launch.h"

namespace fastopt {
namespace cuda {

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("fastopt CUDA: ") + what + ": " + cudaGetErrorString(e));
}

inline cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

// Storage type -> arithmetic type: float for float32 and the 16-bit types, double for float64
// (SPEC §2). Optimizer state is kept in the arithmetic type.
template <class P> struct Arith { using type = P; };
template <> struct Arith<__half> { using type = float; };
template <> struct Arith<__nv_bfloat16> { using type = float; };

template <class A> __device__ FO_INLINE A widen(A x) { return x; }
__device__ FO_INLINE float widen(__half x) { return __half2float(x); }
__device__ FO_INLINE float widen(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class P, class A> __device__ FO_INLINE P narrow(A x) { return P(x); }
template <> __device__ FO_INLINE __half narrow<__half, float>(float x) {
  return __float2half_rn(x);
}
template <> __device__ FO_INLINE __nv_bfloat16 narrow<__nv_bfloat16, float>(float x) {
  return __float2bfloat16_rn(x);
}

// V elements of T through 16-byte transactions (V * sizeof(T) a multiple of 16, src aligned).
template <class T, int V>
__device__ FO_INLINE void vload(T (&dst)[V], const T* __restrict__ src) {
  static_assert((V * sizeof(T)) % 16 == 0, "whole 16-byte words only");
#pragma unroll
  for (int w = 0; w < int(V * sizeof(T) / 16); ++w) {
    const uint4 word = reinterpret_cast<const uint4*>(src)[w];
    memcpy(reinterpret_cast<char*>(dst) + 16 * w, &word, 16);
  }
}
template <class T, int V>
__device__ FO_INLINE void vstore(T* __restrict__ dst, const T (&src)[V]) {
#pragma unroll
  for (int w = 0; w < int(V * sizeof(T) / 16); ++w) {
    uint4 word;
    memcpy(&word, reinterpret_cast<const char*>(src) + 16 * w, 16);
    reinterpret_cast<uint4*>(dst)[w] = word;
  }
}

__device__ FO_INLINE bool aligned16(const void* p) { return (uintptr_t(p) & 15) == 0; }

// Index of the last entry of first[0..n) that is <= c (first is ascending, first[0] = 0):
// which array a chunk or block of a multi-array launch belongs to.
__device__ FO_INLINE int find_array(const int32_t* first, int n, int32_t c) {
  int lo = 0, hi = n;
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (first[mid] <= c) lo = mid; else hi = mid;
  }
  return lo;
}

// Makes `device` current for a scope (kernels launch on the current device) and restores it.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&old_), "cudaGetDevice");
    if (device != old_) check(cudaSetDevice(device), "cudaSetDevice");
    else old_ = -1;
  }
  ~DeviceGuard() {
    if (old_ >= 0) cudaSetDevice(old_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int old_ = -1;
};

// The norm pass of a guarded step (norm.cu): grads' norm and the clip/skip/count decisions
// into the control array ctl and its host mirror (csrc/common/guard.h), all enqueued on st;
// nothing waits.
void guard_norm(DType dt, const Ptrs& grads, const Sizes& sizes, cudaStream_t st, double* ctl,
                int nrows, int64_t t_lo, double limit, bool skip_nonfinite, int slot, double seq,
                double* mirror);

}  // namespace cuda
}  // namespace fastopt
