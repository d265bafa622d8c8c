// CPU implementation of lars_cuda::fused_lars_.
//
// Traversal: the tensor list is cut into waves of consecutive tensors whose
// params and grads fit in a share of the last-level cache. For each wave, one
// parallel pass computes per-chunk sums of squares, the trust ratios are
// formed from those partials in a fixed order, and a second parallel pass
// updates the wave while it is still cached (walking each thread's range
// backwards, so the most recently read chunks are used first). Per-chunk
// partials summed in chunk order make the norms independent of the thread
// count: the same inputs give the same bits on any machine.
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../lars_op.h"

namespace lars_cuda {
namespace {

using Vec = at::vec::Vectorized<float>;

// Elements per norm partial: the unit of determinism and of parallel work.
constexpr int64_t kChunk = 16384;
// Bytes of params+grads per wave; half the 32 MiB L3 of the machines we run on.
constexpr int64_t kWaveBytes = 16 << 20;

struct Span {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

inline float to_float(float x) { return x; }
inline float to_float(at::Half x) { return static_cast<float>(x); }
inline float to_float(at::BFloat16 x) { return static_cast<float>(x); }

// Sums of squares of a span, accumulated in float lanes (the span is short)
// and returned as double for the cross-chunk sum.
template <typename T>
double sum_squares(const T* x, int64_t n) {
  float acc = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    const float v = to_float(x[i]);
    acc += v * v;
  }
  return acc;
}

template <>
double sum_squares<float>(const float* x, int64_t n) {
  Vec acc0(0.f), acc1(0.f);
  int64_t i = 0;
  for (; i + 2 * Vec::size() <= n; i += 2 * Vec::size()) {
    const Vec a = Vec::loadu(x + i);
    const Vec b = Vec::loadu(x + i + Vec::size());
    acc0 = at::vec::fmadd(a, a, acc0);
    acc1 = at::vec::fmadd(b, b, acc1);
  }
  float acc = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, acc0 + acc1);
  for (; i < n; ++i) acc += x[i] * x[i];
  return acc;
}

inline Vec clamp_vec(const Vec& x, const Vec& lo, const Vec& hi) { return at::vec::clamp(x, lo, hi); }

// Updates p[begin, end) (and its buffer) with `step` = lr * r.
template <typename P, typename G>
void update_span(P* p, const G* g, P* buf, int64_t begin, int64_t end, float step, float inv_scale,
                 const LarsHyper& h) {
  const ElementCoeffs<float> c(h);
  for (int64_t i = begin; i < end; ++i) {
    float b = buf ? to_float(buf[i]) : 0.f;  // untouched when there is no momentum
    const float out = lars_element<float>(to_float(p[i]), to_float(g[i]) * inv_scale, b, step, c, ClampNan{});
    p[i] = static_cast<P>(out);
    if (buf) buf[i] = static_cast<P>(b);
  }
}

template <>
void update_span<float, float>(float* p, const float* g, float* buf, int64_t begin, int64_t end, float step,
                               float inv_scale, const LarsHyper& h) {
  const ElementCoeffs<Vec> cv(h);
  const Vec step_v(step), inv_v(inv_scale);
  int64_t i = begin;
  if (buf) {
    for (; i + Vec::size() <= end; i += Vec::size()) {
      Vec b = Vec::loadu(buf + i);
      const Vec out = lars_element<Vec>(Vec::loadu(p + i), Vec::loadu(g + i) * inv_v, b, step_v, cv, clamp_vec);
      out.store(p + i);
      b.store(buf + i);
    }
  } else {
    Vec unused(0.f);
    for (; i + Vec::size() <= end; i += Vec::size()) {
      const Vec out =
          lars_element<Vec>(Vec::loadu(p + i), Vec::loadu(g + i) * inv_v, unused, step_v, cv, clamp_vec);
      out.store(p + i);
    }
  }
  const ElementCoeffs<float> c(h);
  for (; i < end; ++i) {
    float b = buf ? buf[i] : 0.f;
    p[i] = lars_element<float>(p[i], g[i] * inv_scale, b, step, c, ClampNan{});
    if (buf) buf[i] = b;
  }
}

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
          partial_p[i] = sum_squares<P>(p_ptr[s.tensor] + s.begin, s.end - s.begin);
          partial_g[i] = sum_squares<G>(g_ptr[s.tensor] + s.begin, s.end - s.begin);
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
                          inv_scale, h);
      }
    });
  }
}

void fused_lars_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers, double lr,
                    const std::optional<at::Tensor>& lr_tensor, double momentum, double weight_decay, double eeta,
                    double epsilon, bool lars, bool nesterov, std::optional<double> trust_clip,
                    std::optional<double> update_clip, const std::optional<at::Tensor>& grad_scale,
                    const std::optional<at::Tensor>& found_inf) {
  check_fused_lars_args(params, grads, momentum_buffers, momentum, weight_decay, eeta, epsilon, trust_clip,
                        update_clip, lr_tensor, grad_scale, found_inf);
  if (params.empty()) return;
  // On the CPU these reads cost nothing: there is no device to wait for.
  if (found_inf.has_value() && found_inf->item<double>() != 0.0) return;
  const float inv_scale = grad_scale.has_value() ? static_cast<float>(1.0 / grad_scale->item<double>()) : 1.f;
  const float lr_f = static_cast<float>(lr_tensor.has_value() ? lr_tensor->item<double>() : lr);
  const LarsHyper h = make_hyper(momentum, weight_decay, eeta, epsilon, lars, nesterov, trust_clip, update_clip);

  dispatch_lars_type(params[0].scalar_type(), "params", [&](auto p_tag) {
    using P = decltype(p_tag);
    dispatch_lars_type(grads[0].scalar_type(), "grads", [&](auto g_tag) {
      using G = decltype(g_tag);
      lars_cpu_typed<P, G>(params, grads, momentum_buffers, lr_f, inv_scale, h);
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(lars_cuda, CPU, m) { m.impl("fused_lars_", &fused_lars_cpu); }

}  // namespace lars_cuda
