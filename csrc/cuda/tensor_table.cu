// The cached tensor tables (tensor_table.cuh). Moved, not changed, from
// lars_kernel.cu, except that the wave size arrives as an argument (read once:
// launch_config.h).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAGraphsUtils.cuh>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

#include "tensor_table.cuh"

namespace lars_cuda {
namespace cuda_impl {
namespace {

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

}  // namespace

DeviceTable get_table(const Bucket& b, int64_t wave) {
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

}  // namespace cuda_impl
}  // namespace lars_cuda
