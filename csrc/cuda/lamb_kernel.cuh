// The CUDA kernel of lars_cuda::fused_lamb_groups_: every param group of a
// LAMB step (up to kMaxGroups, one dtype) in ONE cooperative launch, the LARS
// kernel's phases (kernel.cuh) with LAMB's element math (csrc/lamb.h):
//
//   1. norms   — each block walks fixed chunks of (p, g, m, v) of the tensors
//                that need a sum (trust ratio or caution), forms each element's
//                Adam update u without storing anything, and reduces per chunk
//                (Σp², Σu², Σu·p, the caution mask's count);
//   2. ratios  — one warp per tensor sums its chunks' partials in a fixed order
//                (double) and stores the tensor's step lr*r and caution scale;
//   3. update  — every element again: the moments advanced and stored, u formed
//                from them as in phase 1 (the same code, so the same bits), p
//                written. Tensors without a sum take lr and scale 1.
//
// Unlike the CPU kernel, which keeps u in a cached scratch buffer, this one
// recomputes u in phase 3 from the unchanged m and v: no scratch memory, and a
// bfloat16 step is still the float32 step rounded. The step count is read from
// device memory (a float per tensor) and the global clip factor (computed by
// ATen ops before the launch, lamb_buckets.h) from a device scalar, so a step
// holds no host value that changes between steps. AMP: grads are multiplied by
// 1/*grad_scale in the kernel; a nonzero *found_inf makes every block return.
// The chunking and every reduction order are fixed: a step is bit-for-bit
// reproducible run to run and over grid sizes. tests/support/cuda_emulator runs
// this file on the CPU.
//
// The sharded step's halves (fused_lamb_norms, fused_lamb_apply_; SumsIO): with
// io.out phase 2 stores each tensor's row of sums (lamb_args.h) and no update
// runs; with io.in phase 3 forms each tensor's step from its row (all-reduced
// over the shards) and runs alone, one ordinary launch.
#pragma once

#include <cooperative_groups.h>

#include <cstdint>

#include "../lamb.h"
#include "kernel.cuh"  // LrArg, read_lr, the launch constants

namespace lars_cuda {
namespace cuda_impl {

// One tensor of a LAMB launch.
struct LambRow {
  void* p;
  const void* g;
  void* m;  // exp_avg
  void* v;  // exp_avg_sq
  const float* step;  // the count after this step, in device memory
  int64_t first_chunk;
  int64_t n_chunks;
  int64_t numel;
  int32_t vec_ok;      // p, g, m and v all 16-byte aligned
  int32_t group;       // index into LambLaunchGroups
  int32_t needs_sums;  // trust ratio or caution: phases 1-2 run for it
  int32_t index;       // position in the op call's flat lists: the tensor's row of the sums (SumsIO)
};

// Four per-chunk sums (float within a block, double across chunks).
struct LambSums4 {
  float pp, uu, up, count;
};

// What phase 2 decides per tensor.
struct LambStep {
  float step;   // lr * r
  float scale;  // the caution mask's scale (1 without caution)
};

struct LambTable {
  const LambRow* rows;
  const ChunkRow* chunks;
  LambSums4* partials;  // per chunk
  LambStep* steps;      // per tensor
  int64_t n_rows;
  int64_t n_chunks;
};

struct LambLaunchGroups {
  LambHyper h[kMaxGroups];
  LrArg lr[kMaxGroups];
  int n;
  bool any_sums;
};

// sqrt and the caution mask for lamb.h's element functions, on the device.
struct DeviceLambMath {
  __device__ __forceinline__ float sqrt(float x) const { return sqrtf(x); }
  __device__ __forceinline__ float positive(float x) const { return x > 0.f ? 1.f : 0.f; }
};

// Walks elements [begin, end) of one tensor with the whole block: 16-byte packs
// of p, g, m and v where all four are aligned, then the tail; `op(p, g, m, v)`
// sees every element; with kWrite p, m and v are stored back.
template <bool kWrite, typename P, typename Op>
__device__ __forceinline__ void traverse_lamb_chunk(P* p, const P* g, P* m, P* v, int64_t begin, int64_t end,
                                                    bool vec_ok, Op& op) {
  constexpr int N = 16 / static_cast<int>(sizeof(P));
  int64_t tail = begin;
  if (vec_ok) {
    const int64_t vec_end = begin + (end - begin) / N * N;
    for (int64_t i = begin + static_cast<int64_t>(threadIdx.x) * N; i < vec_end; i += static_cast<int64_t>(kThreads) * N) {
      device_code::Pack<P, N> pp = device_code::load_pack<P, N>(p + i);
      const device_code::Pack<P, N> gg = device_code::load_pack<P, N>(g + i);
      device_code::Pack<P, N> mm = device_code::load_pack<P, N, device_code::Cache::kStreaming>(m + i);
      device_code::Pack<P, N> vv = device_code::load_pack<P, N, device_code::Cache::kStreaming>(v + i);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        float pv = static_cast<float>(pp.v[k]), mv = static_cast<float>(mm.v[k]), vv_ = static_cast<float>(vv.v[k]);
        op(pv, static_cast<float>(gg.v[k]), mv, vv_);
        if (kWrite) {
          pp.v[k] = static_cast<P>(pv);
          mm.v[k] = static_cast<P>(mv);
          vv.v[k] = static_cast<P>(vv_);
        }
      }
      if (kWrite) {
        device_code::store_pack<P, N>(p + i, pp);
        device_code::store_pack<P, N>(m + i, mm);
        device_code::store_pack<P, N>(v + i, vv);
      }
    }
    tail = vec_end;
  }
  for (int64_t i = tail + threadIdx.x; i < end; i += kThreads) {
    float pv = static_cast<float>(p[i]), mv = static_cast<float>(m[i]), vv = static_cast<float>(v[i]);
    op(pv, static_cast<float>(g[i]), mv, vv);
    if (kWrite) {
      p[i] = static_cast<P>(pv);
      m[i] = static_cast<P>(mv);
      v[i] = static_cast<P>(vv);
    }
  }
}

// Phase 1's policy: per-thread sums; m and v advanced in copies only.
struct LambNormSums {
  LambCoeffs<float> c;
  LambSums4 s{0.f, 0.f, 0.f, 0.f};
  __device__ __forceinline__ explicit LambNormSums(const LambCoeffs<float>& c_) : c(c_) {}
  __device__ __forceinline__ void operator()(float& p, float g, float& m, float& v) {
    float mask = 1.f, mm = m, vv = v;
    const float u = lamb_moments<float>(p, g, mm, vv, c, mask, DeviceLambMath{});
    const float pd = lamb_decayed(p, c);
    s.pp += pd * pd;
    if (c.caution) {
      s.uu += u * u;
      s.up += u * pd;
      s.count += mask;
    } else {
      const float full = lamb_full_update(u, pd, 1.f, c);
      s.uu += full * full;
    }
  }
};

// Phase 3's policy: the moments stored, p = p_decayed - step * (u*scale + wd*p_decayed).
struct LambApply {
  LambCoeffs<float> c;
  float step, scale;
  __device__ __forceinline__ LambApply(const LambCoeffs<float>& c_, const LambStep& s)
      : c(c_), step(s.step), scale(s.scale) {}
  __device__ __forceinline__ void operator()(float& p, float g, float& m, float& v) {
    float mask = 1.f;
    const float u = lamb_moments<float>(p, g, m, v, c, mask, DeviceLambMath{});
    const float pd = lamb_decayed(p, c);
    p = pd - step * lamb_full_update(u, pd, scale, c);
  }
};

// Block-wide sum of four values in a fixed order; valid in thread 0.
__device__ __forceinline__ LambSums4 block_sum4(LambSums4 x, LambSums4* smem) {
  for (int o = 16; o > 0; o >>= 1) {
    x.pp += __shfl_down_sync(0xffffffffu, x.pp, o);
    x.uu += __shfl_down_sync(0xffffffffu, x.uu, o);
    x.up += __shfl_down_sync(0xffffffffu, x.up, o);
    x.count += __shfl_down_sync(0xffffffffu, x.count, o);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) smem[warp] = x;
  __syncthreads();
  LambSums4 r{0.f, 0.f, 0.f, 0.f};
  if (warp == 0) {
    r = lane < kWarps ? smem[lane] : LambSums4{0.f, 0.f, 0.f, 0.f};
    for (int o = 16; o > 0; o >>= 1) {
      r.pp += __shfl_down_sync(0xffffffffu, r.pp, o);
      r.uu += __shfl_down_sync(0xffffffffu, r.uu, o);
      r.up += __shfl_down_sync(0xffffffffu, r.up, o);
      r.count += __shfl_down_sync(0xffffffffu, r.count, o);
    }
  }
  __syncthreads();  // smem is reused by the next chunk
  return r;
}

// A tensor's coefficients: its group's options, its step count, the grad factor.
__device__ __forceinline__ LambCoeffs<float> lamb_row_coeffs(const LambRow& row, const LambLaunchGroups& groups,
                                                             float inv_scale, float clip) {
  const LambHyper& h = groups.h[row.group];
  const float lr = read_lr(groups.lr[row.group]);
  const double g_coef = static_cast<double>(h.maximize ? -inv_scale : inv_scale) / clip;
  return LambCoeffs<float>(h, lamb_tensor_coeffs(h, static_cast<double>(*row.step), lr, g_coef));
}

template <typename P>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    lamb_kernel(LambTable tab, LambLaunchGroups groups, const float* grad_scale, const float* found_inf,
                const float* clip, int phases, SumsIO io) {
  // Every block reads the same flag, so either all return or none does.
  if (found_inf != nullptr && *found_inf != 0.f) return;
  const float inv_scale = grad_scale != nullptr ? 1.f / *grad_scale : 1.f;
  const float clip_factor = clip != nullptr ? *clip : 1.f;
  __shared__ LambSums4 smem[kWarps];
  const int lane = threadIdx.x % 32;
  const int64_t warp_id = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int64_t n_warps = static_cast<int64_t>(gridDim.x) * kWarps;

  if (phases & kPhaseNorms) {
    for (int64_t c = blockIdx.x; c < tab.n_chunks; c += gridDim.x) {
      const ChunkRow ch = tab.chunks[c];
      const LambRow& row = tab.rows[ch.tensor];
      if (!row.needs_sums) continue;  // block-uniform
      LambNormSums sums(lamb_row_coeffs(row, groups, inv_scale, clip_factor));
      traverse_lamb_chunk<false>(static_cast<P*>(row.p), static_cast<const P*>(row.g), static_cast<P*>(row.m),
                                 static_cast<P*>(row.v), ch.begin, ch.end, row.vec_ok != 0, sums);
      const LambSums4 total = block_sum4(sums.s, smem);
      if (threadIdx.x == 0) tab.partials[c] = total;
    }
  }
  if (phases & kGridSync) cg::this_grid().sync();

  if (phases & kPhaseRatios) {
    // One warp per tensor: lane l sums chunks l, l+32, ... in double, then a fixed
    // shuffle tree; the same bits whatever the grid size.
    for (int64_t t = warp_id; t < tab.n_rows; t += n_warps) {
      const LambRow& row = tab.rows[t];
      if (!row.needs_sums) continue;  // warp-uniform
      const LambHyper& h = groups.h[row.group];
      LambSums sums;
      for (int64_t c = row.first_chunk + lane; c < row.first_chunk + row.n_chunks; c += 32) {
        sums.pp += __ldcg(&tab.partials[c].pp);  // written by other blocks: skip L1
        sums.uu += __ldcg(&tab.partials[c].uu);
        sums.up += __ldcg(&tab.partials[c].up);
        sums.count += __ldcg(&tab.partials[c].count);
      }
      for (int o = 16; o > 0; o >>= 1) {
        sums.pp += __shfl_down_sync(0xffffffffu, sums.pp, o);
        sums.uu += __shfl_down_sync(0xffffffffu, sums.uu, o);
        sums.up += __shfl_down_sync(0xffffffffu, sums.up, o);
        sums.count += __shfl_down_sync(0xffffffffu, sums.count, o);
      }
      if (lane == 0 && io.out != nullptr) {
        double* out = io.out + kLambSumsPerTensor * static_cast<int64_t>(row.index);
        out[0] = sums.pp;
        out[1] = sums.uu;
        out[2] = sums.up;
        out[3] = sums.count;
        out[4] = h.caution ? static_cast<double>(row.numel) : 0.0;
      } else if (lane == 0) {
        const float scale = lamb_caution_scale(h, sums.count, static_cast<double>(row.numel));
        tab.steps[t] = LambStep{lamb_tensor_step(h, read_lr(groups.lr[row.group]), sums, scale), scale};
      }
    }
  }
  if (phases & kGridSync) cg::this_grid().sync();

  if (phases & kPhaseUpdate) {
    for (int64_t c = blockIdx.x; c < tab.n_chunks; c += gridDim.x) {
      const ChunkRow ch = tab.chunks[c];
      const LambRow& row = tab.rows[ch.tensor];
      LambStep s{read_lr(groups.lr[row.group]), 1.f};
      if (row.needs_sums && io.in != nullptr) {  // (block-uniform: a few flops per chunk)
        const LambStepScale r = lamb_step_of_row(groups.h[row.group], s.step,
                                                 io.in + kLambSumsPerTensor * static_cast<int64_t>(row.index));
        s = LambStep{r.step, r.scale};
      } else if (row.needs_sums) {
        const LambStep* st = &tab.steps[ch.tensor];
        s = LambStep{__ldcg(&st->step), __ldcg(&st->scale)};
      }
      LambApply apply(lamb_row_coeffs(row, groups, inv_scale, clip_factor), s);
      traverse_lamb_chunk<true>(static_cast<P*>(row.p), static_cast<const P*>(row.g), static_cast<P*>(row.m),
                                static_cast<P*>(row.v), ch.begin, ch.end, row.vec_ok != 0, apply);
    }
  }
}

}  // namespace cuda_impl
}  // namespace lars_cuda
