// The per-element LARS math, shared by the CPU kernel (on float and on
// at::vec::Vectorized<float>) and the CUDA kernel (on float).
// Contract: docs/semantics.md. Keep this file free of any
// traversal logic: the kernels decide how to walk the tensors, this decides
// what happens to one element.
#pragma once

#include <cmath>
#include <cstdint>

#if !defined(__CUDACC__)
using std::fminf;
using std::sqrt;
#endif

#if defined(__CUDACC__)
#define LARS_HD __host__ __device__ __forceinline__
#else
#define LARS_HD inline
#endif

namespace lars_cuda {

// Group hyper-parameters after validation; a disabled clip is encoded by the
// has_* flag so the kernels need no optional types.
struct LarsHyper {
  float momentum = 0.f;
  float weight_decay = 0.f;
  float eeta = 1e-3f;
  float epsilon = 0.f;
  float trust_clip = 50.f;
  float update_clip = 10.f;
  bool lars = true;
  bool nesterov = false;
  bool has_trust_clip = true;
  bool has_update_clip = true;
  // torch.optim's maximize: step along +g. The kernels flip g's sign as they
  // read it (norms are unaffected), so the flag costs no memory traffic.
  bool maximize = false;

  // The other LARS flavours (docs/semantics.md, the flavours); the defaults
  // are the seed's.
  bool decay = true;            // weight decay enters d (the seed: exactly when lars)
  bool ratio_on_grad = false;   // timm/LARC/SSL: d <- r*d before momentum, p -= lr*u
  bool norm_of_update = false;  // SSL: r = eeta*||p|| / ||g + wd*p|| (no epsilon), needs <g, p>
  bool larc_clip = false;       // timm's trust_clip / apex LARC's clip: r <- min(r / lr, 1)
  bool zero_norm_skip = false;  // apex LARC: a zero norm means no decay and no scaling at all
  float dampening = 0.f;        // buf = momentum*buf + (1 - dampening)*d
};

// What the ratio phase decides per tensor: the step (lr, times r when r
// stays outside the buffer), the factor d is scaled by (r when it goes on the
// gradient, else 1) and the weight decay applied to this tensor.
struct TensorStep {
  float step;
  float dscale;
  float weight_decay;
};

// What multiplies every gradient element as it is read: 1/grad_scale (AMP),
// negated for maximize. Norms use |coefficient|, i.e. inv_scale alone.
LARS_HD float grad_coefficient(float inv_scale, const LarsHyper& h) {
  return h.maximize ? -inv_scale : inv_scale;
}

// clamp that lets NaN through, as torch.clamp does.
LARS_HD float clamp_nan(float x, float lo, float hi) {
  return x < lo ? lo : (x > hi ? hi : x);
}

// The same, as a function object (device code cannot take a host function's address).
struct ClampNan {
  LARS_HD float operator()(float x, float lo, float hi) const { return clamp_nan(x, lo, hi); }
};

// The weight decay this group applies to d.
LARS_HD float applied_decay(const LarsHyper& h) { return h.decay ? h.weight_decay : 0.f; }

// Every flavour's per-tensor decision from the sums of one tensor: pp = sum p²,
// gg = sum g², pg = sum g*p of the gradient as stored (g_coef: the grad
// coefficient, 1/scale negated for maximize; the norms use |g_coef|).
LARS_HD TensorStep tensor_step(float lr, double pp, double gg, double pg, float g_coef, const LarsHyper& h) {
  const float wd = applied_decay(h);
  if (!h.lars) return {lr, 1.f, wd};
  const float w = static_cast<float>(sqrt(pp));
  float r;
  bool zero;
  if (h.norm_of_update) {
    // ||g + wd*p||² = ||g||² + 2 wd <g,p> + wd² ||p||², from the same read of p and g,
    // in double from the sums themselves: where g nearly cancels wd*p the terms
    // cancel too, and a float ||g|| squared would carry its rounding into the difference.
    const double c = static_cast<double>(g_coef);
    const double u2 = gg * c * c + 2.0 * wd * (pg * c) + static_cast<double>(wd) * wd * pp;
    const float u = static_cast<float>(sqrt(u2 > 0.0 ? u2 : 0.0));
    zero = !(w > 0.f && u > 0.f);
    r = zero ? 1.f : h.eeta * w / u;
  } else {
    const float n = static_cast<float>(sqrt(gg)) * (g_coef < 0.f ? -g_coef : g_coef);
    zero = !(w > 0.f && n > 0.f);
    r = zero ? 1.f : h.eeta * w / (n + h.weight_decay * w + h.epsilon);
  }
  if (zero && h.zero_norm_skip) return {lr, 1.f, 0.f};
  if (h.larc_clip) r = fminf(r / lr, 1.f);
  if (h.has_trust_clip) r = clamp_nan(r, 0.f, h.trust_clip);
  return h.ratio_on_grad ? TensorStep{lr, r, wd} : TensorStep{lr * r, 1.f, wd};
}

// Broadcast constants for one call, in the arithmetic type V (float or a SIMD
// vector of floats) so the element functions below compile for both.
template <typename V>
struct ElementCoeffs {
  V weight_decay, clip_lo, clip_hi, momentum;
  bool decay, clip, has_momentum, nesterov;

  LARS_HD explicit ElementCoeffs(const LarsHyper& h, float applied_weight_decay)
      : weight_decay(V(applied_weight_decay)),
        clip_lo(V(-h.update_clip)),
        clip_hi(V(h.update_clip)),
        momentum(V(h.momentum)),
        decay(applied_weight_decay != 0.f),
        clip(h.has_update_clip),
        has_momentum(h.momentum != 0.f),
        nesterov(h.nesterov) {}
};

// The flavours' two extra coefficients: d's scale (r on the gradient) and
// momentum's (1 - dampening). The seed's element function does without them.
template <typename V>
struct FlavourCoeffs {
  V dscale, undamped;
  LARS_HD FlavourCoeffs(float dscale_, const LarsHyper& h) : dscale(V(dscale_)), undamped(V(1.f - h.dampening)) {}
};

// One element: d from (p, g), the momentum buffer advanced in place, and the
// new parameter value. `step` is lr * r for this tensor. A fresh buffer holds
// zeros, which makes the first step exact: momentum * 0 + d == d.
// `clamp_fn` is ClampNan for float and at::vec::clamp for vectors. `Coeffs` is
// ElementCoeffs, or a type with the same members whose switches are constexpr
// (the CPU kernel's branch-free policy for the seed's default case).
template <typename V, typename Clamp, typename Coeffs>
LARS_HD V lars_element(V p, V g, V& buf, V step, const Coeffs& c, Clamp clamp_fn) {
  V d = c.decay ? g + c.weight_decay * p : g;
  if (c.clip) d = clamp_fn(d, c.clip_lo, c.clip_hi);
  V u = d;
  if (c.has_momentum) {
    buf = c.momentum * buf + d;
    u = c.nesterov ? d + c.momentum * buf : buf;
  }
  return p - step * u;
}

// The same element for the flavours: d scaled by r before momentum (dscale)
// and momentum with dampening. A fresh buffer is stepped with dampening 0 by
// the caller (torch.optim.SGD's first step copies d), so zeros stay exact.
template <typename V, typename Clamp>
LARS_HD V flavour_element(V p, V g, V& buf, V step, const ElementCoeffs<V>& c, const FlavourCoeffs<V>& f,
                          Clamp clamp_fn) {
  V d = c.decay ? g + c.weight_decay * p : g;
  if (c.clip) d = clamp_fn(d, c.clip_lo, c.clip_hi);
  d = d * f.dscale;
  V u = d;
  if (c.has_momentum) {
    buf = c.momentum * buf + f.undamped * d;
    u = c.nesterov ? d + c.momentum * buf : buf;
  }
  return p - step * u;
}

// Whether a group needs flavour_element (else the seed's lars_element runs).
LARS_HD bool needs_flavour_element(const LarsHyper& h) { return h.ratio_on_grad || h.dampening != 0.f; }

}  // namespace lars_cuda
