// The math of one element of each optimizer update (SPEC §2), apart from the loop over memory.
// A is the arithmetic type (float for float32/16-bit storage, double for float64). Scalars are
// computed in float64 on the host and rounded to A once, here.
#pragma once
#include "macros.h"

namespace fastopt {

// Order of the host scalars; must match fastopt._core.OPTIM_SCALARS.
enum OptimScalar { kLr, kWd, kGscale, kMomentum, kRho, kBeta1, kBeta2, kEps, kAlpha, kC, kDecay,
                   kNm, kNg, kEpsOut, kLrOut, kNumOptimScalars };

template <class A>
struct OptimCoef {
  A lr, wd, gscale, momentum, rho, omrho, beta1, omb1, beta2, omb2, eps, alpha, c, decay;
  A nm, ng, eps_out, lr_out;  // NAdam numerator; RMSProp's outer eps and lr (see fastopt._core)
  FO_HD static OptimCoef make(const double* s) {
    OptimCoef k;
    k.lr = A(s[kLr]); k.wd = A(s[kWd]); k.gscale = A(s[kGscale]); k.momentum = A(s[kMomentum]);
    k.rho = A(s[kRho]); k.omrho = A(1.0 - s[kRho]);
    k.beta1 = A(s[kBeta1]); k.omb1 = A(1.0 - s[kBeta1]);
    k.beta2 = A(s[kBeta2]); k.omb2 = A(1.0 - s[kBeta2]);
    k.eps = A(s[kEps]); k.alpha = A(s[kAlpha]); k.c = A(s[kC]); k.decay = A(s[kDecay]);
    k.nm = A(s[kNm]); k.ng = A(s[kNg]); k.eps_out = A(s[kEpsOut]); k.lr_out = A(s[kLrOut]);
    return k;
  }
};

// g <- s*g + wd*theta: clipping/loss scale and coupled (L2) weight decay, folded into the pass.
template <class A>
FO_HD FO_INLINE A effective_grad(A p, A g, const OptimCoef<A>& k) { return k.gscale * g + k.wd * p; }

struct Sgd {
  static constexpr int kStates = 0;
  template <class A>
  FO_HD FO_INLINE static void apply(A& p, A g, A&, A&, const OptimCoef<A>& k) {
    p = p - k.lr * effective_grad(p, g, k);
  }
};

// Heavy ball: v <- gamma v + g; theta <- theta - lr v. Nesterov steps along gamma v + g instead.
template <bool Nesterov>
struct Momentum {
  static constexpr int kStates = 1;
  template <class A>
  FO_HD FO_INLINE static void apply(A& p, A g, A& v, A&, const OptimCoef<A>& k) {
    const A gg = effective_grad(p, g, k);
    v = k.momentum * v + gg;
    p = p - k.lr * (Nesterov ? k.momentum * v + gg : v);
  }
};

// The source document's RMSProp: v <- rho v + (1-rho) g^2; m <- gamma m + lr g / sqrt(v + eps);
// theta <- theta - m. eps_out (default 0) and lr_out (default 1) express PyTorch's variant.
struct RmsProp {
  static constexpr int kStates = 2;
  template <class A>
  FO_HD FO_INLINE static void apply(A& p, A g, A& v, A& m, const OptimCoef<A>& k) {
    const A gg = effective_grad(p, g, k);
    v = k.rho * v + k.omrho * (gg * gg);
    m = k.momentum * m + k.lr * gg / (fo_sqrt(v + k.eps) + k.eps_out);
    p = p - k.lr_out * m;
  }
};

// Adam family: theta <- decay theta - alpha m_eff / (sqrt(v)/c + eps); see fastopt/_reference.
template <bool Nadam>
struct Adam {
  static constexpr int kStates = 2;
  template <class A>
  FO_HD FO_INLINE static void apply(A& p, A g, A& m, A& v, const OptimCoef<A>& k) {
    const A gg = effective_grad(p, g, k);
    m = k.beta1 * m + k.omb1 * gg;
    v = k.beta2 * v + k.omb2 * (gg * gg);
    const A mm = Nadam ? k.nm * m + k.ng * gg : m;
    p = k.decay * p - k.alpha * mm / (fo_sqrt(v) / k.c + k.eps);
  }
};

// Lion: u <- b1 m + (1-b1) g; theta <- decay theta - lr sign(u); m <- b2 m + (1-b2) g.
// lr sign(u) is +-lr exactly; sign(0) = 0 and sign(NaN) = NaN (u * lr keeps both).
struct Lion {
  static constexpr int kStates = 1;
  template <class A>
  FO_HD FO_INLINE static void apply(A& p, A g, A& m, A&, const OptimCoef<A>& k) {
    const A gg = effective_grad(p, g, k);
    const A u = k.beta1 * m + k.omb1 * gg;
    const A step = u > A(0) ? k.lr : (u < A(0) ? -k.lr : u * k.lr);
    p = k.decay * p - step;
    m = k.beta2 * m + k.omb2 * gg;
  }
};

// Adagrad (torch.optim.Adagrad): s <- s + g^2; theta <- theta - lr (g / (sqrt(s) + eps)), where
// the host folds lr_decay into lr.
struct Adagrad {
  static constexpr int kStates = 1;
  template <class A>
  FO_HD FO_INLINE static void apply(A& p, A g, A& s, A&, const OptimCoef<A>& k) {
    const A gg = effective_grad(p, g, k);
    s = s + gg * gg;
    p = p - k.lr * (gg / (fo_sqrt(s) + k.eps));
  }
};

}  // namespace fastopt

// Every element-math kernel: X(name, struct), the name being the rule declaration's `kernel`
// (fastopt/_rules). The CPU and CUDA traversals expand this list; a new rule is its struct above
// and one line here.
#define FASTOPT_OPTIM_RULES(X)        \
  X(sgd, ::fastopt::Sgd)              \
  X(momentum, ::fastopt::Momentum<false>) \
  X(nesterov, ::fastopt::Momentum<true>)  \
  X(rmsprop, ::fastopt::RmsProp)      \
  X(adam, ::fastopt::Adam<false>)     \
  X(nadam, ::fastopt::Adam<true>)     \
  X(lion, ::fastopt::Lion)            \
  X(adagrad, ::fastopt::Adagrad)
