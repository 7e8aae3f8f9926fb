// The rule's element loop over float arrays (params, grads, up to two states), shared by the
// float32/float64 kernels (optim.cpp) and the compact kernels' tiles (compact.cpp). Unused state
// slots get dummies. Always inline: compiled once per instruction set by its callers.
#pragma once
#include <cstdint>

#include "common/optim_math.h"

namespace fastopt {

template <class R, class T, class N>
FO_INLINE void update_loop(T* __restrict p, const T* __restrict g, T* __restrict s1,
                           T* __restrict s2, N n, const OptimCoef<T>& k) {
  if constexpr (R::kStates == 0) {
#pragma omp simd
    for (N i = 0; i < n; ++i) {
      T pi = p[i], a = 0, b = 0;
      R::apply(pi, g[i], a, b, k);
      p[i] = pi;
    }
  } else if constexpr (R::kStates == 1) {
#pragma omp simd
    for (N i = 0; i < n; ++i) {
      T pi = p[i], a = s1[i], b = 0;
      R::apply(pi, g[i], a, b, k);
      p[i] = pi; s1[i] = a;
    }
  } else {
#pragma omp simd
    for (N i = 0; i < n; ++i) {
      T pi = p[i], a = s1[i], b = s2[i];
      R::apply(pi, g[i], a, b, k);
      p[i] = pi; s1[i] = a; s2[i] = b;
    }
  }
}

}  // namespace fastopt
