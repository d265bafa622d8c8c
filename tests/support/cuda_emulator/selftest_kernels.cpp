// Small kernels that test the emulator itself (tests/integration/test_emulated_cuda.py):
// what it must compute (shuffles, block_sum of traversal.cuh, per-block shared
// memory, grid barriers) and what it must refuse (divergent barriers and
// shuffles, grid.sync() outside a cooperative launch, misaligned 16-byte loads).
// Registered as torch.ops.lars_cuda_emulated.selftest(name, grid, cooperative, seed).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cooperative_groups.h>

#include <string>

#include "cuda/traversal.cuh"
#include "emulator.h"

namespace {

namespace cg = cooperative_groups;
using lars_cuda::device_code::kThreads;

// out[block * kThreads + thread]: each lane's __shfl_down_sync(lane, 4): lane + 4, or its own below the tail.
__global__ void shuffle_down_values(float* out) {
  const float lane = static_cast<float>(threadIdx.x % 32);
  out[blockIdx.x * kThreads + threadIdx.x] = __shfl_down_sync(0xffffffffu, lane, 4);
}

// out[block]: block_sum of (thread + 1 + 1000 * block) over the block, twice in a row (smem reused).
__global__ void block_sums(float* out) {
  __shared__ lars_cuda::device_code::Sums3 smem[lars_cuda::device_code::kWarps];
  const float v = static_cast<float>(threadIdx.x + 1 + 1000 * blockIdx.x);
  lars_cuda::device_code::Sums3 first = lars_cuda::device_code::block_sum({v, 2.f * v, 0.f}, smem);
  lars_cuda::device_code::Sums3 second = lars_cuda::device_code::block_sum({-v, v, 1.f}, smem);
  if (threadIdx.x == 0) {
    out[4 * blockIdx.x] = first.pp;
    out[4 * blockIdx.x + 1] = first.gg;
    out[4 * blockIdx.x + 2] = second.pp;
    out[4 * blockIdx.x + 3] = second.pg;
  }
}

// out[block * kThreads + thread]: the block index read back from __shared__ after a barrier.
__global__ void shared_is_per_block(float* out) {
  __shared__ unsigned owner;
  if (threadIdx.x == 0) owner = blockIdx.x;
  __syncthreads();
  out[blockIdx.x * kThreads + threadIdx.x] = static_cast<float>(owner);
}

// out[block]: the sum of every block's (block + 1), each written before the grid
// barrier, which warp 0 reaches after five shuffles and the other warps at once.
__global__ void grid_barrier_sums(float* scratch, float* out) {
  float v = 1.f;
  if (threadIdx.x < 32)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if (threadIdx.x == 0) scratch[blockIdx.x] = v == 32.f ? static_cast<float>(blockIdx.x + 1) : NAN;
  cg::this_grid().sync();
  if (threadIdx.x == 0) {
    float s = 0.f;
    for (unsigned b = 0; b < gridDim.x; ++b) s += scratch[b];
    out[blockIdx.x] = s;
  }
}

__global__ void divergent_shuffle(float* out) {
  float v = 1.f;
  if (threadIdx.x % 32 < 16) v = __shfl_down_sync(0xffffffffu, v, 1);  // half a warp at a full-mask shuffle
  __syncthreads();
  out[threadIdx.x] = v;
}

__global__ void syncthreads_in_half_the_block(float* out) {
  if (threadIdx.x < 128) __syncthreads();  // the others return
  out[threadIdx.x] = 1.f;
}

__global__ void two_syncthreads_sites(float* out) {
  if (threadIdx.x < 128) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.f;
}

__global__ void grid_sync(float* out) {
  cg::this_grid().sync();
  out[blockIdx.x] = 1.f;
}

__global__ void block_returns_before_grid_sync(float* out) {
  if (blockIdx.x == 1) return;
  cg::this_grid().sync();
  out[blockIdx.x] = 1.f;
}

__global__ void misaligned_pack_load(float* out) {
  const uint4 v = __ldcg(reinterpret_cast<const uint4*>(out + 1));  // 4 bytes past a 16-byte boundary
  out[threadIdx.x] = static_cast<float>(v.x);
}

at::Tensor selftest(const std::string& name, int64_t grid, bool cooperative, int64_t seed) {
  const auto kind = cooperative ? emu::LaunchKind::kCooperative : emu::LaunchKind::kOrdinary;
  at::Tensor out = at::zeros({grid * kThreads + 4}, at::kFloat);
  at::Tensor scratch = at::full({grid}, NAN, at::kFloat);
  float* o = out.data_ptr<float>();
  float* s = scratch.data_ptr<float>();
  std::function<void()> body;
  if (name == "shuffle_down_values") body = [&] { shuffle_down_values(o); };
  else if (name == "block_sums") body = [&] { block_sums(o); };
  else if (name == "shared_is_per_block") body = [&] { shared_is_per_block(o); };
  else if (name == "grid_barrier_sums") body = [&] { grid_barrier_sums(s, o); };
  else if (name == "divergent_shuffle") body = [&] { divergent_shuffle(o); };
  else if (name == "syncthreads_in_half_the_block") body = [&] { syncthreads_in_half_the_block(o); };
  else if (name == "two_syncthreads_sites") body = [&] { two_syncthreads_sites(o); };
  else if (name == "grid_sync") body = [&] { grid_sync(o); };
  else if (name == "block_returns_before_grid_sync") body = [&] { block_returns_before_grid_sync(o); };
  else if (name == "misaligned_pack_load") body = [&] { misaligned_pack_load(o); };
  else TORCH_CHECK_VALUE(false, "selftest: no kernel named ", name);
  try {
    emu::launch(static_cast<unsigned>(grid), kThreads, kind, body, {static_cast<uint64_t>(seed)});
  } catch (const emu::Error& e) {
    TORCH_CHECK(false, "emulated CUDA kernel: ", e.what());
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lars_cuda_emulated, m) {
  m.def("selftest(str name, int grid, bool cooperative, int seed) -> Tensor", &selftest);
}
