// The CPU LAMB kernel, compiled once per instruction set beside the LARS kernel
// (the files lars_cpu_{default,avx2,avx512}.cpp include both, so each copy
// lives in that file's namespace with its Vectorized<float>).
//
// Waves, as the LARS kernel's: consecutive tensors whose bytes fit a share of
// the last-level cache. Per wave, one parallel pass advances the moments of
// every element (lamb.h's lamb_moments), keeps each tensor's Adam update u in a
// float scratch buffer and sums, per chunk, what the trust ratio needs; the
// ratios are formed from those partials in chunk order (so the same inputs give
// the same bits on any thread count); a second pass, backwards while the wave
// is still cached, reads p and u and writes p. Tensors that need no sum (no
// trust ratio, no caution) take their whole step in the first pass. So a
// float32 element moves p, g, m, v in and m, v, p out from memory — AdamW's
// 28 bytes — when its wave fits the cache (docs/performance.md, "LAMB").
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../lamb.h"
#include "lamb_tensor.h"

#ifndef LARS_CPU_NS
#error "define LARS_CPU_NS before including lamb_cpu_kernel.h"
#endif

namespace lars_cuda {
namespace LARS_CPU_NS {

// sqrt and the caution mask [x > 0] for lamb.h's element functions.
struct VecMath {
  Vec sqrt(const Vec& x) const { return x.sqrt(); }
  Vec positive(const Vec& x) const { return x.gt(Vec(0.f)); }  // 1.0 / 0.0 (NaN: 0)
};
struct FloatMath {
  float sqrt(float x) const { return std::sqrt(x); }
  float positive(float x) const { return x > 0.f ? 1.f : 0.f; }
};

// Bytes of a wave: what the second pass finds in the cache is p and u of every
// element of the wave, and the first pass streams g, m and v past them; the
// LARS kernel's wave budget (LARS_CUDA_CPU_WAVE_MB) counts p and u here.
template <typename P>
constexpr int64_t lamb_wave_bytes_per_elem() {
  return static_cast<int64_t>(sizeof(P) + sizeof(float));
}

// The first pass over [begin, end) of a tensor that needs sums: moments
// advanced and stored, u (masked with caution) into u_out[0, end - begin),
// and the span's (Σp², Σu², Σu·p, mask count) into out[0..3] (p after a
// decoupled decay; without caution u is the whole update, decay in). Without
// kStore (the sharded step's norms) only the sums: nothing is written.
template <typename P, bool kStore = true>
void lamb_moments_span(const LambTensor& t, int64_t begin, int64_t end, float* u_out, double* out) {
  P* p = static_cast<P*>(t.p);
  const P* g = static_cast<const P*>(t.g);
  P* m = static_cast<P*>(t.m);
  P* v = static_cast<P*>(t.v);
  const bool caution = t.h->caution;
  Vec spp(0.f), suu(0.f), sup(0.f), sk(0.f);
  double dpp = 0.0, duu = 0.0, dup = 0.0, dk = 0.0;
  int64_t i = begin;
  if constexpr (has_vector_path<P, P>()) {
    using L = Lanes<P>;
    const LambCoeffs<Vec> c(*t.h, t.c);
    const Vec one(1.f);
    for (; i + L::kElems <= end; i += L::kElems) {
      Vec pv[L::kVecs], gv[L::kVecs], mv[L::kVecs], vv[L::kVecs];
      L::load_update(p + i, pv);
      L::load_update(g + i, gv);
      L::load_update(m + i, mv);
      L::load_update(v + i, vv);
#pragma GCC unroll 2
      for (int k = 0; k < L::kVecs; ++k) {
        Vec mask = one;
        const Vec u = lamb_moments<Vec>(pv[k], gv[k], mv[k], vv[k], c, mask, VecMath{});
        const Vec pd = lamb_decayed(pv[k], c);
        spp = at::vec::fmadd(pd, pd, spp);
        if (caution) {
          suu = at::vec::fmadd(u, u, suu);
          sup = at::vec::fmadd(u, pd, sup);
          sk = sk + mask;
        } else {
          const Vec full = lamb_full_update(u, pd, one, c);
          suu = at::vec::fmadd(full, full, suu);
        }
        if constexpr (kStore) u.store(u_out + (i - begin) + k * Vec::size());
      }
      if constexpr (kStore) {
        L::store_update(m + i, mv);
        L::store_update(v + i, vv);
      }
    }
  }
  const LambCoeffs<float> c(*t.h, t.c);
  for (; i < end; ++i) {
    float mv = static_cast<float>(m[i]), vv = static_cast<float>(v[i]), mask = 1.f;
    const float pv = static_cast<float>(p[i]);
    const float u = lamb_moments<float>(pv, static_cast<float>(g[i]), mv, vv, c, mask, FloatMath{});
    const float pd = lamb_decayed(pv, c);
    dpp += static_cast<double>(pd) * pd;
    if (caution) {
      duu += static_cast<double>(u) * u;
      dup += static_cast<double>(u) * pd;
      dk += mask;
    } else {
      const float full = lamb_full_update(u, pd, 1.f, c);
      duu += static_cast<double>(full) * full;
    }
    if constexpr (kStore) {
      u_out[i - begin] = u;
      m[i] = static_cast<P>(mv);
      v[i] = static_cast<P>(vv);
    }
  }
  const auto add = [](Vec& a, Vec& b) { return a + b; };
  out[0] = dpp + at::vec::vec_reduce_all<float>(add, spp);
  out[1] = duu + at::vec::vec_reduce_all<float>(add, suu);
  out[2] = dup + at::vec::vec_reduce_all<float>(add, sup);
  out[3] = dk + at::vec::vec_reduce_all<float>(add, sk);
}

// The second pass over [begin, end): p = p_decayed - step * (u*scale + wd*p_decayed).
template <typename P>
void lamb_apply_span(const LambTensor& t, int64_t begin, int64_t end, const float* u_in, float scale, float step) {
  P* p = static_cast<P*>(t.p);
  int64_t i = begin;
  if constexpr (has_vector_path<P, P>()) {
    using L = Lanes<P>;
    const LambCoeffs<Vec> c(*t.h, t.c);
    const Vec scale_v(scale), step_v(step);
    for (; i + L::kElems <= end; i += L::kElems) {
      Vec pv[L::kVecs];
      L::load_update(p + i, pv);
#pragma GCC unroll 2
      for (int k = 0; k < L::kVecs; ++k) {
        const Vec u = Vec::loadu(u_in + (i - begin) + k * Vec::size());
        const Vec pd = lamb_decayed(pv[k], c);
        pv[k] = pd - step_v * lamb_full_update(u, pd, scale_v, c);
      }
      L::store_update(p + i, pv);
    }
  }
  const LambCoeffs<float> c(*t.h, t.c);
  for (; i < end; ++i) {
    const float pd = lamb_decayed(static_cast<float>(p[i]), c);
    p[i] = static_cast<P>(pd - step * lamb_full_update(u_in[i - begin], pd, scale, c));
  }
}

// The whole step of [begin, end) in one pass, u recomputed from the moments:
// p = p_decayed - step * (u*scale + wd*p_decayed), m and v stored. A tensor that
// needs no sum takes (lr, 1); the sharded step's second half, its tensor's
// step and scale from the all-reduced sums.
template <typename P>
void lamb_step_span(const LambTensor& t, int64_t begin, int64_t end, float scale, float step) {
  P* p = static_cast<P*>(t.p);
  const P* g = static_cast<const P*>(t.g);
  P* m = static_cast<P*>(t.m);
  P* v = static_cast<P*>(t.v);
  int64_t i = begin;
  if constexpr (has_vector_path<P, P>()) {
    using L = Lanes<P>;
    const LambCoeffs<Vec> c(*t.h, t.c);
    const Vec one(1.f), scale_v(scale), step_v(step);
    for (; i + L::kElems <= end; i += L::kElems) {
      Vec pv[L::kVecs], gv[L::kVecs], mv[L::kVecs], vv[L::kVecs];
      L::load_update(p + i, pv);
      L::load_update(g + i, gv);
      L::load_update(m + i, mv);
      L::load_update(v + i, vv);
#pragma GCC unroll 2
      for (int k = 0; k < L::kVecs; ++k) {
        Vec mask = one;
        const Vec u = lamb_moments<Vec>(pv[k], gv[k], mv[k], vv[k], c, mask, VecMath{});
        const Vec pd = lamb_decayed(pv[k], c);
        pv[k] = pd - step_v * lamb_full_update(u, pd, scale_v, c);
      }
      L::store_update(p + i, pv);
      L::store_update(m + i, mv);
      L::store_update(v + i, vv);
    }
  }
  const LambCoeffs<float> c(*t.h, t.c);
  for (; i < end; ++i) {
    float mv = static_cast<float>(m[i]), vv = static_cast<float>(v[i]), mask = 1.f;
    const float pv = static_cast<float>(p[i]);
    const float u = lamb_moments<float>(pv, static_cast<float>(g[i]), mv, vv, c, mask, FloatMath{});
    const float pd = lamb_decayed(pv, c);
    p[i] = static_cast<P>(pd - step * lamb_full_update(u, pd, scale, c));
    m[i] = static_cast<P>(mv);
    v[i] = static_cast<P>(vv);
  }
}

// Σg² of [begin, end): the span read as kStreams consecutive quarters walked
// side by side, each into its own float chains, the tail in double. A single
// sequential stream reads at ~24 GB/s on the 2-core EPYC, four side by side at
// ~37 (the hardware prefetchers follow each; docs/performance.md, "LAMB").
constexpr int kStreams = 4;
template <typename P>
double grad_squares_span(const P* g, int64_t begin, int64_t end) {
  double tail = 0.0;
  int64_t i = begin;
  Vec total(0.f);
  if constexpr (has_vector_path<P, P>()) {
    using L = Lanes<P>;
    const int64_t quarter = (end - begin) / (kStreams * L::kElems) * L::kElems;
    Vec acc[kStreams][L::kVecs];
    for (auto& stream : acc)
      for (Vec& a : stream) a = Vec(0.f);
    for (int64_t j = 0; j < quarter; j += L::kElems) {
#pragma GCC unroll 4
      for (int s = 0; s < kStreams; ++s) {
        Vec gv[L::kVecs];
        L::load(g + begin + s * quarter + j, gv);
#pragma GCC unroll 2
        for (int k = 0; k < L::kVecs; ++k) acc[s][k] = at::vec::fmadd(gv[k], gv[k], acc[s][k]);
      }
    }
    for (auto& stream : acc)
      for (Vec& a : stream) total = total + a;
    i = begin + kStreams * quarter;
  }
  for (; i < end; ++i) {
    const float x = static_cast<float>(g[i]);
    tail += static_cast<double>(x) * x;
  }
  const auto add = [](Vec& a, Vec& b) { return a + b; };
  return tail + at::vec::vec_reduce_all<float>(add, total);
}

struct LambSpan {
  int64_t tensor, begin, end;
  int64_t scratch;  // offset of u[begin] in the wave's scratch (-1: a one-pass tensor)
};

template <typename P>
void lamb_cpu_typed(const std::vector<LambTensor>& tensors) {
  const int64_t n_tensors = static_cast<int64_t>(tensors.size());
  const int64_t max_wave = wave_bytes();
  const int64_t per_elem = lamb_wave_bytes_per_elem<P>();
  // The scratch lives on the calling thread and is reused step to step (no
  // allocation in the steady state); it is as large as the largest wave.
  thread_local std::vector<float> scratch;
  std::vector<LambSpan> spans;
  std::vector<double> partials;
  int64_t t = 0;
  while (t < n_tensors) {
    const int64_t wave_begin = t;
    int64_t in_wave = 0, scratch_elems = 0;
    spans.clear();
    do {
      const LambTensor& x = tensors[t];
      const bool sums = x.needs_sums();
      for (int64_t s = 0; s < x.numel; s += kChunk) {
        spans.push_back({t, s, std::min(x.numel, s + kChunk), sums ? scratch_elems + s : -1});
      }
      if (sums) scratch_elems += x.numel;
      in_wave += x.numel * per_elem;
      ++t;
    } while (t < n_tensors && in_wave + tensors[t].numel * per_elem <= max_wave);
    const int64_t n_spans = static_cast<int64_t>(spans.size());
    if (n_spans == 0) continue;
    if (static_cast<int64_t>(scratch.size()) < scratch_elems) scratch.resize(scratch_elems);
    float* u = scratch.data();
    partials.assign(4 * n_spans, 0.0);

    at::parallel_for(0, n_spans, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const LambSpan& s = spans[i];
        const LambTensor& x = tensors[s.tensor];
        if (s.scratch < 0) {
          lamb_step_span<P>(x, s.begin, s.end, 1.f, x.lr);
        } else {
          lamb_moments_span<P>(x, s.begin, s.end, u + s.scratch, &partials[4 * i]);
        }
      }
    });
    if (scratch_elems == 0) continue;  // a wave of one-pass tensors is done

    // Each tensor's sums in chunk order, then its scale and step.
    std::vector<float> scale(t - wave_begin, 1.f), step(t - wave_begin, 0.f);
    int64_t i = 0;
    for (int64_t k = wave_begin; k < t; ++k) {
      LambSums sums;
      for (; i < n_spans && spans[i].tensor == k; ++i) {
        sums.pp += partials[4 * i];
        sums.uu += partials[4 * i + 1];
        sums.up += partials[4 * i + 2];
        sums.count += partials[4 * i + 3];
      }
      const LambTensor& x = tensors[k];
      if (!x.needs_sums()) continue;
      scale[k - wave_begin] = lamb_caution_scale(*x.h, sums.count, x.numel);
      step[k - wave_begin] = lamb_tensor_step(*x.h, x.lr, sums, scale[k - wave_begin]);
    }
    at::parallel_for(0, n_spans, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t j = hi - 1; j >= lo; --j) {  // the most recently read chunks first
        const LambSpan& s = spans[j];
        if (s.scratch < 0) continue;
        lamb_apply_span<P>(tensors[s.tensor], s.begin, s.end, u + s.scratch, scale[s.tensor - wave_begin],
                           step[s.tensor - wave_begin]);
      }
    });
  }
}

// The chunks of the tensors (those that need sums only, with `only_sums`).
inline std::vector<LambSpan> lamb_spans(const std::vector<LambTensor>& tensors, bool only_sums) {
  std::vector<LambSpan> spans;
  for (int64_t t = 0; t < static_cast<int64_t>(tensors.size()); ++t) {
    if (only_sums && !tensors[t].needs_sums()) continue;
    for (int64_t s = 0; s < tensors[t].numel; s += kChunk) spans.push_back({t, s, std::min(tensors[t].numel, s + kChunk), 0});
  }
  return spans;
}

// The sharded step's first half: each tensor's row of sums (lamb_args.h's
// kLambSumsPerTensor) at rows + kLambSumsPerTensor * index, its chunks' partials
// in chunk order; nothing written. Rows of tensors needing no sum are left alone.
template <typename P>
void lamb_norms_typed(const std::vector<LambTensor>& tensors, double* rows) {
  const std::vector<LambSpan> spans = lamb_spans(tensors, /*only_sums=*/true);
  const int64_t n_spans = static_cast<int64_t>(spans.size());
  std::vector<double> partials(4 * n_spans, 0.0);
  at::parallel_for(0, n_spans, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const LambSpan& s = spans[i];
      lamb_moments_span<P, false>(tensors[s.tensor], s.begin, s.end, nullptr, &partials[4 * i]);
    }
  });
  for (int64_t i = 0; i < n_spans; ++i) {
    const LambTensor& x = tensors[spans[i].tensor];
    double* row = rows + kLambSumsPerTensor * x.index;
    for (int k = 0; k < 4; ++k) row[k] += partials[4 * i + k];
    row[4] = x.h->caution ? static_cast<double>(x.numel) : 0.0;
  }
}

// The sharded step's second half: every element's step in one pass, each
// tensor's step lr*r and caution scale formed from its (all-reduced) row.
template <typename P>
void lamb_apply_typed(const std::vector<LambTensor>& tensors, const double* rows) {
  std::vector<LambStepScale> steps;
  steps.reserve(tensors.size());
  for (const LambTensor& x : tensors)
    steps.push_back(x.needs_sums() ? lamb_step_of_row(*x.h, x.lr, rows + kLambSumsPerTensor * x.index)
                                   : LambStepScale{x.lr, 1.f});
  const std::vector<LambSpan> spans = lamb_spans(tensors, /*only_sums=*/false);
  at::parallel_for(0, static_cast<int64_t>(spans.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const LambSpan& s = spans[i];
      lamb_step_span<P>(tensors[s.tensor], s.begin, s.end, steps[s.tensor].scale, steps[s.tensor].step);
    }
  });
}

template <typename P>
double lamb_grad_squares_typed(const std::vector<LambTensor>& tensors) {
  const std::vector<LambSpan> spans = lamb_spans(tensors, /*only_sums=*/false);
  std::vector<double> partials(spans.size(), 0.0);
  at::parallel_for(0, static_cast<int64_t>(spans.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const LambSpan& s = spans[i];
      partials[i] = grad_squares_span<P>(static_cast<const P*>(tensors[s.tensor].g), s.begin, s.end);
    }
  });
  double total = 0.0;
  for (double x : partials) total += x;  // chunk order: the same bits on any thread count
  return total;
}

// The kernel's entry points (lamb_cpu.cpp picks the build): one dtype's tensors.
void lamb_run(const std::vector<LambTensor>& tensors, at::ScalarType dtype) {
  dispatch_lars_type(dtype, "params", [&](auto tag) { lamb_cpu_typed<decltype(tag)>(tensors); });
}

double lamb_grad_squares(const std::vector<LambTensor>& tensors, at::ScalarType dtype) {
  double total = 0.0;
  dispatch_lars_type(dtype, "grads", [&](auto tag) { total = lamb_grad_squares_typed<decltype(tag)>(tensors); });
  return total;
}

void lamb_norms(const std::vector<LambTensor>& tensors, at::ScalarType dtype, double* rows) {
  dispatch_lars_type(dtype, "params", [&](auto tag) { lamb_norms_typed<decltype(tag)>(tensors, rows); });
}

void lamb_apply(const std::vector<LambTensor>& tensors, at::ScalarType dtype, const double* rows) {
  dispatch_lars_type(dtype, "params", [&](auto tag) { lamb_apply_typed<decltype(tag)>(tensors, rows); });
}

}  // namespace LARS_CPU_NS
}  // namespace lars_cuda
