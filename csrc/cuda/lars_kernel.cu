// CUDA implementation of lars_cuda::fused_lars_ and fused_lars_groups_: every
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
#include "traversal.cuh"

namespace cg = cooperative_groups;

namespace lars_cuda {
namespace {

using cuda::kThreads;
using cuda::kWarps;

constexpr int kMinBlocksPerSm = 3;  // caps registers at 80 per thread (768 threads per SM): no spills
// Elements per norm partial: the unit of determinism, and small enough that a
// wave of a few MiB still spreads over every SM.
constexpr int64_t kChunk = 8192;
constexpr int kNormUnroll = 2;    // 16-byte loads of p and g in flight per thread
constexpr int kUpdateUnroll = 1;  // of p, g and m (1024 threads per SM keep enough bytes in flight)
constexpr int kPhaseNorms = 1, kPhaseRatios = 2, kPhaseUpdate = 4, kGridSync = 8;
// Param groups per launch: their options travel in the kernel's arguments.
constexpr int kMaxGroups = 8;

struct TensorRow {
  void* p;
  const void* g;
  void* m;  // nullptr without momentum
  int64_t first_chunk;
  int64_t n_chunks;
  int64_t numel;
  int64_t index;   // position in the op call's flat list: the tensor's row of the sums (SumsIO)
  int32_t vec_ok;  // p, g and m all 16-byte aligned
  int32_t group;   // index into LaunchGroups::g
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
  cuda::Sums3* partials;  // per chunk: (sum p^2, sum g^2, sum p*g)
  TensorStep* steps;      // per tensor: step, d's scale, applied weight decay (lars.h)
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

// The sharded step's halves (SumsIO in lars_op.h): with io.out the ratio phase
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
  __shared__ cuda::Sums3 smem[kWarps];
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
        cuda::Sums3 local;
        if (h.norm_of_update) {  // block-uniform: <g, p> only where the ratio needs it (SSL)
          cuda::NormSums<true> sums;
          cuda::traverse_chunk<kNormUnroll, false>(static_cast<P*>(tr.p), static_cast<const G*>(tr.g),
                                                   static_cast<P*>(nullptr), ch.begin, ch.end, tr.vec_ok != 0, sums);
          local = sums.s;
        } else {
          cuda::NormSums<false> sums;
          cuda::traverse_chunk<kNormUnroll, false>(static_cast<P*>(tr.p), static_cast<const G*>(tr.g),
                                                   static_cast<P*>(nullptr), ch.begin, ch.end, tr.vec_ok != 0, sums);
          local = sums.s;
        }
        const cuda::Sums3 total = cuda::block_sum(local, smem);
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
          cuda::traverse_chunk<kUpdateUnroll, true>(static_cast<P*>(tr.p), static_cast<const G*>(tr.g),
                                                    static_cast<P*>(tr.m), ch.begin, ch.end, tr.vec_ok != 0, apply);
        } else {
          ApplyLars apply(ts, g_coef, h);
          cuda::traverse_chunk<kUpdateUnroll, true>(static_cast<P*>(tr.p), static_cast<const G*>(tr.g),
                                                    static_cast<P*>(tr.m), ch.begin, ch.end, tr.vec_ok != 0, apply);
        }
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

void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

std::vector<int64_t> table_key(const Bucket& b, int64_t wave) {
  std::vector<int64_t> key;
  key.reserve(6 * b.params.size() + 3);
  key.push_back(b.params[0].get_device());
  key.push_back(static_cast<int64_t>(b.p_type) * 64 + static_cast<int64_t>(b.g_type));
  key.push_back(wave);
  for (size_t i = 0; i < b.params.size(); ++i) {
    key.push_back(reinterpret_cast<int64_t>(b.params[i].data_ptr()));
    key.push_back(reinterpret_cast<int64_t>(b.grads[i].data_ptr()));
    key.push_back(reinterpret_cast<int64_t>(ptr_or_null(b.bufs[i])));
    key.push_back(b.params[i].numel());
    key.push_back(b.group[i]);
    key.push_back(b.index[i]);
  }
  return key;
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

CachedTable build_table(std::vector<int64_t> key, const Bucket& b, int64_t wave_limit) {
  const int64_t n_tensors = static_cast<int64_t>(b.params.size());
  std::vector<TensorRow> rows(n_tensors);
  std::vector<ChunkRow> chunks;
  std::vector<WaveRow> waves;
  int64_t wave_used = 0;
  for (int64_t t = 0; t < n_tensors; ++t) {
    const at::Tensor& p = b.params[t];
    const at::Tensor& g = b.grads[t];
    const int64_t n = p.numel();
    void* m = ptr_or_null(b.bufs[t]);
    const bool vec_ok = aligned16(p.data_ptr()) && aligned16(g.data_ptr()) && (m == nullptr || aligned16(m));
    // A wave closes before the tensor that would overflow it; a tensor larger
    // than a wave is a wave of its own.
    const int64_t bytes = n * (p.element_size() + g.element_size());
    if (waves.empty() || (wave_limit > 0 && wave_used > 0 && wave_used + bytes > wave_limit)) {
      const int64_t c0 = static_cast<int64_t>(chunks.size());
      waves.push_back({c0, c0, t, t});
      wave_used = 0;
    }
    wave_used += bytes;
    rows[t] = {p.data_ptr(), g.data_ptr(), m, static_cast<int64_t>(chunks.size()), 0, n, b.index[t], vec_ok ? 1 : 0,
               static_cast<int32_t>(b.group[t])};
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
  const int64_t off_steps = off_partials + align16(n_chunks * sizeof(cuda::Sums3));
  const int64_t bytes = off_steps + align16(n_tensors * sizeof(TensorStep));

  at::Tensor host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  uint8_t* h = host.data_ptr<uint8_t>();
  std::memcpy(h, rows.data(), n_tensors * sizeof(TensorRow));
  std::memcpy(h + off_chunks, chunks.data(), n_chunks * sizeof(ChunkRow));
  std::memcpy(h + off_waves, waves.data(), n_waves * sizeof(WaveRow));
  at::Tensor dev = at::empty({bytes}, b.params[0].options().dtype(at::kByte));
  // Asynchronous from pinned memory; the host allocator keeps `host` alive until the copy ran.
  dev.copy_(host, /*non_blocking=*/true);

  uint8_t* d = dev.data_ptr<uint8_t>();
  CachedTable entry;
  entry.key = std::move(key);
  entry.storage = dev;
  entry.table = {reinterpret_cast<const TensorRow*>(d),
                 reinterpret_cast<const ChunkRow*>(d + off_chunks),
                 reinterpret_cast<const WaveRow*>(d + off_waves),
                 reinterpret_cast<cuda::Sums3*>(d + off_partials),
                 reinterpret_cast<TensorStep*>(d + off_steps),
                 n_tensors,
                 n_chunks,
                 n_waves};
  return entry;
}

DeviceTable get_table(const Bucket& b) {
  const int64_t wave = wave_bytes();
  std::vector<int64_t> key = table_key(b, wave);
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
  entries.push_back(build_table(std::move(key), b, wave));
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
void launch(const DeviceTable& tab, const LaunchGroups& groups, const float* grad_scale, const float* found_inf,
            int device, SumsIO io) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  // LARS_CUDA_BLOCKS_PER_SM caps the grid (for tuning); by default as many
  // blocks as fit, which the cooperative launch caps again.
  const char* per_sm_env = std::getenv("LARS_CUDA_BLOCKS_PER_SM");
  const int64_t per_sm = per_sm_env != nullptr && *per_sm_env != '\0' ? std::max(1, std::atoi(per_sm_env)) : 8;
  const int64_t wanted = std::max<int64_t>(1, std::min<int64_t>(tab.n_chunks, per_sm * sms));
  if (!groups.any_lars || io.in != nullptr) {  // no norms to take: the update alone
    lars_kernel<P, G><<<static_cast<unsigned>(wanted), kThreads, 0, stream>>>(tab, groups, grad_scale, found_inf,
                                                                               kPhaseUpdate, io);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    set_last_cuda_launch("single");
    return;
  }
  // Sums out: the norm and ratio phases only.
  const int wanted_phases = io.out != nullptr ? kPhaseNorms | kPhaseRatios : kPhaseNorms | kPhaseRatios | kPhaseUpdate;
  // LARS_CUDA_LAUNCH=three-kernel forces the fallback (so the tests cover it).
  const char* forced = std::getenv("LARS_CUDA_LAUNCH");
  const bool force_three = forced != nullptr && std::string(forced) == "three-kernel";
  const int coop_max = force_three ? 0 : cooperative_grid<P, G>(device);
  if (coop_max > 0) {
    const unsigned grid = static_cast<unsigned>(std::min<int64_t>(wanted, coop_max));
    int phases = wanted_phases | kGridSync;
    DeviceTable tab_arg = tab;
    LaunchGroups groups_arg = groups;
    SumsIO io_arg = io;
    void* args[] = {&tab_arg, &groups_arg, &grad_scale, &found_inf, &phases, &io_arg};
    C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(lars_kernel<P, G>), dim3(grid),
                                               dim3(kThreads), args, 0, stream));
    set_last_cuda_launch("cooperative");
    return;
  }
  for (int phase : {kPhaseNorms, kPhaseRatios, kPhaseUpdate}) {
    if (!(wanted_phases & phase)) continue;
    lars_kernel<P, G><<<static_cast<unsigned>(wanted), kThreads, 0, stream>>>(tab, groups, grad_scale, found_inf,
                                                                               phase, io);
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

LrArg lr_arg(const GroupCall& g) {
  LrArg lr{static_cast<float>(g.lr), nullptr, false};
  if (g.lr_tensor.has_value()) {
    if (g.lr_tensor->is_cpu()) {
      lr.value = static_cast<float>(g.lr_tensor->item<double>());  // a host value: no device sync
    } else {
      lr.ptr = g.lr_tensor->const_data_ptr();
      lr.is_double = g.lr_tensor->scalar_type() == at::kDouble;
    }
  }
  return lr;
}

// Every group was checked before this runs (parse_groups / single_group), so
// an invalid group has already raised with nothing written. One launch per
// dtype bucket for up to kMaxGroups groups (the seed's two groups: one launch).
void run_groups_cuda(const std::vector<GroupCall>& groups, const std::optional<at::Tensor>& grad_scale,
                     const std::optional<at::Tensor>& found_inf, SumsIO io = {}) {
  std::vector<at::Tensor> keep;
  const float* scale_ptr = float_ptr_or_null(grad_scale, keep);
  const float* inf_ptr = float_ptr_or_null(found_inf, keep);
  for (size_t first = 0; first < groups.size(); first += kMaxGroups) {
    const size_t last = std::min(groups.size(), first + kMaxGroups);
    std::vector<Bucket> buckets;
    LaunchGroups args{};
    args.n = static_cast<int>(last - first);
    args.any_lars = false;
    for (size_t k = first; k < last; ++k) {
      const GroupCall& g = groups[k];
      args.h[k - first] = g.hyper;
      args.lr[k - first] = lr_arg(g);
      if (g.params.empty() || (io.out != nullptr && !g.hyper.lars)) continue;  // norms: LARS groups only
      args.any_lars |= g.hyper.lars;
      add_to_buckets(buckets, g.params, g.grads, g.bufs, static_cast<int64_t>(k - first), g.first_index);
    }
    for (Bucket& b : buckets) {
      const c10::cuda::CUDAGuard guard(b.params[0].device());
      const DeviceTable tab = get_table(b);
      const int device = b.params[0].get_device();
      dispatch_lars_type(b.p_type, "params", [&](auto p_tag) {
        using P = decltype(p_tag);
        dispatch_lars_type(b.g_type, "grads", [&](auto g_tag) {
          using G = decltype(g_tag);
          launch<P, G>(tab, args, scale_ptr, inf_ptr, device, io);
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

at::Tensor fused_lars_norms_cuda(at::TensorList params, at::TensorList grads, at::IntArrayRef group_sizes,
                                 at::IntArrayRef flags) {
  const std::vector<GroupCall> groups = parse_norm_groups(params, grads, group_sizes, flags);
  const at::TensorOptions opts = at::TensorOptions().dtype(at::kDouble).device(
      params.empty() ? at::Device(at::kCUDA, c10::cuda::current_device()) : params[0].device());
  at::Tensor sums = at::zeros({static_cast<int64_t>(params.size()), kSumsPerTensor}, opts);
  run_groups_cuda(groups, std::nullopt, std::nullopt, SumsIO{sums.data_ptr<double>(), nullptr});
  return sums;
}

void fused_lars_apply_cuda(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                           at::IntArrayRef group_sizes, at::ArrayRef<double> hyper, at::IntArrayRef flags,
                           const c10::List<std::optional<at::Tensor>>& lr_tensors, const at::Tensor& sums,
                           const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  // Checked first: the sums' data pointer is read only once they are known to be float64.
  const std::vector<GroupCall> groups = parse_apply_groups(params, grads, momentum_buffers, group_sizes, hyper,
                                                           flags, lr_tensors, sums, grad_scale, found_inf);
  run_groups_cuda(groups, grad_scale, found_inf, SumsIO{nullptr, sums.const_data_ptr<double>()});
}

// Whether lars_kernel has an image for `device` (SASS for its architecture or PTX
// the driver can JIT): cudaFuncGetAttributes fails with
// cudaErrorNoKernelImageForDevice otherwise. Cached per device.
bool kernel_runs_on(int64_t device) {
  static std::mutex mu;
  static std::vector<int> known;  // -1 unknown, 0 no, 1 yes
  std::lock_guard<std::mutex> lock(mu);
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || device < 0 || device >= count) {
    (void)cudaGetLastError();
    return false;
  }
  if (known.size() <= static_cast<size_t>(device)) known.resize(device + 1, -1);
  if (known[device] < 0) {
    const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
    cudaFuncAttributes attr;
    const cudaError_t err = cudaFuncGetAttributes(&attr, lars_kernel<float, float>);
    (void)cudaGetLastError();  // clear a sticky "no kernel image" so torch does not see it later
    known[device] = err == cudaSuccess ? 1 : 0;
  }
  return known[device] == 1;
}

const bool probe_installed = (cuda_kernel_probe() = &kernel_runs_on, true);

}  // namespace

TORCH_LIBRARY_IMPL(lars_cuda, CUDA, m) {
  m.impl("fused_lars_", &fused_lars_cuda);
  m.impl("fused_lars_groups_", &fused_lars_groups_cuda);
  m.impl("fused_lars_norms", &fused_lars_norms_cuda);
  m.impl("fused_lars_apply_", &fused_lars_apply_cuda);
}

}  // namespace lars_cuda
