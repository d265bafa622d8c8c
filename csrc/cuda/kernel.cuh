// The CUDA kernel of lars_cuda::fused_lars_groups_ and its policies: every
// param group of a step in ONE cooperative launch (per dtype bucket).
//
// Phases, separated by grid-wide barriers:
//   1. norms   — each block reduces fixed chunks of (p, g) to partial sums
//                (traversal.cuh's NormSums policy); chunks of lars=False
//                groups are skipped;
//   2. ratios  — one warp per tensor sums its chunks' partials in a fixed
//                order (double) and stores the tensor's step (lars.h's
//                tensor_step: every flavour's ratio rule) with its
//                group's options;
//   3. update  — every element, with its tensor's step and its group's
//                options (the ApplyLars policy below).
// The per-group options (LarsHyper, lr) travel by value in the launch
// arguments, up to kMaxGroups per launch (more groups: more launches); each
// tensor row names its group. Optionally (LARS_CUDA_WAVE_MB) the list is cut
// into waves of consecutive tensors whose params and grads fit in part of the
// L2, and the three phases run per wave, so the update re-reads p and g from
// L2 instead of DRAM. On an H100 that raised the L2 hit rate from 29 % to 50 %
// but cost two grid barriers per wave, and the step was 6 % slower than one
// wave (benchmarks/NOTES.md), so one wave is the default.
// The element traversal (16-byte loads with cache hints, tails) is written
// once, in traversal.cuh, and both passes are policies on it. The chunking
// and every reduction order are fixed, so a step is bit-for-bit reproducible
// run to run. Where a cooperative launch is impossible the three phases run
// as three ordinary launches on the same stream (last_cuda_launch() tells
// which ran). Without any LARS group phases 1-2 are skipped and one ordinary
// launch suffices.
//
// The tensor table (pointers, sizes, groups, chunk and wave lists) and the
// workspace live in one device buffer that is cached per parameter list, so
// a steady-state step does no host-to-device copy. AMP: grads are divided by
// *grad_scale inside the kernel, and a nonzero *found_inf makes every block
// return before writing.
//
// Environment: LARS_CUDA_LAUNCH=three-kernel forces the fallback;
// LARS_CUDA_WAVE_MB=N sets the wave size (default 0: one wave);
// LARS_CUDA_BLOCKS_PER_SM=N caps the grid.
// The launch is in launch.cuh, the table cache in tensor_table.cu, the ops in
// entry_points.cu; tests/cuda_emulator runs this file on the CPU.
#pragma once

#include <cooperative_groups.h>

#include <cstdint>

#include "../group_args.h"
#include "device_table.cuh"
#include "traversal.cuh"

namespace cg = cooperative_groups;

namespace lars_cuda {
namespace cuda_impl {

struct LrArg {
  float value;      // used when ptr is null
  const void* ptr;  // a device scalar, float32 or float64
  bool is_double;
};

__device__ __forceinline__ float read_lr(const LrArg& lr) {
  if (lr.ptr == nullptr) return lr.value;
  return lr.is_double ? static_cast<float>(*static_cast<const double*>(lr.ptr)) : *static_cast<const float*>(lr.ptr);
}

// The options of every group of one launch: one row per group.
struct LaunchGroups {
  LarsHyper h[kMaxGroups];
  LrArg lr[kMaxGroups];
  int n;
  bool any_lars;
};

// The update policy: one element of the LARS step (lars.h), with its tensor's
// step = lr * r and its group's coefficients.
struct ApplyLars {
  float step, g_coef;
  ElementCoeffs<float> coeffs;
  __device__ __forceinline__ ApplyLars(const TensorStep& ts, float g_coef_, const LarsHyper& h)
      : step(ts.step), g_coef(g_coef_), coeffs(h, ts.weight_decay) {}
  __device__ __forceinline__ void operator()(float& p, float g, float& m) {
    p = lars_element<float>(p, g * g_coef, m, step, coeffs, ClampNan{});
  }
};

// The flavours' update policy: r on the gradient before momentum, dampening.
struct ApplyFlavour {
  float step, g_coef;
  ElementCoeffs<float> coeffs;
  FlavourCoeffs<float> flavour;
  __device__ __forceinline__ ApplyFlavour(const TensorStep& ts, float g_coef_, const LarsHyper& h)
      : step(ts.step), g_coef(g_coef_), coeffs(h, ts.weight_decay), flavour(ts.dscale, h) {}
  __device__ __forceinline__ void operator()(float& p, float g, float& m) {
    p = flavour_element<float>(p, g * g_coef, m, step, coeffs, flavour, ClampNan{});
  }
};

// The sharded step's halves (SumsIO in group_args.h): with io.out the ratio phase
// stores each tensor's (Σp², Σg²) and no update runs; with io.in the update
// phase forms each tensor's step from those sums (no norm or ratio phase, so
// no grid barrier: one ordinary launch).
template <typename P, typename G>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    lars_kernel(DeviceTable tab, LaunchGroups groups, const float* grad_scale, const float* found_inf, int phases,
                SumsIO io) {
  // Every block reads the same flag, so either all return or none does (no
  // block is left waiting at a grid barrier).
  if (found_inf != nullptr && *found_inf != 0.f) return;
  const float inv_scale = grad_scale != nullptr ? 1.f / *grad_scale : 1.f;
  __shared__ device_code::Sums3 smem[kWarps];
  const int lane = threadIdx.x % 32;
  const int64_t warp_id = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int64_t n_warps = static_cast<int64_t>(gridDim.x) * kWarps;

  for (int64_t w = 0; w < tab.n_waves; ++w) {
    const WaveRow wave = tab.waves[w];
    if (phases & kPhaseNorms) {
      for (int64_t c = wave.first_chunk + blockIdx.x; c < wave.end_chunk; c += gridDim.x) {
        const ChunkRow ch = tab.chunks[c];
        const TensorRow& tr = tab.tensors[ch.tensor];
        const LarsHyper& h = groups.h[tr.group];
        if (!h.lars) continue;  // block-uniform: no norms without LARS
        device_code::Sums3 local;
        if (h.norm_of_update) {  // block-uniform: <g, p> only where the ratio needs it (SSL)
          device_code::NormSums<true> sums;
          device_code::traverse_chunk<kNormUnroll, false>(static_cast<P*>(tr.p), static_cast<const G*>(tr.g),
                                                   static_cast<P*>(nullptr), ch.begin, ch.end, tr.vec_ok != 0, sums);
          local = sums.s;
        } else {
          device_code::NormSums<false> sums;
          device_code::traverse_chunk<kNormUnroll, false>(static_cast<P*>(tr.p), static_cast<const G*>(tr.g),
                                                   static_cast<P*>(nullptr), ch.begin, ch.end, tr.vec_ok != 0, sums);
          local = sums.s;
        }
        const device_code::Sums3 total = device_code::block_sum(local, smem);
        if (threadIdx.x == 0) tab.partials[c] = total;
      }
    }
    if (phases & kGridSync) cg::this_grid().sync();

    if (phases & kPhaseRatios) {
      // One warp per tensor: lane l sums chunks l, l+32, ... in double, then a
      // fixed shuffle tree; the same bits whatever the grid size.
      for (int64_t t = wave.first_tensor + warp_id; t < wave.end_tensor; t += n_warps) {
        const TensorRow& tr = tab.tensors[t];
        const LarsHyper& h = groups.h[tr.group];
        double sp = 0.0, sg = 0.0, spg = 0.0;
        if (h.lars) {
          for (int64_t c = tr.first_chunk + lane; c < tr.first_chunk + tr.n_chunks; c += 32) {
            // written by other blocks: skip L1
            sp += __ldcg(&tab.partials[c].pp);
            sg += __ldcg(&tab.partials[c].gg);
            spg += __ldcg(&tab.partials[c].pg);
          }
          for (int o = 16; o > 0; o >>= 1) {
            sp += __shfl_down_sync(0xffffffffu, sp, o);
            sg += __shfl_down_sync(0xffffffffu, sg, o);
            spg += __shfl_down_sync(0xffffffffu, spg, o);
          }
        }
        if (lane == 0 && io.out != nullptr) {
          double* row = io.out + kSumsPerTensor * tr.index;
          row[0] = sp;
          row[1] = sg;
          row[2] = spg;
        } else if (lane == 0) {
          tab.steps[t] = tensor_step(read_lr(groups.lr[tr.group]), sp, sg, spg, grad_coefficient(inv_scale, h), h);
        }
      }
    }
    if (phases & kGridSync) cg::this_grid().sync();

    if (phases & kPhaseUpdate) {
      for (int64_t c = wave.first_chunk + blockIdx.x; c < wave.end_chunk; c += gridDim.x) {
        const ChunkRow ch = tab.chunks[c];
        const TensorRow& tr = tab.tensors[ch.tensor];
        const LarsHyper& h = groups.h[tr.group];
        const float g_coef = grad_coefficient(inv_scale, h);
        // Without any LARS group the ratio phase did not run: step = lr.
        TensorStep ts;
        if (io.in != nullptr) {
          const double* row = io.in + kSumsPerTensor * tr.index;
          ts = tensor_step(read_lr(groups.lr[tr.group]), row[0], row[1], row[2], g_coef, h);
        } else if (groups.any_lars) {
          const TensorStep* st = &tab.steps[ch.tensor];
          ts = TensorStep{__ldcg(&st->step), __ldcg(&st->dscale), __ldcg(&st->weight_decay)};
        } else {
          ts = TensorStep{read_lr(groups.lr[tr.group]), 1.f, applied_decay(h)};
        }
        if (needs_flavour_element(h)) {  // block-uniform
          ApplyFlavour apply(ts, g_coef, h);
          device_code::traverse_chunk<kUpdateUnroll, true>(static_cast<P*>(tr.p), static_cast<const G*>(tr.g),
                                                    static_cast<P*>(tr.m), ch.begin, ch.end, tr.vec_ok != 0, apply);
        } else {
          ApplyLars apply(ts, g_coef, h);
          device_code::traverse_chunk<kUpdateUnroll, true>(static_cast<P*>(tr.p), static_cast<const G*>(tr.g),
                                                    static_cast<P*>(tr.m), ch.begin, ch.end, tr.vec_ok != 0, apply);
        }
      }
    }
    // The next wave touches other tensors: no barrier needed before its norms.
  }
}

}  // namespace cuda_impl
}  // namespace lars_cuda
