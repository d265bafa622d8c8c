// The CPU LARS kernel, compiled once per instruction set: the including file
// defines LARS_CPU_NS (and, for AVX2, CPU_CAPABILITY_AVX2 with the matching
// target pragma), so each copy lives in its own namespace and ATen's
// Vectorized<float> is the 256-bit one where AVX2 is enabled.
//
// Traversal: the tensor list is cut into waves of consecutive tensors whose
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
#include <tuple>
#include <vector>

#include "../lars_op.h"

#ifndef LARS_CPU_NS
#error "define LARS_CPU_NS before including lars_cpu_kernel.h"
#endif

namespace lars_cuda {
namespace LARS_CPU_NS {

using Vec = at::vec::Vectorized<float>;

// Elements per norm partial: the unit of determinism and of parallel work.
constexpr int64_t kChunk = 16384;
// Bytes of params+grads per wave: half the 32 MiB L3 of the machines we run on
// (2-16 MiB measured within noise of each other on ResNet-50, see benchmarks/NOTES.md).
constexpr int64_t kWaveBytes = int64_t(16) << 20;

struct Span {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

inline float to_float(float x) { return x; }
inline float to_float(at::Half x) { return static_cast<float>(x); }
inline float to_float(at::BFloat16 x) { return static_cast<float>(x); }

// Sums of squares of a span of p and of g, for the cross-chunk sum in double.
template <typename P, typename G>
void sum_squares(const P* p, const G* g, int64_t n, double& sp, double& sg) {
  double ap = 0.0, ag = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double a = to_float(p[i]), b = to_float(g[i]);
    ap += a * a;
    ag += b * b;
  }
  sp = ap;
  sg = ag;
}

#if defined(CPU_CAPABILITY_AVX2)
// float32: four independent accumulators per input hide the FMA latency, so
// the pass runs at memory speed.
template <>
void sum_squares<float, float>(const float* p, const float* g, int64_t n, double& sp, double& sg) {
  constexpr int64_t kW = Vec::size();
  Vec p0(0.f), p1(0.f), p2(0.f), p3(0.f), g0(0.f), g1(0.f), g2(0.f), g3(0.f);
  int64_t i = 0;
  for (; i + 4 * kW <= n; i += 4 * kW) {
    const Vec a0 = Vec::loadu(p + i), a1 = Vec::loadu(p + i + kW), a2 = Vec::loadu(p + i + 2 * kW),
              a3 = Vec::loadu(p + i + 3 * kW);
    const Vec b0 = Vec::loadu(g + i), b1 = Vec::loadu(g + i + kW), b2 = Vec::loadu(g + i + 2 * kW),
              b3 = Vec::loadu(g + i + 3 * kW);
    p0 = at::vec::fmadd(a0, a0, p0);
    p1 = at::vec::fmadd(a1, a1, p1);
    p2 = at::vec::fmadd(a2, a2, p2);
    p3 = at::vec::fmadd(a3, a3, p3);
    g0 = at::vec::fmadd(b0, b0, g0);
    g1 = at::vec::fmadd(b1, b1, g1);
    g2 = at::vec::fmadd(b2, b2, g2);
    g3 = at::vec::fmadd(b3, b3, g3);
  }
  const auto add = [](Vec& a, Vec& b) { return a + b; };
  float ap = at::vec::vec_reduce_all<float>(add, (p0 + p1) + (p2 + p3));
  float ag = at::vec::vec_reduce_all<float>(add, (g0 + g1) + (g2 + g3));
  for (; i < n; ++i) {
    ap += p[i] * p[i];
    ag += g[i] * g[i];
  }
  sp = ap;
  sg = ag;
}

#endif  // CPU_CAPABILITY_AVX2

inline Vec clamp_vec(const Vec& x, const Vec& lo, const Vec& hi) { return at::vec::clamp(x, lo, hi); }

// Updates p[begin, end) (and its buffer) with `step` = lr * r; each grad
// element is multiplied by `g_coef` (grad_coefficient in lars.h) as it is read.
template <typename P, typename G>
void update_span_scalar(P* p, const G* g, P* buf, int64_t begin, int64_t end, float step, float g_coef,
                        const LarsHyper& h) {
  const ElementCoeffs<float> c(h);
  for (int64_t i = begin; i < end; ++i) {
    float b = buf ? to_float(buf[i]) : 0.f;  // untouched when there is no momentum
    const float out = lars_element<float>(to_float(p[i]), to_float(g[i]) * g_coef, b, step, c, ClampNan{});
    p[i] = static_cast<P>(out);
    if (buf) buf[i] = static_cast<P>(b);
  }
}

template <typename P, typename G>
void update_span(P* p, const G* g, P* buf, int64_t begin, int64_t end, float step, float g_coef,
                 const LarsHyper& h) {
  update_span_scalar<P, G>(p, g, buf, begin, end, step, g_coef, h);
}

#if defined(CPU_CAPABILITY_AVX2)
// ATen's portable Vectorized<float> is slower than the compiler's own
// vectorisation of the scalar loops, so only the AVX2 build specialises float.
template <>
void update_span<float, float>(float* p, const float* g, float* buf, int64_t begin, int64_t end, float step,
                               float g_coef, const LarsHyper& h) {
  const ElementCoeffs<Vec> cv(h);
  const Vec step_v(step), coef_v(g_coef);
  int64_t i = begin;
  if (buf) {
    for (; i + Vec::size() <= end; i += Vec::size()) {
      Vec b = Vec::loadu(buf + i);
      const Vec out = lars_element<Vec>(Vec::loadu(p + i), Vec::loadu(g + i) * coef_v, b, step_v, cv, clamp_vec);
      out.store(p + i);
      b.store(buf + i);
    }
  } else {
    Vec unused(0.f);
    for (; i + Vec::size() <= end; i += Vec::size()) {
      const Vec out =
          lars_element<Vec>(Vec::loadu(p + i), Vec::loadu(g + i) * coef_v, unused, step_v, cv, clamp_vec);
      out.store(p + i);
    }
  }
  const ElementCoeffs<float> c(h);
  for (; i < end; ++i) {
    float b = buf ? buf[i] : 0.f;
    p[i] = lars_element<float>(p[i], g[i] * g_coef, b, step, c, ClampNan{});
    if (buf) buf[i] = b;
  }
}

// float16/bfloat16 (params and grads of one type): 16 elements per load,
// widened to two float vectors, narrowed once on store (round to nearest even,
// as a scalar cast).
template <typename T>
void sum_squares_reduced(const T* p, const T* g, int64_t n, double& sp, double& sg) {
  using VT = at::vec::Vectorized<T>;
  constexpr int64_t kW = VT::size();
  Vec p0(0.f), p1(0.f), g0(0.f), g1(0.f);
  int64_t i = 0;
  for (; i + kW <= n; i += kW) {
    auto [a0, a1] = at::vec::convert_to_float<T>(VT::loadu(p + i));
    auto [b0, b1] = at::vec::convert_to_float<T>(VT::loadu(g + i));
    p0 = at::vec::fmadd(a0, a0, p0);
    p1 = at::vec::fmadd(a1, a1, p1);
    g0 = at::vec::fmadd(b0, b0, g0);
    g1 = at::vec::fmadd(b1, b1, g1);
  }
  const auto add = [](Vec& a, Vec& b) { return a + b; };
  double ap = at::vec::vec_reduce_all<float>(add, p0 + p1);
  double ag = at::vec::vec_reduce_all<float>(add, g0 + g1);
  for (; i < n; ++i) {
    const double a = to_float(p[i]), b = to_float(g[i]);
    ap += a * a;
    ag += b * b;
  }
  sp = ap;
  sg = ag;
}

template <>
void sum_squares<at::BFloat16, at::BFloat16>(const at::BFloat16* p, const at::BFloat16* g, int64_t n, double& sp,
                                             double& sg) {
  sum_squares_reduced(p, g, n, sp, sg);
}

template <>
void sum_squares<at::Half, at::Half>(const at::Half* p, const at::Half* g, int64_t n, double& sp, double& sg) {
  sum_squares_reduced(p, g, n, sp, sg);
}

template <typename T>
void update_span_reduced(T* p, const T* g, T* buf, int64_t begin, int64_t end, float step, float g_coef,
                         const LarsHyper& h) {
  using VT = at::vec::Vectorized<T>;
  constexpr int64_t kW = VT::size();
  const ElementCoeffs<Vec> cv(h);
  const Vec step_v(step), coef_v(g_coef);
  int64_t i = begin;
  for (; i + kW <= end; i += kW) {
    auto [p0, p1] = at::vec::convert_to_float<T>(VT::loadu(p + i));
    auto [g0, g1] = at::vec::convert_to_float<T>(VT::loadu(g + i));
    Vec b0(0.f), b1(0.f);
    if (buf) std::tie(b0, b1) = at::vec::convert_to_float<T>(VT::loadu(buf + i));
    const Vec o0 = lars_element<Vec>(p0, g0 * coef_v, b0, step_v, cv, clamp_vec);
    const Vec o1 = lars_element<Vec>(p1, g1 * coef_v, b1, step_v, cv, clamp_vec);
    at::vec::convert_from_float<T>(o0, o1).store(p + i);
    if (buf) at::vec::convert_from_float<T>(b0, b1).store(buf + i);
  }
  update_span_scalar<T, T>(p, g, buf, i, end, step, g_coef, h);
}

template <>
void update_span<at::BFloat16, at::BFloat16>(at::BFloat16* p, const at::BFloat16* g, at::BFloat16* buf,
                                             int64_t begin, int64_t end, float step, float g_coef,
                                             const LarsHyper& h) {
  update_span_reduced(p, g, buf, begin, end, step, g_coef, h);
}

template <>
void update_span<at::Half, at::Half>(at::Half* p, const at::Half* g, at::Half* buf, int64_t begin, int64_t end,
                                     float step, float g_coef, const LarsHyper& h) {
  update_span_reduced(p, g, buf, begin, end, step, g_coef, h);
}

#endif  // CPU_CAPABILITY_AVX2

template <typename P, typename G>
void lars_cpu_typed(at::TensorList params, at::TensorList grads, at::TensorList bufs, float lr, float inv_scale,
                    const LarsHyper& h) {
  const int64_t n_tensors = static_cast<int64_t>(params.size());
  const bool has_buf = !bufs.empty();
  std::vector<P*> p_ptr(n_tensors);
  std::vector<const G*> g_ptr(n_tensors);
  std::vector<P*> b_ptr(n_tensors, nullptr);
  for (int64_t t = 0; t < n_tensors; ++t) {
    p_ptr[t] = params[t].data_ptr<P>();
    g_ptr[t] = grads[t].const_data_ptr<G>();
    if (has_buf) b_ptr[t] = bufs[t].data_ptr<P>();
  }

  const int64_t bytes_per_elem = sizeof(P) + sizeof(G);
  const float g_coef = grad_coefficient(inv_scale, h);  // the update's 1/scale, negated for maximize
  std::vector<Span> spans;
  std::vector<double> partial_p, partial_g;
  std::vector<float> steps(n_tensors, lr);
  int64_t t = 0;
  while (t < n_tensors) {
    // One wave: tensors [wave_begin, t).
    const int64_t wave_begin = t;
    int64_t wave_bytes = 0;
    spans.clear();
    do {
      const int64_t n = params[t].numel();
      for (int64_t s = 0; s < n; s += kChunk) spans.push_back({t, s, std::min(n, s + kChunk)});
      wave_bytes += n * bytes_per_elem;
      ++t;
    } while (t < n_tensors && wave_bytes + params[t].numel() * bytes_per_elem <= kWaveBytes);
    const int64_t n_spans = static_cast<int64_t>(spans.size());
    if (n_spans == 0) continue;  // a wave of zero-size tensors

    if (h.lars) {
      partial_p.assign(n_spans, 0.0);
      partial_g.assign(n_spans, 0.0);
      at::parallel_for(0, n_spans, 1, [&](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; ++i) {
          const Span& s = spans[i];
          sum_squares<P, G>(p_ptr[s.tensor] + s.begin, g_ptr[s.tensor] + s.begin, s.end - s.begin, partial_p[i],
                            partial_g[i]);
        }
      });
      int64_t i = 0;
      for (int64_t k = wave_begin; k < t; ++k) {
        double sp = 0.0, sg = 0.0;
        for (; i < n_spans && spans[i].tensor == k; ++i) {
          sp += partial_p[i];
          sg += partial_g[i];
        }
        const float w = static_cast<float>(std::sqrt(sp));
        const float n = static_cast<float>(std::sqrt(sg)) * inv_scale;
        steps[k] = lr * trust_ratio(w, n, h);
      }
    }

    at::parallel_for(0, n_spans, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t i = hi - 1; i >= lo; --i) {
        const Span& s = spans[i];
        update_span<P, G>(p_ptr[s.tensor], g_ptr[s.tensor], b_ptr[s.tensor], s.begin, s.end, steps[s.tensor],
                          g_coef, h);
      }
    });
  }
}

void run(at::TensorList params, at::TensorList grads, at::TensorList bufs, float lr, float inv_scale,
         const LarsHyper& h) {
  dispatch_lars_type(params[0].scalar_type(), "params", [&](auto p_tag) {
    using P = decltype(p_tag);
    dispatch_lars_type(grads[0].scalar_type(), "grads", [&](auto g_tag) {
      using G = decltype(g_tag);
      lars_cpu_typed<P, G>(params, grads, bufs, lr, inv_scale, h);
    });
  });
}

}  // namespace LARS_CPU_NS
}  // namespace lars_cuda
