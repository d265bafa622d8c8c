// The cached tensor tables (tensor_table.cuh): a bucket's layout
// (table_layout.h) copied to the device once per parameter list.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAGraphsUtils.cuh>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

#include "table_layout.h"
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

// The rows, chunks and waves into a host buffer of l.bytes bytes (partials and
// steps are the kernel's scratch: left as they are).
void write_layout(const TableLayout& l, uint8_t* host) {
  std::memcpy(host, l.rows.data(), l.rows.size() * sizeof(TensorRow));
  std::memcpy(host + l.off_chunks, l.chunks.data(), l.chunks.size() * sizeof(ChunkRow));
  std::memcpy(host + l.off_waves, l.waves.data(), l.waves.size() * sizeof(WaveRow));
}

CachedTable build_table(std::vector<int64_t> key, const Bucket& b, int64_t wave_limit) {
  const TableLayout layout = table_layout(b, wave_limit);
  at::Tensor host = at::empty({layout.bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  write_layout(layout, host.data_ptr<uint8_t>());
  at::Tensor dev = at::empty({layout.bytes}, b.params[0].options().dtype(at::kByte));
  // Asynchronous from pinned memory; the host allocator keeps `host` alive until the copy ran.
  dev.copy_(host, /*non_blocking=*/true);
  CachedTable entry;
  entry.key = std::move(key);
  entry.storage = dev;
  entry.table = table_at(layout, dev.data_ptr<uint8_t>());
  return entry;
}

}  // namespace

DeviceTable get_table(const Bucket& b, int64_t wave, const char* op) {
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
  TORCH_CHECK(!capturing, op,
              ": this parameter list was never stepped outside CUDA graph capture; run one step "
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
