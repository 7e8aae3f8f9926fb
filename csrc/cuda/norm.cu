// Global-norm partials and in-place scaling on the GPU, deterministic to the bit.
//
// Stage 1: kNormLanes threads per norm block (csrc/common/norm_math.h): thread j of the group
// is lane j of the spec's order, adding the squares of elements j, j + L, ... in turn; the
// lanes then fold in halves through shuffles. Each block writes its own slot: no atomics, so
// the bits never depend on scheduling. Stage 2: one thread block per array folds that array's
// block sums in halves (norm_fold_pairwise's order) and takes the max. Every addition is the
// one the CPU kernels and fastopt/_reference/norm.py make, in the same order, so all backends
// agree bit for bit (the extension is compiled with --fmad=false: no product is fused into a
// sum).
#include <memory>
#include <vector>

#include "common/guard.h"
#include "common/norm_math.h"
#include "cuda/cuda_common.cuh"

namespace fastopt {
namespace cuda {
namespace {

constexpr int kWarps = 8;  // warps per thread block
constexpr int kMaxNormArrays = 1024;
constexpr int kFoldThreads = 256;
constexpr int kFoldShared = 2048;  // block sums folded in shared memory once this few remain

struct NormArgs {
  int32_t n;
  int32_t block_base;  // index of this launch's first block in the partial buffers
  int32_t array_base;  // index of this launch's first array in the outputs
  double scale;
  const double* dexp;  // non-null: scale = 2^*dexp read on the device, and no pass if 0
  double* bsum;
  double* bmax;
  double* out_sum;
  double* out_max;
  int32_t first[kMaxNormArrays + 1];  // first block of each array (local); first[n] = blocks
  int64_t size[kMaxNormArrays];
  const void* ptr[kMaxNormArrays];
};
static_assert(sizeof(NormArgs) <= 32764, "kernel arguments are limited to 32764 bytes");

template <class T> struct MaxType { using type = T; };  // the max runs in T, or float for
template <> struct MaxType<__half> { using type = float; };  // 16-bit (exact either way)
template <> struct MaxType<__nv_bfloat16> { using type = float; };

constexpr int kLanes = kNormLanes;
constexpr int kPerWarp = 32 / kLanes;  // norm blocks per warp: one per group of kLanes threads
static_assert(kLanes <= 32 && 32 % kLanes == 0, "a norm block's lanes must tile a warp");

template <class T, bool Scaled, bool WantMax>
__global__ void __launch_bounds__(32 * kWarps) partial_kernel(const __grid_constant__ NormArgs a) {
  using M = typename MaxType<T>::type;
  double scale = a.scale;
  if (a.dexp) {  // every thread reads the same value: the whole block leaves, or none does
    if (*a.dexp == 0.0) return;
    scale = ldexp(1.0, int(*a.dexp));
  }
  const int lane = threadIdx.x % kLanes;  // the spec's lane within this thread's norm block
  const int32_t b = int32_t(blockIdx.x * (kWarps * kPerWarp) + threadIdx.x / kLanes);
  const bool active = b < a.first[a.n];  // idle groups still take part in the shuffles
  int64_t n = 0;
  const T* __restrict__ x = nullptr;
  if (active) {
    const int j = find_array(a.first, a.n, b);
    const int64_t begin = int64_t(b - a.first[j]) * kNormBlock;
    n = a.size[j] - begin < kNormBlock ? a.size[j] - begin : kNormBlock;
    x = static_cast<const T*>(a.ptr[j]) + begin;
  }
  double acc = 0.0;
  M m = M(0);
  int64_t i = lane;
  constexpr int U = 8;  // rows in flight: the loads first, then the additions in order
  for (; i + (U - 1) * kLanes < n; i += U * kLanes) {
    T v[U];
#pragma unroll
    for (int r = 0; r < U; ++r) v[r] = x[i + r * kLanes];
#pragma unroll
    for (int r = 0; r < U; ++r) norm_lane_add<Scaled, WantMax>(acc, m, M(widen(v[r])), scale);
  }
  for (; i < n; i += kLanes) norm_lane_add<Scaled, WantMax>(acc, m, M(widen(x[i])), scale);
  for (int h = kLanes / 2; h >= 1; h /= 2) {  // norm_fold_lanes, within each group
    const double other = __shfl_down_sync(0xffffffffu, acc, h, kLanes);
    if (lane < h) acc = acc + other;
  }
  if (WantMax)
    for (int h = kLanes / 2; h >= 1; h /= 2) {  // max is exact and order-free
      const M o = __shfl_down_sync(0xffffffffu, m, h, kLanes);
      m = o > m ? o : m;
    }
  if (active && lane == 0) {
    a.bsum[a.block_base + b] = acc;
    if (WantMax) a.bmax[a.block_base + b] = double(m);
  }
}

// One thread block per array: v[j] += v[j + h] level by level (norm_fold_pairwise), in global
// memory while many sums remain, then in shared memory.
__global__ void __launch_bounds__(kFoldThreads) fold_kernel(const __grid_constant__ NormArgs a,
                                                            bool want_max) {
  __shared__ double sh[kFoldShared];
  __shared__ double red[kFoldThreads];
  if (a.dexp && *a.dexp == 0.0) return;  // the pass did not run
  const int j = blockIdx.x;
  double* v = a.bsum + a.block_base + a.first[j];
  int64_t n = a.first[j + 1] - a.first[j];
  int64_t w = 1;
  while (w < n) w *= 2;
  for (; w > kFoldShared; w /= 2) {
    const int64_t h = w / 2;
    for (int64_t t = threadIdx.x; t + h < n; t += blockDim.x) v[t] = v[t] + v[t + h];
    __syncthreads();
    if (n > h) n = h;
  }
  for (int64_t t = threadIdx.x; t < n; t += blockDim.x) sh[t] = v[t];
  __syncthreads();
  for (; w > 1; w /= 2) {
    const int64_t h = w / 2;
    for (int64_t t = threadIdx.x; t + h < n; t += blockDim.x) sh[t] = sh[t] + sh[t + h];
    __syncthreads();
    if (n > h) n = h;
  }
  if (threadIdx.x == 0) a.out_sum[a.array_base + j] = n ? sh[0] : 0.0;
  if (!want_max) return;
  const double* bm = a.bmax + a.block_base + a.first[j];
  const int64_t nb = a.first[j + 1] - a.first[j];
  double m = 0.0;
  for (int64_t t = threadIdx.x; t < nb; t += blockDim.x) m = fmax(m, bm[t]);
  red[threadIdx.x] = m;
  __syncthreads();
  for (int h = kFoldThreads / 2; h >= 1; h /= 2) {
    if (int(threadIdx.x) < h) red[threadIdx.x] = fmax(red[threadIdx.x], red[threadIdx.x + h]);
    __syncthreads();
  }
  if (threadIdx.x == 0) a.out_max[a.array_base + j] = red[0];
}

template <class T, bool Scaled, bool WantMax>
void launch_partials(const NormArgs& a, cudaStream_t st) {
  const int32_t blocks = a.first[a.n];
  constexpr int per = kWarps * kPerWarp;
  partial_kernel<T, Scaled, WantMax><<<unsigned((blocks + per - 1) / per), 32 * kWarps, 0, st>>>(a);
}

template <class T>
void partials_dtype(const NormArgs& a, bool scaled, bool want_max, cudaStream_t st) {
  if (scaled) {
    want_max ? launch_partials<T, true, true>(a, st) : launch_partials<T, true, false>(a, st);
  } else {
    want_max ? launch_partials<T, false, true>(a, st) : launch_partials<T, false, false>(a, st);
  }
}

// A device buffer allocated and freed in stream order.
struct StreamBuffer {
  void* p = nullptr;
  cudaStream_t st;
  StreamBuffer(size_t bytes, cudaStream_t s) : st(s) {
    if (bytes) check(cudaMallocAsync(&p, bytes, st), "cudaMallocAsync");
  }
  ~StreamBuffer() {
    if (p) cudaFreeAsync(p, st);
  }
};

// The arrays of one launch: [i, end) with end as far as the table allows. Empty arrays take
// no block (their sum is 0). Returns the next array index.
size_t fill(NormArgs& a, const Ptrs& arrays, const Sizes& sizes, size_t i, int64_t block_base,
            int64_t block_limit) {
  a.n = 0;
  a.array_base = int32_t(i);
  a.block_base = int32_t(block_base);
  int64_t blocks = 0;
  for (; i < arrays.size() && a.n < kMaxNormArrays; ++i) {
    const int64_t nb = (sizes[i] + kNormBlock - 1) / kNormBlock;
    if (blocks + nb > block_limit && a.n > 0) break;
    a.first[a.n] = int32_t(blocks);
    a.size[a.n] = sizes[i];
    a.ptr[a.n] = reinterpret_cast<const void*>(arrays[i]);
    blocks += nb;
    ++a.n;
  }
  a.first[a.n] = int32_t(blocks);
  return i;
}

// Enqueues the passes for every array into out_sum/out_max (2 * arrays.size() doubles on the
// device; each array's float64 sum of squares and max |x|). dexp: see NormArgs.
void enqueue_partials(DType dt, const Ptrs& arrays, const Sizes& sizes, double scale,
                      const double* dexp, bool want_max, cudaStream_t st, double* out) {
  const size_t na = arrays.size();
  int64_t total_blocks = 0;
  for (auto s : sizes) total_blocks += (s + kNormBlock - 1) / kNormBlock;
  if (total_blocks >= INT32_MAX / 2) throw std::invalid_argument("too many elements for one call");
  StreamBuffer buf(2 * total_blocks * sizeof(double), st);  // freed in stream order
  auto args = std::make_unique<NormArgs>();  // 20 KB: not on the stack
  NormArgs& a = *args;
  a.scale = scale;
  a.dexp = dexp;
  a.bsum = static_cast<double*>(buf.p);
  a.bmax = a.bsum + total_blocks;
  a.out_sum = out;
  a.out_max = out + na;
  check(cudaMemsetAsync(out, 0, 2 * na * sizeof(double), st), "cudaMemsetAsync");
  const bool scaled = dexp != nullptr || scale != 1.0;
  int64_t block_base = 0;
  for (size_t i = 0; i < na;) {
    i = fill(a, arrays, sizes, i, block_base, INT32_MAX / 2);
    if (a.first[a.n] > 0) {
      switch (dt) {
        case DType::kF32: partials_dtype<float>(a, scaled, want_max, st); break;
        case DType::kF64: partials_dtype<double>(a, scaled, want_max, st); break;
        case DType::kF16: partials_dtype<__half>(a, scaled, want_max, st); break;
        case DType::kBF16: partials_dtype<__nv_bfloat16>(a, scaled, want_max, st); break;
      }
      check(cudaGetLastError(), "norm kernel launch");
      fold_kernel<<<unsigned(a.n), kFoldThreads, 0, st>>>(a, want_max);
      check(cudaGetLastError(), "norm fold launch");
    }
    block_base += a.first[a.n];
  }
}

// One thread: the arrays' sums -> the norm (fastopt.norm's order and rules) -> the guarded
// step's decisions. First pass: sums and maxes at scale 1; the rescaled pass (float64 only)
// runs when this sets a nonzero exponent, and its own call then decides.
__global__ void guard_finish_kernel(double* sums, const double* maxes, int na, bool second,
                                    double* ctl, int nrows, double t_lo, double limit,
                                    bool skip_nonfinite, int slot, double seq, double* mirror) {
  const double total = norm_fold_pairwise(sums, na);
  double norm;
  if (!second) {
    double mx = 0.0;
    for (int j = 0; j < na; ++j) mx = fmax(mx, maxes[j]);
    const int exp = norm_sum_is_safe(total) ? 0 : norm_rescale_exp(total, mx);
    ctl[kGExp] = exp;
    ctl[kGMaxabs] = mx;
    if (exp != 0) return;
    norm = norm_finish(total, mx, 0);  // sqrt(total), NaN or inf
  } else {
    if (ctl[kGExp] == 0.0) return;
    norm = norm_finish(total, ctl[kGMaxabs], int(ctl[kGExp]));
  }
  guard_decide(ctl, norm, nrows, t_lo, limit, skip_nonfinite, slot, seq, mirror);
}

}  // namespace

void norm_partials(int device, DType dt, const Ptrs& arrays, const Sizes& sizes, double scale,
                   bool want_max, uintptr_t stream, double* host_sum, double* host_max) {
  const size_t na = arrays.size();
  if (sizes.size() != na) throw std::invalid_argument("arrays and sizes differ in length");
  for (size_t i = 0; i < na; ++i) host_sum[i] = host_max[i] = 0.0;
  if (na == 0) return;
  DeviceGuard guard(device);
  const cudaStream_t st = as_stream(stream);
  StreamBuffer out(2 * na * sizeof(double), st);
  enqueue_partials(dt, arrays, sizes, scale, nullptr, want_max, st, static_cast<double*>(out.p));
  std::vector<double> host(2 * na);
  check(cudaMemcpyAsync(host.data(), out.p, 2 * na * sizeof(double), cudaMemcpyDeviceToHost,
                        st), "cudaMemcpyAsync");
  check(cudaStreamSynchronize(st), "cudaStreamSynchronize");
  for (size_t i = 0; i < na; ++i) {
    host_sum[i] = host[i];
    host_max[i] = want_max ? host[na + i] : 0.0;
  }
}

void guard_norm(DType dt, const Ptrs& grads, const Sizes& sizes, cudaStream_t st, double* ctl,
                int nrows, int64_t t_lo, double limit, bool skip_nonfinite, int slot, double seq,
                double* mirror) {
  const size_t na = grads.size();
  StreamBuffer out(2 * (na ? na : 1) * sizeof(double), st);
  double* sums = static_cast<double*>(out.p);
  // Squares of 32-bit and narrower values cannot overflow or underflow in float64: their first
  // pass always decides. float64 may need the rescaled pass, which the device turns on.
  const int passes = dt == DType::kF64 ? 2 : 1;
  for (int pass = 0; pass < passes; ++pass) {
    if (na) enqueue_partials(dt, grads, sizes, 1.0, pass ? ctl + kGExp : nullptr, pass == 0, st,
                             sums);
    else check(cudaMemsetAsync(sums, 0, 2 * sizeof(double), st), "cudaMemsetAsync");
    guard_finish_kernel<<<1, 1, 0, st>>>(sums, sums + na, int(na), pass == 1, ctl, nrows,
                                         double(t_lo), limit, skip_nonfinite, slot, seq,
                                         mirror);
    check(cudaGetLastError(), "guard kernel launch");
  }
}

void guarded_norm(int device, DType dt, const Ptrs& arrays, const Sizes& sizes, uintptr_t ctl,
                  uintptr_t stream) {
  if (sizes.size() != arrays.size()) throw std::invalid_argument("arrays and sizes differ");
  if (arrays.empty()) return;
  DeviceGuard guard(device);
  guard_norm(dt, arrays, sizes, as_stream(stream), reinterpret_cast<double*>(ctl), 1, 0,
             INFINITY, false, 1, 0.0, nullptr);
}

// -- x <- s x --------------------------------------------------------------------------------

namespace {

constexpr int64_t kScaleChunk = int64_t(1) << 16;
constexpr int kMaxScaleArrays = 1536;

struct ScaleArgs {
  double factor;
  int32_t n;
  int32_t first[kMaxScaleArrays + 1];
  int64_t size[kMaxScaleArrays];
  void* ptr[kMaxScaleArrays];
};
static_assert(sizeof(ScaleArgs) <= 32764, "kernel arguments are limited to 32764 bytes");

template <class P>
__global__ void __launch_bounds__(256) scale_kernel(const __grid_constant__ ScaleArgs a) {
  using A = typename Arith<P>::type;
  constexpr int V = 16 / sizeof(P);
  const A s = A(a.factor);
  const int32_t c = int32_t(blockIdx.x);
  const int j = find_array(a.first, a.n, c);
  const int64_t begin = int64_t(c - a.first[j]) * kScaleChunk;
  const int64_t len = a.size[j] - begin < kScaleChunk ? a.size[j] - begin : kScaleChunk;
  P* __restrict__ x = static_cast<P*>(a.ptr[j]) + begin;
  int64_t i0 = 0;
  if (aligned16(x)) {
    const int64_t nv = len / V;
    for (int64_t v = threadIdx.x; v < nv; v += blockDim.x) {
      P xv[V];
      vload(xv, x + v * V);
#pragma unroll
      for (int e = 0; e < V; ++e) xv[e] = narrow<P>(s * widen(xv[e]));
      vstore(x + v * V, xv);
    }
    i0 = nv * V;
  }
  for (int64_t i = i0 + threadIdx.x; i < len; i += blockDim.x) x[i] = narrow<P>(s * widen(x[i]));
}

template <class P>
void scale_launch(const Ptrs& arrays, const Sizes& sizes, double factor, cudaStream_t st) {
  auto args = std::make_unique<ScaleArgs>();
  ScaleArgs& a = *args;
  a.factor = factor;
  for (size_t i = 0; i < arrays.size();) {
    a.n = 0;
    int64_t chunks = 0;
    for (; i < arrays.size() && a.n < kMaxScaleArrays; ++i) {
      if (sizes[i] <= 0) continue;
      const int64_t nc = (sizes[i] + kScaleChunk - 1) / kScaleChunk;
      if (chunks + nc > INT32_MAX) break;
      a.first[a.n] = int32_t(chunks);
      a.size[a.n] = sizes[i];
      a.ptr[a.n] = reinterpret_cast<void*>(arrays[i]);
      chunks += nc;
      ++a.n;
    }
    if (a.n == 0) continue;
    a.first[a.n] = int32_t(chunks);
    scale_kernel<P><<<unsigned(chunks), 256, 0, st>>>(a);
    check(cudaGetLastError(), "scale kernel launch");
  }
}

}  // namespace

void norm_scale(int device, DType dt, const Ptrs& arrays, const Sizes& sizes, double factor,
                uintptr_t stream) {
  if (sizes.size() != arrays.size()) throw std::invalid_argument("arrays and sizes differ");
  if (arrays.empty()) return;
  DeviceGuard guard(device);
  const cudaStream_t st = as_stream(stream);
  switch (dt) {
    case DType::kF32: return scale_launch<float>(arrays, sizes, factor, st);
    case DType::kF64: return scale_launch<double>(arrays, sizes, factor, st);
    case DType::kF16: return scale_launch<__half>(arrays, sizes, factor, st);
    case DType::kBF16: return scale_launch<__nv_bfloat16>(arrays, sizes, factor, st);
  }
}

}  // namespace cuda
}  // namespace fastopt
