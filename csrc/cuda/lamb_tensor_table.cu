// The cached LAMB tables (lamb_tensor_table.cuh): a bucket's layout
// (lamb_launches.h) and a counts region, copied to the device once per
// parameter list (table_cache.h).
#include "lamb_tensor_table.cuh"

#include <cstdint>
#include <cstring>
#include <vector>

#include "lamb_launches.h"
#include "table_cache.h"

namespace lars_cuda {
namespace cuda_impl {
namespace {

// A table's device bytes (rows, chunks, partials, steps, then the counts), its
// pointers and the counts region as a float32 tensor.
struct CachedLambTable {
  at::Tensor storage;
  LambTable table;
  at::Tensor counts;
};

TableCache<CachedLambTable>& cache() {
  static TableCache<CachedLambTable> c;
  return c;
}

// What the rows hold: the tensors' pointers (alignment follows from them), sizes,
// groups and whether phases 1-2 run for them.
std::vector<int64_t> lamb_table_key(const LambBucket& b, const LambLaunchGroups& groups) {
  std::vector<int64_t> key;
  key.reserve(7 * b.params.size() + 2);
  key.push_back(b.params[0].get_device());
  key.push_back(static_cast<int64_t>(b.dtype));
  for (size_t t = 0; t < b.params.size(); ++t) {
    const LambHyper& h = groups.h[b.group[t]];
    key.push_back(reinterpret_cast<int64_t>(b.params[t].data_ptr()));
    key.push_back(reinterpret_cast<int64_t>(b.grads[t].data_ptr()));
    key.push_back(reinterpret_cast<int64_t>(b.exp_avgs[t].data_ptr()));
    key.push_back(reinterpret_cast<int64_t>(b.exp_avg_sqs[t].data_ptr()));
    key.push_back(b.params[t].numel());
    key.push_back(b.group[t]);
    key.push_back((h.adapt || h.caution) ? 1 : 0);
  }
  return key;
}

CachedLambTable build_lamb_table(const LambBucket& b, const LambLaunchGroups& groups) {
  // The counts go after the layout's parts (its size does not depend on where they are).
  const int64_t n = static_cast<int64_t>(b.params.size());
  const int64_t off_counts = lamb_table_layout(b, groups, nullptr).bytes;
  const int64_t bytes = off_counts + align16(n * static_cast<int64_t>(sizeof(float)));
  at::Tensor dev = at::empty({bytes}, b.params[0].options().dtype(at::kByte));
  uint8_t* base = dev.data_ptr<uint8_t>();
  const LambTableLayout layout = lamb_table_layout(b, groups, reinterpret_cast<const float*>(base + off_counts));
  // The rows and chunks (partials and steps are the kernel's scratch), asynchronously
  // from pinned memory; the host allocator keeps `host` alive until the copy ran.
  at::Tensor host = at::empty({layout.off_partials}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  uint8_t* h = host.data_ptr<uint8_t>();
  std::memcpy(h, layout.rows.data(), layout.rows.size() * sizeof(LambRow));
  std::memcpy(h + layout.off_chunks, layout.chunks.data(), layout.chunks.size() * sizeof(ChunkRow));
  dev.narrow(0, 0, layout.off_partials).copy_(host, /*non_blocking=*/true);
  at::Tensor counts = dev.narrow(0, off_counts, n * static_cast<int64_t>(sizeof(float))).view(at::kFloat);
  return CachedLambTable{dev, lamb_table_at(layout, base), counts};
}

}  // namespace

LambTable get_lamb_table(const LambBucket& b, const LambLaunchGroups& groups, const at::Tensor& counts,
                         const char* op) {
  const CachedLambTable entry =
      cache().get(lamb_table_key(b, groups), op, [&] { return build_lamb_table(b, groups); });
  entry.counts.copy_(counts, /*non_blocking=*/true);  // on the device: a device-to-device copy
  return entry.table;
}

}  // namespace cuda_impl
}  // namespace lars_cuda
