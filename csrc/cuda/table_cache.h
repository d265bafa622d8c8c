// A cache of device tables (LARS's tensor_table.cu, LAMB's lamb_tensor_table.cu):
// a table is built once per parameter list (its key: the tensors' pointers and
// sizes) so a steady-state step does no host-to-device copy, and one that a CUDA
// graph captured is never evicted (the graph holds its pointers). A table missing
// during capture is an error: it cannot be copied from the host inside a graph.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAGraphsUtils.cuh>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

namespace lars_cuda {
namespace cuda_impl {

template <typename Value>
class TableCache {
 public:
  // The cached value for `key`, or `build()`'s (stored). `op` names the caller in the
  // error raised when a table would have to be built during capture.
  template <typename Build>
  Value get(std::vector<int64_t> key, const char* op, Build build) {
    const bool capturing = at::cuda::currentStreamCaptureStatus() != at::cuda::CaptureStatus::None;
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& e : entries_) {
      if (e.key == key) {
        e.used_in_graph |= capturing;
        return e.value;
      }
    }
    TORCH_CHECK(!capturing, op,
                ": this parameter list was never stepped outside CUDA graph capture; run one step "
                "(e.g. a warm-up iteration) before capturing, so its tensor table is built on the device first");
    if (entries_.size() >= kMaxEntries) {
      entries_.erase(std::remove_if(entries_.begin(), entries_.end(), [](const Entry& e) { return !e.used_in_graph; }),
                     entries_.end());
    }
    entries_.push_back(Entry{std::move(key), build(), false});
    return entries_.back().value;
  }

 private:
  static constexpr size_t kMaxEntries = 16;
  struct Entry {
    std::vector<int64_t> key;
    Value value;
    bool used_in_graph;  // a captured graph holds its pointers: never evict
  };
  std::mutex mu_;
  std::vector<Entry> entries_;
};

}  // namespace cuda_impl
}  // namespace lars_cuda
