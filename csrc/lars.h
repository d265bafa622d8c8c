// The per-element LARS math, shared by the CPU kernel (on float and on
// at::vec::Vectorized<float>) and the CUDA kernel (on float).
// Contract: shared/spec/lars-semantics.md §1. Keep this file free of any
// traversal logic: the kernels decide how to walk the tensors, this decides
// what happens to one element.
#pragma once

#include <cmath>
#include <cstdint>

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

// Trust ratio r from w = ||p|| and n = ||g|| (the unscaled gradient's norm).
LARS_HD float trust_ratio(float w, float n, const LarsHyper& h) {
  if (!h.lars) return 1.f;
  float r = (w > 0.f && n > 0.f) ? h.eeta * w / (n + h.weight_decay * w + h.epsilon) : 1.f;
  if (h.has_trust_clip) r = clamp_nan(r, 0.f, h.trust_clip);
  return r;
}

// Broadcast constants for one call, in the arithmetic type V (float or a SIMD
// vector of floats) so the element functions below compile for both.
template <typename V>
struct ElementCoeffs {
  V weight_decay, clip_lo, clip_hi, momentum;
  bool decay, clip, has_momentum, nesterov;

  LARS_HD explicit ElementCoeffs(const LarsHyper& h)
      : weight_decay(V(h.weight_decay)),
        clip_lo(V(-h.update_clip)),
        clip_hi(V(h.update_clip)),
        momentum(V(h.momentum)),
        // The seed applies weight decay only on the LARS branch.
        decay(h.lars && h.weight_decay != 0.f),
        clip(h.has_update_clip),
        has_momentum(h.momentum != 0.f),
        nesterov(h.nesterov) {}
};

// One element: d from (p, g), the momentum buffer advanced in place, and the
// new parameter value. `step` is lr * r for this tensor. A fresh buffer holds
// zeros, which makes the first step exact: momentum * 0 + d == d.
// `clamp_fn` is ClampNan for float and at::vec::clamp for vectors.
template <typename V, typename Clamp>
LARS_HD V lars_element(V p, V g, V& buf, V step, const ElementCoeffs<V>& c, Clamp clamp_fn) {
  V d = c.decay ? g + c.weight_decay * p : g;
  if (c.clip) d = clamp_fn(d, c.clip_lo, c.clip_hi);
  V u = d;
  if (c.has_momentum) {
    buf = c.momentum * buf + d;
    u = c.nesterov ? d + c.momentum * buf : buf;
  }
  return p - step * u;
}

}  // namespace lars_cuda
