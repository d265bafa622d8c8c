// CUDA implementation of lars_cuda::fused_lars_: the whole tensor list in one
// cooperative launch.
//
// Phases, separated by grid-wide barriers:
//   1. norms   — each block reduces fixed chunks of (p, g) to two partial sums;
//   2. ratios  — one warp per tensor sums its chunks' partials in a fixed
//                order (double) and stores step = lr * trust_ratio;
//   3. update  — every element, with its tensor's step.
// Optionally (LARS_CUDA_WAVE_MB) the list is cut into waves of consecutive
// tensors whose params and grads fit in part of the L2, and the three phases
// run per wave, so the update re-reads p and g from L2 instead of DRAM. On an
// H100 that raised the L2 hit rate from 29 % to 50 % but cost two grid
// barriers per wave, and the step was 6 % slower than one wave (measured,
// benchmarks/NOTES.md), so one wave is the default.
// Loads and stores are 16 bytes wide where a tensor's pointers allow it, with
// several in flight per thread (the first version, scalar and one load per
// thread, waited on memory ~75 % of the time: benchmarks/NOTES.md).
// The chunking and every reduction order are fixed, so a step is bit-for-bit
// reproducible run to run. Where a cooperative launch is impossible the three
// phases run as three ordinary launches on the same stream, each over all
// waves (torch.ops.lars_cuda.last_cuda_launch() tells which ran). Without LARS
// (lars=False) phases 1-2 are skipped and one ordinary launch suffices.
//
// The tensor table (pointers, sizes, chunk and wave lists) and the workspace
// live in one device buffer that is cached per parameter list, so a
// steady-state step does no host-to-device copy. AMP: grads are divided by
// *grad_scale inside the kernel, and a nonzero *found_inf makes every block
// return before writing.
//
// Environment: LARS_CUDA_LAUNCH=three-kernel forces the fallback;
// LARS_CUDA_WAVE_MB=N sets the wave size (default 0: one wave);
// LARS_CUDA_BLOCKS_PER_SM=N caps the grid.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraphsUtils.cuh>
#include <c10/cuda/CUDAGuard.h>
#include <cooperative_groups.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <string>
#include <mutex>
#include <vector>

#include "../lars_op.h"

namespace cg = cooperative_groups;

namespace lars_cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMinBlocksPerSm = 3;  // caps registers at 80 per thread (768 threads per SM): no spills
constexpr int kWarps = kThreads / 32;
// Elements per norm partial: the unit of determinism, and small enough that a
// wave of a few MiB still spreads over every SM.
constexpr int64_t kChunk = 8192;
constexpr int kNormUnroll = 2;    // 16-byte loads of p and g in flight per thread
constexpr int kUpdateUnroll = 1;  // of p, g and m (1024 threads per SM keep enough bytes in flight)
constexpr int kPhaseNorms = 1, kPhaseRatios = 2, kPhaseUpdate = 4, kGridSync = 8;

struct TensorRow {
  void* p;
  const void* g;
  void* m;  // nullptr without momentum
  int64_t first_chunk;
  int64_t n_chunks;
  int64_t numel;
  int64_t vec_ok;  // p, g and m all 16-byte aligned
};

struct ChunkRow {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

struct WaveRow {
  int64_t first_chunk, end_chunk;    // chunks [first, end)
  int64_t first_tensor, end_tensor;  // tensors [first, end)
};

struct DeviceTable {
  const TensorRow* tensors;
  const ChunkRow* chunks;
  const WaveRow* waves;
  float2* partials;  // per chunk: (sum p^2, sum g^2)
  float* steps;      // per tensor: lr * r
  int64_t n_tensors;
  int64_t n_chunks;
  int64_t n_waves;
};

struct LrArg {
  float value;      // used when ptr is null
  const void* ptr;  // a device scalar, float32 or float64
  bool is_double;
};

__device__ __forceinline__ float read_lr(const LrArg& lr) {
  if (lr.ptr == nullptr) return lr.value;
  return lr.is_double ? static_cast<float>(*static_cast<const double*>(lr.ptr)) : *static_cast<const float*>(lr.ptr);
}

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

// The table's pointers are plain void*, so without help the compiler emits
// generic loads; these name the global space and the cache policy: .cg (L2
// only) for p and g, which the update re-reads from L2, and .cs (evict first)
// for the momentum buffer and the stores, so they do not push the wave's p
// and g out of L2.
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

// Block-wide sum of two values in a fixed order; the result is valid in thread 0.
__device__ __forceinline__ float2 block_sum2(float a, float b, float2* smem) {
  for (int o = 16; o > 0; o >>= 1) {
    a += __shfl_down_sync(0xffffffffu, a, o);
    b += __shfl_down_sync(0xffffffffu, b, o);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) smem[warp] = make_float2(a, b);
  __syncthreads();
  float2 r = make_float2(0.f, 0.f);
  if (warp == 0) {
    const float2 v = lane < kWarps ? smem[lane] : make_float2(0.f, 0.f);
    a = v.x;
    b = v.y;
    for (int o = 16; o > 0; o >>= 1) {
      a += __shfl_down_sync(0xffffffffu, a, o);
      b += __shfl_down_sync(0xffffffffu, b, o);
    }
    r = make_float2(a, b);
  }
  __syncthreads();  // smem is reused by the next chunk
  return r;
}

// Phase 1 for one chunk: sums of squares of p and g over [begin, end).
template <typename P, typename G>
__device__ __forceinline__ float2 chunk_sums(const P* p, const G* g, int64_t begin, int64_t end, bool vec_ok) {
  constexpr int N = vec_width<P, G>();
  float sp = 0.f, sg = 0.f;
  int64_t tail = begin;
  if (vec_ok) {
    const int64_t vec_end = begin + (end - begin) / N * N;
    constexpr int64_t kStride = static_cast<int64_t>(kThreads) * N;
    for (int64_t base = begin + static_cast<int64_t>(threadIdx.x) * N; base < vec_end;
         base += kStride * kNormUnroll) {
      Pack<P, N> pp[kNormUnroll];
      Pack<G, N> gg[kNormUnroll];
#pragma unroll
      for (int u = 0; u < kNormUnroll; ++u) {
        const int64_t i = base + u * kStride;
        if (i < vec_end) {
          pp[u] = load_pack<P, N>(p + i);
          gg[u] = load_pack<G, N>(g + i);
        }
      }
#pragma unroll
      for (int u = 0; u < kNormUnroll; ++u) {
        if (base + u * kStride < vec_end) {
#pragma unroll
          for (int k = 0; k < N; ++k) {
            const float a = static_cast<float>(pp[u].v[k]);
            const float b = static_cast<float>(gg[u].v[k]);
            sp += a * a;
            sg += b * b;
          }
        }
      }
    }
    tail = vec_end;
  }
  for (int64_t i = tail + threadIdx.x; i < end; i += kThreads) {
    const float a = static_cast<float>(p[i]);
    const float b = static_cast<float>(g[i]);
    sp += a * a;
    sg += b * b;
  }
  return make_float2(sp, sg);
}

// Phase 3 for one chunk: the LARS update of [begin, end) with this tensor's step.
template <typename P, typename G>
__device__ __forceinline__ void chunk_update(P* p, const G* g, P* m, int64_t begin, int64_t end, bool vec_ok,
                                             float step, float g_coef, const ElementCoeffs<float>& coeffs) {
  constexpr int N = vec_width<P, G>();
  int64_t tail = begin;
  if (vec_ok) {
    const int64_t vec_end = begin + (end - begin) / N * N;
    constexpr int64_t kStride = static_cast<int64_t>(kThreads) * N;
    for (int64_t base = begin + static_cast<int64_t>(threadIdx.x) * N; base < vec_end;
         base += kStride * kUpdateUnroll) {
      Pack<P, N> pp[kUpdateUnroll], mm[kUpdateUnroll];
      Pack<G, N> gg[kUpdateUnroll];
#pragma unroll
      for (int u = 0; u < kUpdateUnroll; ++u) {
        const int64_t i = base + u * kStride;
        if (i < vec_end) {
          pp[u] = load_pack<P, N>(p + i);
          gg[u] = load_pack<G, N>(g + i);
          if (m != nullptr) mm[u] = load_pack<P, N, Cache::kStreaming>(m + i);
        }
      }
#pragma unroll
      for (int u = 0; u < kUpdateUnroll; ++u) {
        const int64_t i = base + u * kStride;
        if (i < vec_end) {
#pragma unroll
          for (int k = 0; k < N; ++k) {
            float b = m != nullptr ? static_cast<float>(mm[u].v[k]) : 0.f;
            const float out = lars_element<float>(static_cast<float>(pp[u].v[k]),
                                                  static_cast<float>(gg[u].v[k]) * g_coef, b, step, coeffs,
                                                  ClampNan{});
            pp[u].v[k] = static_cast<P>(out);
            if (m != nullptr) mm[u].v[k] = static_cast<P>(b);
          }
          store_pack<P, N>(p + i, pp[u]);
          if (m != nullptr) store_pack<P, N>(m + i, mm[u]);
        }
      }
    }
    tail = vec_end;
  }
  for (int64_t i = tail + threadIdx.x; i < end; i += kThreads) {
    float b = m != nullptr ? static_cast<float>(m[i]) : 0.f;
    const float out = lars_element<float>(static_cast<float>(p[i]), static_cast<float>(g[i]) * g_coef, b, step,
                                          coeffs, ClampNan{});
    p[i] = static_cast<P>(out);
    if (m != nullptr) m[i] = static_cast<P>(b);
  }
}

template <typename P, typename G>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    lars_kernel(DeviceTable tab, LarsHyper h, LrArg lr, const float* grad_scale, const float* found_inf,
                int phases) {
  // Every block reads the same flag, so either all return or none does (no
  // block is left waiting at a grid barrier).
  if (found_inf != nullptr && *found_inf != 0.f) return;
  const float inv_scale = grad_scale != nullptr ? 1.f / *grad_scale : 1.f;
  const float g_coef = grad_coefficient(inv_scale, h);  // negated for maximize; norms use inv_scale
  const float lr_v = read_lr(lr);
  const ElementCoeffs<float> coeffs(h);
  __shared__ float2 smem[kWarps];
  const int lane = threadIdx.x % 32;
  const int64_t warp_id = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int64_t n_warps = static_cast<int64_t>(gridDim.x) * kWarps;

  for (int64_t w = 0; w < tab.n_waves; ++w) {
    const WaveRow wave = tab.waves[w];
    if (phases & kPhaseNorms) {
      for (int64_t c = wave.first_chunk + blockIdx.x; c < wave.end_chunk; c += gridDim.x) {
        const ChunkRow ch = tab.chunks[c];
        const TensorRow& tr = tab.tensors[ch.tensor];
        const float2 s = chunk_sums<P, G>(static_cast<const P*>(tr.p), static_cast<const G*>(tr.g), ch.begin,
                                          ch.end, tr.vec_ok != 0);
        const float2 total = block_sum2(s.x, s.y, smem);
        if (threadIdx.x == 0) tab.partials[c] = total;
      }
    }
    if (phases & kGridSync) cg::this_grid().sync();

    if (phases & kPhaseRatios) {
      // One warp per tensor: lane l sums chunks l, l+32, ... in double, then a
      // fixed shuffle tree; the same bits whatever the grid size.
      for (int64_t t = wave.first_tensor + warp_id; t < wave.end_tensor; t += n_warps) {
        const TensorRow& tr = tab.tensors[t];
        double sp = 0.0, sg = 0.0;
        for (int64_t c = tr.first_chunk + lane; c < tr.first_chunk + tr.n_chunks; c += 32) {
          const float2 v = __ldcg(&tab.partials[c]);  // written by other blocks: skip L1
          sp += v.x;
          sg += v.y;
        }
        for (int o = 16; o > 0; o >>= 1) {
          sp += __shfl_down_sync(0xffffffffu, sp, o);
          sg += __shfl_down_sync(0xffffffffu, sg, o);
        }
        if (lane == 0) {
          const float wn = static_cast<float>(sqrt(sp));
          const float gn = static_cast<float>(sqrt(sg)) * inv_scale;
          tab.steps[t] = lr_v * trust_ratio(wn, gn, h);
        }
      }
    }
    if (phases & kGridSync) cg::this_grid().sync();

    if (phases & kPhaseUpdate) {
      for (int64_t c = wave.first_chunk + blockIdx.x; c < wave.end_chunk; c += gridDim.x) {
        const ChunkRow ch = tab.chunks[c];
        const TensorRow& tr = tab.tensors[ch.tensor];
        const float step = h.lars ? __ldcg(&tab.steps[ch.tensor]) : lr_v;
        chunk_update<P, G>(static_cast<P*>(tr.p), static_cast<const G*>(tr.g), static_cast<P*>(tr.m), ch.begin,
                           ch.end, tr.vec_ok != 0, step, g_coef, coeffs);
      }
    }
    // The next wave touches other tensors: no barrier needed before its norms.
  }
}

// ---- the cached tensor table ------------------------------------------------

struct CachedTable {
  std::vector<int64_t> key;
  at::Tensor storage;  // device bytes: rows, chunks, partials, steps
  DeviceTable table;
  bool used_in_graph = false;  // a captured graph holds its pointers: never evict
};

constexpr size_t kMaxCachedTables = 16;

std::mutex& cache_mutex() {
  static std::mutex m;
  return m;
}

std::vector<CachedTable>& cache() {
  static std::vector<CachedTable> c;
  return c;
}

int64_t align16(int64_t x) { return (x + 15) / 16 * 16; }

// Bytes of params+grads per wave (LARS_CUDA_WAVE_MB); 0, the default, is one wave.
int64_t wave_bytes() {
  const char* env = std::getenv("LARS_CUDA_WAVE_MB");
  if (env == nullptr || *env == '\0') return 0;
  return std::max<int64_t>(0, static_cast<int64_t>(std::atof(env) * (1 << 20)));
}

std::vector<int64_t> table_key(at::TensorList params, at::TensorList grads, at::TensorList bufs, int64_t wave) {
  std::vector<int64_t> key;
  key.reserve(4 * params.size() + 4);
  key.push_back(params[0].get_device());
  key.push_back(static_cast<int64_t>(params[0].scalar_type()) * 64 + static_cast<int64_t>(grads[0].scalar_type()));
  key.push_back(bufs.empty() ? 0 : 1);
  key.push_back(wave);
  for (size_t i = 0; i < params.size(); ++i) {
    key.push_back(reinterpret_cast<int64_t>(params[i].data_ptr()));
    key.push_back(reinterpret_cast<int64_t>(grads[i].data_ptr()));
    key.push_back(bufs.empty() ? 0 : reinterpret_cast<int64_t>(bufs[i].data_ptr()));
    key.push_back(params[i].numel());
  }
  return key;
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

CachedTable build_table(std::vector<int64_t> key, at::TensorList params, at::TensorList grads,
                        at::TensorList bufs, int64_t wave_limit) {
  const int64_t n_tensors = static_cast<int64_t>(params.size());
  std::vector<TensorRow> rows(n_tensors);
  std::vector<ChunkRow> chunks;
  std::vector<WaveRow> waves;
  int64_t wave_used = 0;
  for (int64_t t = 0; t < n_tensors; ++t) {
    const int64_t n = params[t].numel();
    void* m = bufs.empty() ? nullptr : bufs[t].data_ptr();
    const bool vec_ok = aligned16(params[t].data_ptr()) && aligned16(grads[t].data_ptr()) &&
                        (m == nullptr || aligned16(m));
    // A wave closes before the tensor that would overflow it; a tensor larger
    // than a wave is a wave of its own.
    const int64_t bytes = n * (params[t].element_size() + grads[t].element_size());
    if (waves.empty() || (wave_limit > 0 && wave_used > 0 && wave_used + bytes > wave_limit)) {
      const int64_t c0 = static_cast<int64_t>(chunks.size());
      waves.push_back({c0, c0, t, t});
      wave_used = 0;
    }
    wave_used += bytes;
    rows[t] = {params[t].data_ptr(), grads[t].data_ptr(), m, static_cast<int64_t>(chunks.size()), 0, n,
               vec_ok ? 1 : 0};
    for (int64_t s = 0; s < n; s += kChunk) chunks.push_back({t, s, std::min(n, s + kChunk)});
    rows[t].n_chunks = static_cast<int64_t>(chunks.size()) - rows[t].first_chunk;
    waves.back().end_chunk = static_cast<int64_t>(chunks.size());
    waves.back().end_tensor = t + 1;
  }
  const int64_t n_chunks = static_cast<int64_t>(chunks.size());
  const int64_t n_waves = static_cast<int64_t>(waves.size());
  const int64_t off_chunks = align16(n_tensors * sizeof(TensorRow));
  const int64_t off_waves = off_chunks + align16(n_chunks * sizeof(ChunkRow));
  const int64_t off_partials = off_waves + align16(n_waves * sizeof(WaveRow));
  const int64_t off_steps = off_partials + align16(n_chunks * sizeof(float2));
  const int64_t bytes = off_steps + align16(n_tensors * sizeof(float));

  at::Tensor host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  uint8_t* h = host.data_ptr<uint8_t>();
  std::memcpy(h, rows.data(), n_tensors * sizeof(TensorRow));
  std::memcpy(h + off_chunks, chunks.data(), n_chunks * sizeof(ChunkRow));
  std::memcpy(h + off_waves, waves.data(), n_waves * sizeof(WaveRow));
  at::Tensor dev = at::empty({bytes}, params[0].options().dtype(at::kByte));
  // Asynchronous from pinned memory; the host allocator keeps `host` alive until the copy ran.
  dev.copy_(host, /*non_blocking=*/true);

  uint8_t* d = dev.data_ptr<uint8_t>();
  CachedTable entry;
  entry.key = std::move(key);
  entry.storage = dev;
  entry.table = {reinterpret_cast<const TensorRow*>(d),   reinterpret_cast<const ChunkRow*>(d + off_chunks),
                 reinterpret_cast<const WaveRow*>(d + off_waves), reinterpret_cast<float2*>(d + off_partials),
                 reinterpret_cast<float*>(d + off_steps), n_tensors, n_chunks, n_waves};
  return entry;
}

DeviceTable get_table(at::TensorList params, at::TensorList grads, at::TensorList bufs) {
  const int64_t wave = wave_bytes();
  std::vector<int64_t> key = table_key(params, grads, bufs, wave);
  const bool capturing = at::cuda::currentStreamCaptureStatus() != at::cuda::CaptureStatus::None;
  std::lock_guard<std::mutex> lock(cache_mutex());
  auto& entries = cache();
  for (auto& e : entries) {
    if (e.key == key) {
      e.used_in_graph |= capturing;
      return e.table;
    }
  }
  TORCH_CHECK(!capturing,
              "fused_lars_: this parameter list was never stepped outside CUDA graph capture; run one step "
              "(e.g. a warm-up iteration) before capturing, so its tensor table is built on the device first");
  if (entries.size() >= kMaxCachedTables) {
    entries.erase(std::remove_if(entries.begin(), entries.end(), [](const CachedTable& e) { return !e.used_in_graph; }),
                  entries.end());
  }
  entries.push_back(build_table(std::move(key), params, grads, bufs, wave));
  return entries.back().table;
}

// ---- launch -----------------------------------------------------------------

template <typename P, typename G>
int cooperative_grid(int device) {
  // Blocks that can be co-resident, per device; 0 when cooperative launch is unsupported.
  static std::mutex mu;
  static std::vector<int> per_device;
  std::lock_guard<std::mutex> lock(mu);
  if (per_device.size() <= static_cast<size_t>(device)) per_device.resize(device + 1, -1);
  if (per_device[device] < 0) {
    int coop = 0, sms = 0, per_sm = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, lars_kernel<P, G>, kThreads, 0));
    per_device[device] = coop ? sms * per_sm : 0;
  }
  return per_device[device];
}

template <typename P, typename G>
void launch(const DeviceTable& tab, const LarsHyper& h, const LrArg& lr, const float* grad_scale,
            const float* found_inf, int device) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  // LARS_CUDA_BLOCKS_PER_SM caps the grid (for tuning); by default as many
  // blocks as fit, which the cooperative launch caps again.
  const char* per_sm_env = std::getenv("LARS_CUDA_BLOCKS_PER_SM");
  const int64_t per_sm = per_sm_env != nullptr && *per_sm_env != '\0' ? std::max(1, std::atoi(per_sm_env)) : 8;
  const int64_t wanted = std::max<int64_t>(1, std::min<int64_t>(tab.n_chunks, per_sm * sms));
  if (!h.lars) {
    lars_kernel<P, G><<<static_cast<unsigned>(wanted), kThreads, 0, stream>>>(tab, h, lr, grad_scale, found_inf,
                                                                               kPhaseUpdate);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    set_last_cuda_launch("single");
    return;
  }
  // LARS_CUDA_LAUNCH=three-kernel forces the fallback (so the tests cover it).
  const char* forced = std::getenv("LARS_CUDA_LAUNCH");
  const bool force_three = forced != nullptr && std::string(forced) == "three-kernel";
  const int coop_max = force_three ? 0 : cooperative_grid<P, G>(device);
  if (coop_max > 0) {
    const unsigned grid = static_cast<unsigned>(std::min<int64_t>(wanted, coop_max));
    int phases = kPhaseNorms | kPhaseRatios | kPhaseUpdate | kGridSync;
    DeviceTable tab_arg = tab;
    LarsHyper h_arg = h;
    LrArg lr_arg = lr;
    void* args[] = {&tab_arg, &h_arg, &lr_arg, &grad_scale, &found_inf, &phases};
    C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(lars_kernel<P, G>), dim3(grid),
                                               dim3(kThreads), args, 0, stream));
    set_last_cuda_launch("cooperative");
    return;
  }
  for (int phase : {kPhaseNorms, kPhaseRatios, kPhaseUpdate}) {
    lars_kernel<P, G><<<static_cast<unsigned>(wanted), kThreads, 0, stream>>>(tab, h, lr, grad_scale, found_inf,
                                                                               phase);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  set_last_cuda_launch("three-kernel");
}

const float* float_ptr_or_null(const std::optional<at::Tensor>& t, std::vector<at::Tensor>& keep) {
  if (!t.has_value()) return nullptr;
  if (t->scalar_type() == at::kFloat) return t->const_data_ptr<float>();
  keep.push_back(t->to(at::kFloat));
  return keep.back().const_data_ptr<float>();
}

// Every group was checked before this runs (parse_groups / single_group), so
// an invalid group has already raised with nothing written. One launch per
// group and dtype bucket.
void run_groups_cuda(const std::vector<GroupCall>& groups, const std::optional<at::Tensor>& grad_scale,
                     const std::optional<at::Tensor>& found_inf) {
  std::vector<at::Tensor> keep;
  const float* scale_ptr = float_ptr_or_null(grad_scale, keep);
  const float* inf_ptr = float_ptr_or_null(found_inf, keep);
  for (const GroupCall& g : groups) {
    if (g.params.empty()) continue;
    const c10::cuda::CUDAGuard guard(g.params[0].device());
    LrArg lr_arg{static_cast<float>(g.lr), nullptr, false};
    if (g.lr_tensor.has_value()) {
      if (g.lr_tensor->is_cpu()) {
        lr_arg.value = static_cast<float>(g.lr_tensor->item<double>());  // a host value: no device sync
      } else {
        lr_arg.ptr = g.lr_tensor->const_data_ptr();
        lr_arg.is_double = g.lr_tensor->scalar_type() == at::kDouble;
      }
    }
    const int device = g.params[0].get_device();
    for (Bucket& b : bucket_by_dtype(g.params, g.grads, g.bufs)) {
      const DeviceTable tab = get_table(b.params, b.grads, b.bufs);
      dispatch_lars_type(b.p_type, "params", [&](auto p_tag) {
        using P = decltype(p_tag);
        dispatch_lars_type(b.g_type, "grads", [&](auto g_tag) {
          using G = decltype(g_tag);
          launch<P, G>(tab, g.hyper, lr_arg, scale_ptr, inf_ptr, device);
        });
      });
      finish_bucket(b);
    }
  }
}

void fused_lars_cuda(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers, double lr,
                     const std::optional<at::Tensor>& lr_tensor, double momentum, double weight_decay,
                     double eeta, double epsilon, bool lars, bool nesterov, std::optional<double> trust_clip,
                     std::optional<double> update_clip, const std::optional<at::Tensor>& grad_scale,
                     const std::optional<at::Tensor>& found_inf) {
  run_groups_cuda(single_group(params, grads, momentum_buffers, lr, lr_tensor, momentum, weight_decay, eeta,
                               epsilon, lars, nesterov, trust_clip, update_clip, grad_scale, found_inf),
                  grad_scale, found_inf);
}

void fused_lars_groups_cuda(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                            at::IntArrayRef group_sizes, at::ArrayRef<double> hyper, at::IntArrayRef flags,
                            const c10::List<std::optional<at::Tensor>>& lr_tensors,
                            const std::optional<at::Tensor>& grad_scale,
                            const std::optional<at::Tensor>& found_inf) {
  run_groups_cuda(parse_groups(params, grads, momentum_buffers, group_sizes, hyper, flags, lr_tensors, grad_scale,
                               found_inf),
                  grad_scale, found_inf);
}

}  // namespace

TORCH_LIBRARY_IMPL(lars_cuda, CUDA, m) {
  m.impl("fused_lars_", &fused_lars_cuda);
  m.impl("fused_lars_groups_", &fused_lars_groups_cuda);
}

}  // namespace lars_cuda
