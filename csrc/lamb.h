// The per-element LAMB math, shared by the CPU kernel (on float and on
// at::vec::Vectorized<float>) and the CUDA kernel (on float); lars.h's
// counterpart. Contract: docs/semantics.md ("LAMB") and lars_cuda.Lamb's
// docstring. No traversal here: the kernels decide how to walk the tensors.
//
// A tensor's step runs in two passes around its norms (the moments pass
// advances m and v and keeps the Adam update u, the apply pass forms the trust
// ratio's step and writes p), or in one pass where no per-tensor sum is needed
// (no trust ratio and no caution).
#pragma once

#include <cmath>
#include <cstdint>

#include "lars.h"  // LARS_HD

#if !defined(__CUDACC__)
using std::pow;
#endif

namespace lars_cuda {

// Where weight decay enters (lars_cuda/lamb_options.py's DECAY_MODES).
enum class LambDecay : int32_t { kUpdate = 0, kGrad = 1, kDecoupled = 2 };

// One group's options after validation (the packed row and flags: lamb_args.h).
struct LambHyper {
  float lr = 1e-3f;
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-6f, weight_decay = 0.01f;
  float max_lr = 0.f;  // > 0: a decoupled decay scaled by lr/max_lr (timm's corrected decay)
  bool bias_correction = true, grad_averaging = true, trust_clip = false, adapt = true, caution = false,
       maximize = false;
  LambDecay decay = LambDecay::kUpdate;
};

// One tensor's scalars, decided before its moments pass: the factor every grad
// element is multiplied by (maximize's sign, AMP's 1/scale and the global clip's
// 1/c in one), the reciprocal bias corrections of its step count and the
// decoupled decay's factor s*wd.
struct LambTensorCoeffs {
  float g_coef, rbc1, rbc2, decoupled;
};

// (host and device: the CUDA kernel reads the step count from device memory.)
LARS_HD LambTensorCoeffs lamb_tensor_coeffs(const LambHyper& h, double step, double lr, double g_coef) {
  LambTensorCoeffs c;
  c.g_coef = static_cast<float>(g_coef);
  // 1 - beta^t as Python computes it (double), then as the float it divides by.
  const float bc1 = h.bias_correction ? static_cast<float>(1.0 - pow(static_cast<double>(h.beta1), step)) : 1.f;
  const float bc2 = h.bias_correction ? static_cast<float>(1.0 - pow(static_cast<double>(h.beta2), step)) : 1.f;
  c.rbc1 = 1.f / bc1;
  c.rbc2 = 1.f / bc2;
  const double s = h.max_lr > 0.f ? lr * lr / h.max_lr : lr;
  c.decoupled = h.decay == LambDecay::kDecoupled ? static_cast<float>(s * h.weight_decay) : 0.f;
  return c;
}

// Broadcast constants of one tensor, in the arithmetic type V (float or a SIMD
// vector of floats), so the element functions compile for both.
template <typename V>
struct LambCoeffs {
  V g_coef, wd, beta1, a1, beta2, a2, rbc1, rbc2, eps, decoupled;
  bool grad_decay, update_decay, decoupled_decay, caution;

  LARS_HD LambCoeffs(const LambHyper& h, const LambTensorCoeffs& t)
      : g_coef(V(t.g_coef)),
        wd(V(h.weight_decay)),
        beta1(V(h.beta1)),
        a1(V(h.grad_averaging ? 1.f - h.beta1 : 1.f)),
        beta2(V(h.beta2)),
        a2(V(1.f - h.beta2)),
        rbc1(V(t.rbc1)),
        rbc2(V(t.rbc2)),
        eps(V(h.eps)),
        decoupled(V(t.decoupled)),
        grad_decay(h.decay == LambDecay::kGrad && h.weight_decay != 0.f),
        update_decay(h.decay == LambDecay::kUpdate && h.weight_decay != 0.f),
        decoupled_decay(h.decay == LambDecay::kDecoupled && h.weight_decay != 0.f),
        caution(h.caution) {}
};

// The moments pass of one element: m and v advanced in place; returns the Adam
// update u = m̂ / (sqrt(v̂) + eps), times the caution mask k = [u*g > 0] (also
// returned in k; 1 without caution). `Math` supplies sqrt and the mask for V.
template <typename V, typename Math>
LARS_HD V lamb_moments(V p, V g, V& m, V& v, const LambCoeffs<V>& c, V& k, Math math) {
  V gg = g * c.g_coef;
  if (c.grad_decay) gg = gg + c.wd * p;
  m = c.beta1 * m + c.a1 * gg;
  v = c.beta2 * v + c.a2 * (gg * gg);
  V u = (m * c.rbc1) / (math.sqrt(v * c.rbc2) + c.eps);
  if (c.caution) {
    k = math.positive(u * gg);
    u = u * k;
  }
  return u;
}

// The param after a decoupled decay (p itself otherwise): p - p*(s*wd).
template <typename V>
LARS_HD V lamb_decayed(V p, const LambCoeffs<V>& c) {
  return c.decoupled_decay ? p - p * c.decoupled : p;
}

// The whole update from the moments pass's u and the decayed param: u*s (s: the
// caution mask's scale, 1/max(mean(k), 1e-3)), plus wd*p where decay enters the update.
template <typename V>
LARS_HD V lamb_full_update(V u, V pd, V scale, const LambCoeffs<V>& c) {
  if (c.caution) u = u * scale;
  return c.update_decay ? u + c.wd * pd : u;
}

// What a tensor's norms pass summed (double, fixed order): Σp², Σu² and, with
// caution, Σu·p and the mask's count, from which the norm of the scaled update
// follows without a second pass:
//   ||u*s + wd*p||² = s²Σu² + 2·s·wd·Σu·p + wd²·Σp²
struct LambSums {
  double pp = 0.0, uu = 0.0, up = 0.0, count = 0.0;
};

// The caution mask's scale of a tensor of `numel` elements (1 without caution).
LARS_HD float lamb_caution_scale(const LambHyper& h, double count, double numel) {
  if (!h.caution) return 1.f;
  const float mean = static_cast<float>(count / numel);
  return 1.f / (mean > 1e-3f ? mean : 1e-3f);
}

// The tensor's step lr*r from its sums (r = ||p|| / ||u||, 1 where either is 0
// or where the group does not adapt; at most 1 with trust_clip). Without
// caution the moments pass summed the whole update's squares in uu.
LARS_HD float lamb_tensor_step(const LambHyper& h, float lr, const LambSums& s, float scale) {
  if (!h.adapt) return lr;
  double n2 = s.uu;
  if (h.caution) {
    const double wd = h.decay == LambDecay::kUpdate ? static_cast<double>(h.weight_decay) : 0.0;
    const double sc = scale;
    n2 = sc * sc * s.uu + 2.0 * sc * wd * s.up + wd * wd * s.pp;
  }
  const float w = static_cast<float>(sqrt(s.pp));
  const float n = static_cast<float>(sqrt(n2 > 0.0 ? n2 : 0.0));
  float r = (w > 0.f && n > 0.f) ? w / n : 1.f;
  if (h.trust_clip) r = r > 1.f ? 1.f : r;  // (NaN stays NaN, as torch.clamp_max)
  return lr * r;
}

// The sharded step's row of sums per tensor (lamb_args.h): Σp², Σu², Σu·p, the
// caution mask's count, numel.
constexpr int64_t kLambSumsPerTensor = 5;

// A tensor's (lr*r, caution scale) from its all-reduced row of sums.
struct LambStepScale {
  float step, scale;
};
LARS_HD LambStepScale lamb_step_of_row(const LambHyper& h, float lr, const double* row) {
  const float scale = lamb_caution_scale(h, row[3], row[4]);
  LambSums s;
  s.pp = row[0];
  s.uu = row[1];
  s.up = row[2];
  s.count = row[3];
  return LambStepScale{lamb_tensor_step(h, lr, s, scale), scale};
}

}  // namespace lars_cuda
