// The one element traversal of the CUDA kernel, kept apart from the math (as
// apex's multi_tensor_apply and ATen's ForeachFunctors keep them): a block
// walks one chunk [begin, end) of one tensor, 16-byte packs where the
// pointers allow it, then the tail, and hands every element to a policy:
//
//   op(float& p, float g, float& m)
//
// A reduction policy (NormSums) accumulates and writes nothing; an update
// policy (kernel.cuh's ApplyLars) changes p and m, which the traversal
// stores back (kWrite). The visiting order — thread t takes packs t, t+256,
// ..., elements in a pack in order, then the tail — is fixed, so a policy's
// per-thread sums, reduced in block_sum below in a fixed tree, give the same
// bits on every run and every grid size.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace lars_cuda {
namespace device_code {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// N elements of T in one 16-byte-aligned group: a 16-byte load or store per 16 bytes.
template <typename T, int N>
struct alignas(16) Pack {
  T v[N];
};

// Elements per vector step: 16 bytes of the narrower of the two types.
template <typename P, typename G>
constexpr int vec_width() {
  return 16 / (sizeof(P) < sizeof(G) ? sizeof(P) : sizeof(G));
}

// The tensor pointers come from a table of void*, so without help the compiler
// emits generic loads; these name the global space and the cache policy: .cg
// (L2 only) for p and g, which an update re-reads from L2, and .cs (evict
// first) for the momentum buffer and every store, so they do not push p and g
// out of L2.
enum class Cache { kGlobal, kStreaming };

template <typename T, int N, Cache C = Cache::kGlobal>
__device__ __forceinline__ Pack<T, N> load_pack(const T* ptr) {
  static_assert(sizeof(Pack<T, N>) % 16 == 0, "a pack is whole 16-byte words");
  Pack<T, N> out;
  const uint4* src = reinterpret_cast<const uint4*>(ptr);
  uint4* dst = reinterpret_cast<uint4*>(&out);
#pragma unroll
  for (int j = 0; j < static_cast<int>(sizeof(Pack<T, N>) / 16); ++j)
    dst[j] = C == Cache::kStreaming ? __ldcs(src + j) : __ldcg(src + j);
  return out;
}

template <typename T, int N>
__device__ __forceinline__ void store_pack(T* ptr, const Pack<T, N>& v) {
  uint4* dst = reinterpret_cast<uint4*>(ptr);
  const uint4* src = reinterpret_cast<const uint4*>(&v);
#pragma unroll
  for (int j = 0; j < static_cast<int>(sizeof(Pack<T, N>) / 16); ++j) __stcs(dst + j, src[j]);
}

// Walks elements [begin, end) of one tensor with the whole block. `Unroll`
// packs per thread are in flight at once. With kWrite, p and m (when m is not
// null) are stored back after `op`; without it nothing is written and m is not
// read (op sees m = 0).
template <int Unroll, bool kWrite, typename P, typename G, typename Op>
__device__ __forceinline__ void traverse_chunk(P* p, const G* g, P* m, int64_t begin, int64_t end, bool vec_ok,
                                               Op& op) {
  constexpr int N = vec_width<P, G>();
  const bool with_m = kWrite && m != nullptr;
  int64_t tail = begin;
  if (vec_ok) {
    const int64_t vec_end = begin + (end - begin) / N * N;
    constexpr int64_t kStride = static_cast<int64_t>(kThreads) * N;
    for (int64_t base = begin + static_cast<int64_t>(threadIdx.x) * N; base < vec_end; base += kStride * Unroll) {
      Pack<P, N> pp[Unroll], mm[Unroll];
      Pack<G, N> gg[Unroll];
#pragma unroll
      for (int u = 0; u < Unroll; ++u) {
        const int64_t i = base + u * kStride;
        if (i < vec_end) {
          pp[u] = load_pack<P, N>(p + i);
          gg[u] = load_pack<G, N>(g + i);
          if (with_m) mm[u] = load_pack<P, N, Cache::kStreaming>(m + i);
        }
      }
#pragma unroll
      for (int u = 0; u < Unroll; ++u) {
        const int64_t i = base + u * kStride;
        if (i < vec_end) {
#pragma unroll
          for (int k = 0; k < N; ++k) {
            float pv = static_cast<float>(pp[u].v[k]);
            float mv = with_m ? static_cast<float>(mm[u].v[k]) : 0.f;
            op(pv, static_cast<float>(gg[u].v[k]), mv);
            if (kWrite) {
              pp[u].v[k] = static_cast<P>(pv);
              if (with_m) mm[u].v[k] = static_cast<P>(mv);
            }
          }
          if (kWrite) {
            store_pack<P, N>(p + i, pp[u]);
            if (with_m) store_pack<P, N>(m + i, mm[u]);
          }
        }
      }
    }
    tail = vec_end;
  }
  for (int64_t i = tail + threadIdx.x; i < end; i += kThreads) {
    float pv = static_cast<float>(p[i]);
    float mv = with_m ? static_cast<float>(m[i]) : 0.f;
    op(pv, static_cast<float>(g[i]), mv);
    if (kWrite) {
      p[i] = static_cast<P>(pv);
      if (with_m) m[i] = static_cast<P>(mv);
    }
  }
}

// Three sums (the reduction policy's state) as one value for the block reduction.
struct Sums3 {
  float pp, gg, pg;
};

// Block-wide sum of three values in a fixed order; the result is valid in thread 0.
__device__ __forceinline__ Sums3 block_sum(Sums3 v, Sums3* smem) {
  for (int o = 16; o > 0; o >>= 1) {
    v.pp += __shfl_down_sync(0xffffffffu, v.pp, o);
    v.gg += __shfl_down_sync(0xffffffffu, v.gg, o);
    v.pg += __shfl_down_sync(0xffffffffu, v.pg, o);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  Sums3 r{0.f, 0.f, 0.f};
  if (warp == 0) {
    r = lane < kWarps ? smem[lane] : Sums3{0.f, 0.f, 0.f};
    for (int o = 16; o > 0; o >>= 1) {
      r.pp += __shfl_down_sync(0xffffffffu, r.pp, o);
      r.gg += __shfl_down_sync(0xffffffffu, r.gg, o);
      r.pg += __shfl_down_sync(0xffffffffu, r.pg, o);
    }
  }
  __syncthreads();  // smem is reused by the next chunk
  return r;
}

// The reduction policy: per-thread sums of p², g² and, where a flavour needs
// ‖g + βp‖² = ‖g‖² + 2β⟨g,p⟩ + β²‖p‖², of g·p, from the same read of p and g.
template <bool kDot>
struct NormSums {
  Sums3 s{0.f, 0.f, 0.f};
  __device__ __forceinline__ void operator()(float& p, float g, float&) {
    s.pp += p * p;
    s.gg += g * g;
    if (kDot) s.pg += p * g;
  }
};

}  // namespace device_code
}  // namespace lars_cuda
