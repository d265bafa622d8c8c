// The one element traversal of the CPU kernel, kept apart from the math (the
// CPU twin of csrc/cuda/traversal.cuh): a thread walks elements [begin, end)
// of one tensor and hands them to a policy, four float vectors at a time where
// a vector path exists, then one element at a time:
//
//   op.vec(k, Vec& p, const Vec& g, Vec& m)   k: which of the policy's Op::kVecs
//                                              vectors of this iteration
//   op.scalar(float& p, float g, float& m)
//
// A reduction policy (NormSums) accumulates and writes nothing; an update
// policy (lars_cpu_kernel.h's ApplyLars) changes p and m, which the traversal
// stores back (kWrite). The vector path exists in the AVX2 and AVX-512 builds
// for params and grads of one type: float32 (8 or 16 floats per load) and
// float16/bfloat16 (16 or 32 per load, widened to two float vectors and
// narrowed once on store, round to nearest even as a scalar cast; an update,
// being elementwise, may see the 16 elements in another lane order — Lanes'
// load_update/store_update — where that saves instructions). Elsewhere (the
// portable build, mixed types) the scalar path runs: ATen's portable
// Vectorized<float> is slower than the compiler's own vectorisation of the
// scalar loop. The visiting order of a reduction is fixed, so sums over a span
// give the same bits on every run.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <type_traits>

#ifndef LARS_CPU_NS
#error "define LARS_CPU_NS before including traversal.h"
#endif

namespace lars_cuda {
namespace LARS_CPU_NS {

using Vec = at::vec::Vectorized<float>;

inline float to_float(float x) { return x; }
inline float to_float(at::Half x) { return static_cast<float>(x); }
inline float to_float(at::BFloat16 x) { return static_cast<float>(x); }

// How an element type is read as float vectors and written back.
template <typename T>
struct Lanes {  // float16 / bfloat16: one 16-element load, two float vectors
  using VT = at::vec::Vectorized<T>;
  static constexpr int kVecs = 2;
  static constexpr int64_t kElems = VT::size();
  static void load(const T* ptr, Vec* out) {
    auto [a, b] = at::vec::convert_to_float<T>(VT::loadu(ptr));
    out[0] = a;
    out[1] = b;
  }
  static void store(T* ptr, const Vec* v) { at::vec::convert_from_float<T>(v[0], v[1]).store(ptr); }
  static void load_update(const T* ptr, Vec* out) { load(ptr, out); }
  static void store_update(T* ptr, const Vec* v) { store(ptr, v); }
};

template <>
struct Lanes<float> {
  static constexpr int kVecs = 1;
  static constexpr int64_t kElems = Vec::size();
  static void load(const float* ptr, Vec* out) { out[0] = Vec::loadu(ptr); }
  static void store(float* ptr, const Vec* v) { v[0].store(ptr); }
  static void load_update(const float* ptr, Vec* out) { load(ptr, out); }
  static void store_update(float* ptr, const Vec* v) { store(ptr, v); }
};

#if defined(CPU_CAPABILITY_AVX2)
// AVX2: widen straight from memory (one vpmovzxwd/vcvtph2ps with a memory
// operand per 8 elements instead of a 256-bit load, an extract and two
// conversions); the same floats in the same lanes as ATen's convert_to_float.
template <>
struct Lanes<at::BFloat16> {
  static constexpr int kVecs = 2;
  static constexpr int64_t kElems = 16;
  static Vec widen8(const void* ptr) {
    const __m256i x = _mm256_cvtepu16_epi32(_mm_loadu_si128(static_cast<const __m128i*>(ptr)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
  }
  static void load(const at::BFloat16* ptr, Vec* out) {
    out[0] = widen8(ptr);
    out[1] = widen8(ptr + 8);
  }
  static void store(at::BFloat16* ptr, const Vec* v) {
    at::vec::convert_from_float<at::BFloat16>(v[0], v[1]).store(ptr);
  }
  // The update is elementwise, so it may take its 16 elements in any lane order
  // as long as the store puts them back: interleaving with zeros widens in one
  // instruction per 8 (out[0] holds elements 0-3 and 8-11, out[1] 4-7 and 12-15),
  // and packing undoes that order with no cross-lane permute.
  static void load_update(const at::BFloat16* ptr, Vec* out) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ptr));
    const __m256i zero = _mm256_setzero_si256();
    out[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, x));
    out[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, x));
  }
  // Round to nearest even as ATen's convert_from_float (NaN -> 0xffff), leaving
  // the bfloat16 in the low half of each 32-bit lane.
  static __m256i round8(const Vec& v) {
    const __m256 f = v;
    const __m256i x = _mm256_castps_si256(f);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
    const __m256i t = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)), x), 16);
    const __m256i ordered = _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_ORD_Q));
    return _mm256_blendv_epi8(_mm256_set1_epi32(0xffff), t, ordered);
  }
  static void store_update(at::BFloat16* ptr, const Vec* v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(ptr), _mm256_packus_epi32(round8(v[0]), round8(v[1])));
  }
};
template <>
struct Lanes<at::Half> {
  static constexpr int kVecs = 2;
  static constexpr int64_t kElems = 16;
  static void load(const at::Half* ptr, Vec* out) {
    const auto* q = reinterpret_cast<const __m128i*>(ptr);
    out[0] = _mm256_cvtph_ps(_mm_loadu_si128(q));
    out[1] = _mm256_cvtph_ps(_mm_loadu_si128(q + 1));
  }
  static void store(at::Half* ptr, const Vec* v) {
    auto* q = reinterpret_cast<__m128i*>(ptr);
    _mm_storeu_si128(q, _mm256_cvtps_ph(v[0], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    _mm_storeu_si128(q + 1, _mm256_cvtps_ph(v[1], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  static void load_update(const at::Half* ptr, Vec* out) { load(ptr, out); }
  static void store_update(at::Half* ptr, const Vec* v) { store(ptr, v); }
};
#endif

template <typename P, typename G>
constexpr bool has_vector_path() {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  return std::is_same_v<P, G> &&
         (std::is_same_v<P, float> || std::is_same_v<P, at::Half> || std::is_same_v<P, at::BFloat16>);
#else
  return false;
#endif
}

// Float vectors a reduction keeps in flight per iteration: four independent
// FMA chains hide the latency, so it runs at memory speed. (An update takes one
// load per iteration: with its six coefficient vectors, four loads of p, g and
// m would not fit AVX2's sixteen registers — measured 20 % slower in bf16; with
// AVX-512's thirty-two, two loads measured no faster than one, float32 slower.)
constexpr int kVecsInFlight = 4;

// How far ahead a pass over float16/bfloat16 prefetches p, g (and m). Their
// widening and narrowing add instructions per byte, so fewer loads are in
// flight than the hardware prefetcher needs: software prefetch shortened the
// update phase on AVX-512 and AVX2 machines, and the norm phase on AVX2 (the
// AVX-512 build was not measured for the norms and so does without); float32
// gained nothing (the measurements: benchmarks/NOTES.md).
constexpr uintptr_t kHalfPrefetchBytes = 4096;
#if defined(CPU_CAPABILITY_AVX2)
constexpr bool kPrefetchHalfNorms = true;
#else
constexpr bool kPrefetchHalfNorms = false;
#endif

// kM: the momentum buffer is read and written (a compile-time switch, so the
// hot loop holds no branch on it).
template <bool kWrite, bool kM, typename P, typename G, typename Op>
inline void traverse_span_impl(P* p, const G* g, P* m, int64_t begin, int64_t end, Op& op_state) {
  // A local copy whose address never escapes: its coefficients and sums stay in
  // registers (a reference could alias the stores below and force reloads).
  Op op = op_state;
  int64_t i = begin;
  if constexpr (has_vector_path<P, G>()) {
    using L = Lanes<P>;
    // As many loads as give the policy's float vectors per iteration (at least one).
    constexpr int kLoads = Op::kVecs >= L::kVecs ? Op::kVecs / L::kVecs : 1;
    constexpr int kVecs = kLoads * L::kVecs;
    constexpr int64_t kStep = kLoads * L::kElems;
    for (; i + kStep <= end; i += kStep) {
      if constexpr (sizeof(P) == 2 && (kWrite || kPrefetchHalfNorms)) {
        // Integer arithmetic: the address may lie past the tensor (a prefetch never faults).
        const auto ahead = [&](const void* base) {
          return reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(base) + kHalfPrefetchBytes);
        };
        __builtin_prefetch(ahead(p + i), kWrite ? 1 : 0, 3);
        __builtin_prefetch(ahead(g + i), 0, 3);
        if constexpr (kM) __builtin_prefetch(ahead(m + i), 1, 3);
      }
      Vec pv[kVecs], gv[kVecs], mv[kVecs];
      // Fully unrolled, so the arrays live in registers.
#pragma GCC unroll 4
      for (int j = 0; j < kLoads; ++j) {
        if constexpr (kWrite) {
          L::load_update(p + i + j * L::kElems, pv + j * L::kVecs);
          L::load_update(g + i + j * L::kElems, gv + j * L::kVecs);
        } else {
          L::load(p + i + j * L::kElems, pv + j * L::kVecs);
          L::load(g + i + j * L::kElems, gv + j * L::kVecs);
        }
        if constexpr (kM) {
          L::load_update(m + i + j * L::kElems, mv + j * L::kVecs);
        } else if constexpr (kWrite) {  // an update without momentum: m reads as 0 and is not stored
#pragma GCC unroll 2
          for (int k = 0; k < L::kVecs; ++k) mv[j * L::kVecs + k] = Vec(0.f);
        }
      }
#pragma GCC unroll 4
      for (int k = 0; k < kVecs; ++k) op.vec(k, pv[k], gv[k], mv[k]);
      if constexpr (kWrite) {
#pragma GCC unroll 4
        for (int j = 0; j < kLoads; ++j) {
          L::store_update(p + i + j * L::kElems, pv + j * L::kVecs);
          if constexpr (kM) L::store_update(m + i + j * L::kElems, mv + j * L::kVecs);
        }
      }
    }
  }
  for (; i < end; ++i) {
    float pv = to_float(p[i]);
    float mv = kM ? to_float(m[i]) : 0.f;
    op.scalar(pv, to_float(g[i]), mv);
    if constexpr (kWrite) {
      p[i] = static_cast<P>(pv);
      if constexpr (kM) m[i] = static_cast<P>(mv);
    }
  }
  op_state = op;
}

// Walks p[begin, end) with g (and m where an update has a momentum buffer).
template <bool kWrite, typename P, typename G, typename Op>
inline void traverse_span(P* p, const G* g, P* m, int64_t begin, int64_t end, Op& op) {
  if (kWrite && m != nullptr) {
    traverse_span_impl<kWrite, true>(p, g, m, begin, end, op);
  } else {
    traverse_span_impl<kWrite, false>(p, g, m, begin, end, op);
  }
}

// The reduction policy: sums of p² and g² (and, where a flavour needs
// ‖g + βp‖² = ‖g‖² + 2β⟨g,p⟩ + β²‖p‖², of g·p) from the same read of p and g.
// Vector lanes accumulate in float (four chains), the scalar path in double.
template <bool kDot>
struct NormSums {
  static constexpr int kVecs = kVecsInFlight;
  Vec vp[kVecsInFlight] = {Vec(0.f), Vec(0.f), Vec(0.f), Vec(0.f)};
  Vec vg[kVecsInFlight] = {Vec(0.f), Vec(0.f), Vec(0.f), Vec(0.f)};
  Vec vpg[kVecsInFlight] = {Vec(0.f), Vec(0.f), Vec(0.f), Vec(0.f)};
  double sp = 0.0, sg = 0.0, spg = 0.0;

  void vec(int k, Vec& p, const Vec& g, Vec&) {
    vp[k] = at::vec::fmadd(p, p, vp[k]);
    vg[k] = at::vec::fmadd(g, g, vg[k]);
    if constexpr (kDot) vpg[k] = at::vec::fmadd(p, g, vpg[k]);
  }
  void scalar(float& p, float g, float&) {
    sp += static_cast<double>(p) * p;
    sg += static_cast<double>(g) * g;
    if constexpr (kDot) spg += static_cast<double>(p) * g;
  }
  // The totals: the four chains summed pairwise, then the scalar part.
  void finish(double& p2, double& g2, double* pg = nullptr) const {
    const auto add = [](Vec& a, Vec& b) { return a + b; };
    p2 = sp + at::vec::vec_reduce_all<float>(add, (vp[0] + vp[1]) + (vp[2] + vp[3]));
    g2 = sg + at::vec::vec_reduce_all<float>(add, (vg[0] + vg[1]) + (vg[2] + vg[3]));
    if (pg != nullptr) *pg = spg + at::vec::vec_reduce_all<float>(add, (vpg[0] + vpg[1]) + (vpg[2] + vpg[3]));
  }
};

}  // namespace LARS_CPU_NS
}  // namespace lars_cuda
