// Scrambled, shifted Halton sequences on the GPU (SPEC §4), bit-identical to the CPU.
//
// One thread per row (point), looping over the dimensions, so that a warp works on one
// dimension at a time (same base, same digit count: no divergence). A thread block computes a
// tile of 256 rows x 16 dimensions into shared memory and then writes it row-major, coalesced.
// The terms t_k[digit] = pi_k[digit] * f_k live in shared memory when they fit. The fold is
// csrc/common/halton_math.h's: x = ((0 + t_0[q_0]) + t_1[q_1]) + ..., additions only, in this
// order (and the extension is compiled with --fmad=false besides).
#include <algorithm>
#include <vector>

#include "common/halton_math.h"
#include "cuda/cuda_common.cuh"

namespace fastopt {
namespace cuda {
namespace {

constexpr int kRows = 256;   // threads per block = rows per tile
constexpr int kGroup = 16;   // dimensions per tile
constexpr int kPitch = kGroup + 1;  // padded row of the staging tile (fewer bank conflicts)

// Division by a fixed 2 <= v < 2^31 for 32-bit dividends, the 32-bit twin of halton_math.h's
// DivBy (Granlund & Montgomery): once an index fits in 32 bits (always, for fewer than 2^32
// points), each digit costs one 32-bit multiply-high instead of a 64-bit one.
struct Div32 {
  uint32_t magic;  // 0: v is a power of two
  int32_t shift;
};

FO_HD FO_INLINE uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return uint32_t((uint64_t(a) * b) >> 32);
#endif
}

FO_HD FO_INLINE uint32_t div32(const Div32& d, uint32_t q) {
  if (d.magic == 0) return q >> d.shift;
  const uint32_t t = mulhi32(q, d.magic);
  return (((q - t) >> 1) + t) >> d.shift;
}

Div32 make_div32(uint32_t v) {
  const int bits = 32 - __builtin_clz(v);  // bit length of v
  if ((v & (v - 1)) == 0) return {0, bits - 1};
  const uint64_t m = ((uint64_t(1) << (32 + bits)) + v - 1) / v;  // ceil(2^(32+l) / v)
  return {uint32_t(m - (uint64_t(1) << 32)), bits - 1};
}

struct Dim {
  DivBy div;        // 64-bit division by the base
  Div32 div32;      // 32-bit division, valid when use32
  int64_t terms;    // offset of this dimension's terms
  int64_t w;        // entries per row (b, or fewer: narrow rows, see halton_slot)
  int32_t ndig;
  int32_t use32;    // full rows whose offsets fit in 32 bits
  double u;         // the shift
};

// The spec's fold over digit positions 0..ndig-1 of index i: halton_fold while the quotient
// needs 64 bits, then the same additions with 32-bit division. Narrow rows (calls of fewer
// rows than the base) take halton_fold with start's digits as the origins.
__device__ FO_INLINE double fold(const double* __restrict__ t, const Dim& D, uint64_t q,
                                 uint64_t start) {
  const uint32_t b = D.div.v;
  int k = 0;
  double x = 0.0;
  if (D.use32) {
    for (; k < D.ndig && (q >> 32); ++k) {
      const uint64_t h = div_by(D.div, q);
      x += t[int64_t(k) * b + int64_t(q - h * b)];
      q = h;
    }
    uint32_t q32 = uint32_t(q);
    for (; k < D.ndig; ++k) {
      const uint32_t h = div32(D.div32, q32);
      x += t[k * b + (q32 - h * b)];
      q32 = h;
    }
    return x;
  }
  return halton_fold(x, t, D.div, D.w, q, start, 0, D.ndig);
}

struct HaltonArgs {
  double* out;
  int64_t n, d;
  uint64_t start;
  const Dim* dims;
  const double* terms;
  int64_t nterms;
  bool shared_terms;
  bool shift;
};

template <bool Shift>
__global__ void __launch_bounds__(kRows) halton_kernel(const HaltonArgs a) {
  extern __shared__ double smem[];
  double* tile = smem;  // kRows x kPitch
  const double* T = a.terms;
  if (a.shared_terms) {
    double* st = smem + kRows * kPitch;
    for (int64_t e = threadIdx.x; e < a.nterms; e += blockDim.x) st[e] = a.terms[e];
    __syncthreads();
    T = st;
  }
  const int64_t tiles = (a.n + kRows - 1) / kRows;
  for (int64_t tl = blockIdx.x; tl < tiles; tl += gridDim.x) {
    const int64_t r0 = tl * kRows;
    const int rows = int(a.n - r0 < kRows ? a.n - r0 : kRows);
    const uint64_t i = a.start + uint64_t(r0) + threadIdx.x;
    for (int64_t j0 = 0; j0 < a.d; j0 += kGroup) {
      const int gn = int(a.d - j0 < kGroup ? a.d - j0 : kGroup);
      if (int(threadIdx.x) < rows)
        for (int g = 0; g < gn; ++g) {
          const Dim& D = a.dims[j0 + g];
          double x = fold(T + D.terms, D, i, a.start);
          if (Shift) x = halton_shift(x, D.u);
          tile[threadIdx.x * kPitch + g] = x;
        }
      __syncthreads();
      double* o = a.out + r0 * a.d + j0;
      for (int e = threadIdx.x; e < rows * gn; e += blockDim.x) {
        const int r = e / gn, g = e - r * gn;
        o[int64_t(r) * a.d + g] = tile[r * kPitch + g];
      }
      __syncthreads();
    }
  }
}

}  // namespace

uint32_t halton_div32(uint32_t v, uint32_t q) { return div32(make_div32(v), q); }

void halton(int device, uintptr_t out, int64_t n, int64_t d, uint64_t start, const int64_t* bases,
            const int64_t* ndig, const double* terms, int64_t nterms, const int64_t* offsets,
            const double* shift, uintptr_t stream) {
  if (n <= 0 || d <= 0) return;
  std::vector<Dim> dims(d);
  if (n > 1 && uint64_t(n - 1) > ~uint64_t(0) - start)
    throw std::invalid_argument("start + n exceeds 2**64");
  for (int64_t j = 0; j < d; ++j) {
    const int64_t b = bases[j], k = ndig[j];
    int64_t w = 0;
    if (const char* why = halton_check_dim(b, k, offsets[j], offsets[j + 1], nterms, n, &w))
      throw std::invalid_argument(why);
    Dim& D = dims[j];
    D.div = make_divby(uint32_t(b));
    D.w = w;
    D.use32 = w == b && b < (int64_t(1) << 31) && k * b < (int64_t(1) << 31);
    D.div32 = D.use32 ? make_div32(uint32_t(b)) : Div32{0, 0};
    D.terms = offsets[j];
    D.ndig = int32_t(k);
    D.u = shift ? shift[j] : 0.0;
  }
  DeviceGuard guard(device);
  const cudaStream_t st = as_stream(stream);
  // One upload: the dimension table, then the terms (8-byte aligned: Dim is).
  const size_t dim_bytes = sizeof(Dim) * size_t(d);
  std::vector<char> host(dim_bytes + sizeof(double) * size_t(nterms));
  memcpy(host.data(), dims.data(), dim_bytes);
  memcpy(host.data() + dim_bytes, terms, sizeof(double) * size_t(nterms));
  void* dev = nullptr;
  check(cudaMallocAsync(&dev, host.size(), st), "cudaMallocAsync");
  cudaError_t err = cudaMemcpyAsync(dev, host.data(), host.size(), cudaMemcpyHostToDevice, st);

  HaltonArgs a;
  a.out = reinterpret_cast<double*>(out);
  a.n = n;
  a.d = d;
  a.start = start;
  a.dims = static_cast<const Dim*>(dev);
  a.terms = reinterpret_cast<const double*>(static_cast<char*>(dev) + dim_bytes);
  a.nterms = nterms;
  a.shift = shift != nullptr;
  int dev_id = 0, optin = 0, sms = 1;
  if (err == cudaSuccess) err = cudaGetDevice(&dev_id);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev_id);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev_id);
  const size_t tile_bytes = sizeof(double) * kRows * kPitch;
  const size_t with_terms = tile_bytes + sizeof(double) * size_t(nterms);
  a.shared_terms = with_terms <= size_t(optin) && n >= 4 * kRows;
  const size_t smem = a.shared_terms ? with_terms : tile_bytes;
  auto kernel = a.shift ? &halton_kernel<true> : &halton_kernel<false>;
  if (err == cudaSuccess)
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  int per_sm = 1;
  if (err == cudaSuccess)
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kRows, smem);
  if (err == cudaSuccess) {
    const int64_t tiles = (n + kRows - 1) / kRows;
    const int64_t grid = std::min<int64_t>(tiles, int64_t(sms) * std::max(per_sm, 1));
    kernel<<<unsigned(grid), kRows, smem, st>>>(a);
    err = cudaGetLastError();
  }
  cudaFreeAsync(dev, st);  // in stream order: after the kernel has read the tables
  check(err, "halton kernel launch");
}

}  // namespace cuda
}  // namespace fastopt
