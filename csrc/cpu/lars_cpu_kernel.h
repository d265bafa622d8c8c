// The CPU LARS kernel, compiled once per instruction set: the including file
// defines LARS_CPU_NS (and, for AVX2, CPU_CAPABILITY_AVX2 with the matching
// target pragma), so each copy lives in its own namespace and ATen's
// Vectorized<float> is the 256-bit one where AVX2 is enabled.
//
// The element traversal (vector loads, tails) is written once, in
// traversal.h; the norm and update passes are policies on it (NormSums there,
// ApplyLars here), as in the CUDA kernel.
//
// Waves: the tensor list is cut into waves of consecutive tensors whose
// params and grads fit in a share of the last-level cache. For each wave, one
// parallel pass computes per-chunk sums of squares, the trust ratios are
// formed from those partials in a fixed order, and a second parallel pass
// updates the wave while it is still cached (walking each thread's range
// backwards, so the most recently read chunks are used first). Per-chunk
// partials summed in chunk order make the norms independent of the thread
// count: the same inputs give the same bits on any machine.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <tuple>
#include <vector>

#include "../dispatch.h"
#include "../group_args.h"

#ifndef LARS_CPU_NS
#error "define LARS_CPU_NS before including lars_cpu_kernel.h"
#endif

#include "traversal.h"

namespace lars_cuda {
namespace LARS_CPU_NS {

// Elements per norm partial: the unit of determinism and of parallel work.
constexpr int64_t kChunk = 16384;
// Bytes of params+grads per wave: 4 MiB, so that the update finds p and g still
// in the share of the L3 a small cloud VM gets (measured ~8 MiB of a "32 MiB"
// L3); larger waves were slower in half precision and no faster in float32
// (the measurements: benchmarks/NOTES.md). LARS_CUDA_CPU_WAVE_MB sets another
// size (read once per process).
inline int64_t wave_bytes() {
  static const int64_t bytes = [] {
    const char* env = std::getenv("LARS_CUDA_CPU_WAVE_MB");
    const double mb = env != nullptr ? std::atof(env) : 0.0;
    return mb > 0.0 ? static_cast<int64_t>(mb * (1 << 20)) : int64_t(4) << 20;
  }();
  return bytes;
}

struct Span {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

inline Vec clamp_vec(const Vec& x, const Vec& lo, const Vec& hi) { return at::vec::clamp(x, lo, hi); }

// The update policy: one element of the LARS step (lars.h) with this tensor's
// step = lr * r; each grad element is multiplied by g_coef (grad_coefficient
// in lars.h: 1/grad_scale, negated for maximize) as it is read.
struct ApplyLars {
  static constexpr int kVecs = 1;  // one load per iteration (see traversal.h)
  ElementCoeffs<Vec> cv;
  ElementCoeffs<float> c;
  Vec step_v, coef_v;
  float step, coef;

  ApplyLars(const TensorStep& ts, float g_coef, const LarsHyper& h)
      : cv(h, ts.weight_decay), c(h, ts.weight_decay), step_v(ts.step), coef_v(g_coef), step(ts.step), coef(g_coef) {}
  void vec(int, Vec& p, const Vec& g, Vec& m) { p = lars_element<Vec>(p, g * coef_v, m, step_v, cv, clamp_vec); }
  void scalar(float& p, float g, float& m) { p = lars_element<float>(p, g * coef, m, step, c, ClampNan{}); }
};

// The seed's common case — weight decay and momentum, no Nesterov — with its
// switches known at compile time (kClip: the element clip, on by default; kScaled:
// a gradient factor other than 1, i.e. AMP's 1/scale or maximize), so the hot
// loop holds no branch: lars_element with these coefficients (a factor of
// exactly 1 is not multiplied, which changes no bit).
template <bool kClip>
struct SeedCommonCoeffs {
  static constexpr bool decay = true, clip = kClip, has_momentum = true, nesterov = false;
  Vec weight_decay, clip_lo, clip_hi, momentum;
  explicit SeedCommonCoeffs(const ElementCoeffs<Vec>& c)
      : weight_decay(c.weight_decay), clip_lo(c.clip_lo), clip_hi(c.clip_hi), momentum(c.momentum) {}
};

template <bool kClip, bool kScaled>
struct ApplyLarsCommon : ApplyLars {
  SeedCommonCoeffs<kClip> fixed;
  ApplyLarsCommon(const TensorStep& ts, float g_coef, const LarsHyper& h) : ApplyLars(ts, g_coef, h), fixed(cv) {}
  void vec(int, Vec& p, const Vec& g, Vec& m) {
    p = lars_element<Vec>(p, kScaled ? g * coef_v : g, m, step_v, fixed, clamp_vec);
  }
};

// The flavours' update policy (ratio on the gradient, dampening): a policy of
// its own, so the seed's loop keeps its registers (two more AVX2 vectors).
struct ApplyFlavour : ApplyLars {
  FlavourCoeffs<Vec> fv;
  FlavourCoeffs<float> f;
  ApplyFlavour(const TensorStep& ts, float g_coef, const LarsHyper& h)
      : ApplyLars(ts, g_coef, h), fv(ts.dscale, h), f(ts.dscale, h) {}
  void vec(int, Vec& p, const Vec& g, Vec& m) {
    p = flavour_element<Vec>(p, g * coef_v, m, step_v, cv, fv, clamp_vec);
  }
  void scalar(float& p, float g, float& m) { p = flavour_element<float>(p, g * coef, m, step, c, f, ClampNan{}); }
};

inline bool is_seed_common_case(const LarsHyper& h, const TensorStep& ts) {
  return ts.weight_decay != 0.f && h.momentum != 0.f && !h.nesterov;
}

// One span's update with the policy that fits it.
template <typename P, typename G>
void update_span(P* p, const G* g, P* m, const Span& s, const TensorStep& ts, float g_coef, const LarsHyper& h,
                 bool flavour) {
  const auto run_with = [&](auto apply) { traverse_span<true>(p, g, m, s.begin, s.end, apply); };
  if (flavour) return run_with(ApplyFlavour(ts, g_coef, h));
  if (!is_seed_common_case(h, ts) || m == nullptr) return run_with(ApplyLars(ts, g_coef, h));
  const bool scaled = g_coef != 1.f;
  if (h.has_update_clip) {
    return scaled ? run_with(ApplyLarsCommon<true, true>(ts, g_coef, h))
                  : run_with(ApplyLarsCommon<true, false>(ts, g_coef, h));
  }
  return scaled ? run_with(ApplyLarsCommon<false, true>(ts, g_coef, h))
                : run_with(ApplyLarsCommon<false, false>(ts, g_coef, h));
}

// A span's partial sums, with <g, p> where the group's ratio needs it (SSL).
template <typename P, typename G>
void span_sums(P* p, const G* g, int64_t begin, int64_t end, bool dot, double* out) {
  if (dot) {
    NormSums<true> sums;
    traverse_span<false>(p, g, static_cast<P*>(nullptr), begin, end, sums);
    sums.finish(out[0], out[1], &out[2]);
  } else {
    NormSums<false> sums;
    traverse_span<false>(p, g, static_cast<P*>(nullptr), begin, end, sums);
    sums.finish(out[0], out[1]);
    out[2] = 0.0;
  }
}

// `index` and `io`: the sharded step's halves (SumsIO in group_args.h). With
// io.out the norm pass stores each tensor's sums at row index[t] and nothing is
// updated; with io.in the ratios come from those rows and the norm pass is skipped.
template <typename P, typename G>
void lars_cpu_typed(at::TensorList params, at::TensorList grads, at::TensorList bufs, float lr, float inv_scale,
                    const LarsHyper& h, const int64_t* index, SumsIO io) {
  const int64_t n_tensors = static_cast<int64_t>(params.size());
  const bool has_buf = !bufs.empty();
  std::vector<P*> p_ptr(n_tensors);
  std::vector<const G*> g_ptr(n_tensors);
  std::vector<P*> b_ptr(n_tensors, nullptr);
  for (int64_t t = 0; t < n_tensors; ++t) {
    p_ptr[t] = params[t].data_ptr<P>();
    g_ptr[t] = grads[t].const_data_ptr<G>();
    if (has_buf && bufs[t].defined()) b_ptr[t] = bufs[t].data_ptr<P>();
  }

  const int64_t bytes_per_elem = sizeof(P) + sizeof(G);
  const float g_coef = grad_coefficient(inv_scale, h);  // the update's 1/scale, negated for maximize
  const int64_t max_wave = wave_bytes();
  std::vector<Span> spans;
  std::vector<double> partials;  // per span: sum p², sum g², sum g*p
  std::vector<TensorStep> steps(n_tensors, TensorStep{lr, 1.f, applied_decay(h)});  // lars=False: these stay
  int64_t t = 0;
  while (t < n_tensors) {
    // One wave: tensors [wave_begin, t).
    const int64_t wave_begin = t;
    int64_t in_wave = 0;
    spans.clear();
    do {
      const int64_t n = params[t].numel();
      for (int64_t s = 0; s < n; s += kChunk) spans.push_back({t, s, std::min(n, s + kChunk)});
      in_wave += n * bytes_per_elem;
      ++t;
    } while (t < n_tensors && in_wave + params[t].numel() * bytes_per_elem <= max_wave);
    const int64_t n_spans = static_cast<int64_t>(spans.size());
    if (n_spans == 0) continue;  // a wave of zero-size tensors

    if (h.lars && io.in != nullptr) {
      for (int64_t k = wave_begin; k < t; ++k) {
        const double* row = io.in + kSumsPerTensor * index[k];
        steps[k] = tensor_step(lr, row[0], row[1], row[2], g_coef, h);
      }
    } else if (h.lars) {
      const bool dot = h.norm_of_update;
      partials.assign(3 * n_spans, 0.0);
      at::parallel_for(0, n_spans, 1, [&](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; ++i) {
          const Span& s = spans[i];
          span_sums(p_ptr[s.tensor], g_ptr[s.tensor], s.begin, s.end, dot, &partials[3 * i]);
        }
      });
      int64_t i = 0;
      for (int64_t k = wave_begin; k < t; ++k) {
        double sp = 0.0, sg = 0.0, spg = 0.0;
        for (; i < n_spans && spans[i].tensor == k; ++i) {
          sp += partials[3 * i];
          sg += partials[3 * i + 1];
          spg += partials[3 * i + 2];
        }
        if (io.out != nullptr) {
          double* row = io.out + kSumsPerTensor * index[k];
          row[0] = sp;
          row[1] = sg;
          row[2] = spg;
          continue;
        }
        steps[k] = tensor_step(lr, sp, sg, spg, g_coef, h);
      }
    }
    if (io.out != nullptr) continue;  // norms only

    const bool flavour = needs_flavour_element(h);
    at::parallel_for(0, n_spans, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t i = hi - 1; i >= lo; --i) {
        const Span& s = spans[i];
        update_span(p_ptr[s.tensor], g_ptr[s.tensor], b_ptr[s.tensor], s, steps[s.tensor], g_coef, h, flavour);
      }
    });
  }
}

void run(at::TensorList params, at::TensorList grads, at::TensorList bufs, float lr, float inv_scale,
         const LarsHyper& h, const int64_t* index, SumsIO io) {
  dispatch_lars_type(params[0].scalar_type(), "params", [&](auto p_tag) {
    using P = decltype(p_tag);
    dispatch_lars_type(grads[0].scalar_type(), "grads", [&](auto g_tag) {
      using G = decltype(g_tag);
      lars_cpu_typed<P, G>(params, grads, bufs, lr, inv_scale, h, index, io);
    });
  });
}

}  // namespace LARS_CPU_NS
}  // namespace lars_cuda
