// One fused_lamb_groups_ call as CUDA launches, pure host C++ (no CUDA runtime
// call), so the emulated build of the tests lays out and walks them as the CUDA
// build does: up to kMaxGroups groups per launch, their options as the launch's
// LambLaunchGroups, their tensors in dtype buckets (lamb_buckets.h), each bucket's
// table (rows, chunks of kChunk elements, partials, steps) at offsets of one buffer.
#pragma once

#include <algorithm>
#include <optional>
#include <vector>

#include "../lamb_args.h"
#include "../lamb_buckets.h"
#include "group_launches.h"  // lr_arg's rule, float_ptr_or_null
#include "lamb_kernel.cuh"
#include "table_layout.h"    // align16, aligned16

namespace lars_cuda {
namespace cuda_impl {

struct LambTableLayout {
  std::vector<LambRow> rows;
  std::vector<ChunkRow> chunks;
  int64_t off_chunks = 0, off_partials = 0, off_steps = 0, bytes = 0;
};

// `steps`: the bucket's step counts as float32 in the memory the kernel reads
// (one element per tensor, in the bucket's order).
inline LambTableLayout lamb_table_layout(const LambBucket& b, const LambLaunchGroups& groups, const float* steps) {
  LambTableLayout l;
  const int64_t n = static_cast<int64_t>(b.params.size());
  l.rows.resize(n);
  for (int64_t t = 0; t < n; ++t) {
    const at::Tensor& p = b.params[t];
    const bool vec_ok = aligned16(p.data_ptr()) && aligned16(b.grads[t].data_ptr()) &&
                        aligned16(b.exp_avgs[t].data_ptr()) && aligned16(b.exp_avg_sqs[t].data_ptr());
    const LambHyper& h = groups.h[b.group[t]];
    l.rows[t] = LambRow{p.data_ptr(), b.grads[t].data_ptr(), b.exp_avgs[t].data_ptr(), b.exp_avg_sqs[t].data_ptr(),
                        steps + t, static_cast<int64_t>(l.chunks.size()), 0, p.numel(), vec_ok ? 1 : 0,
                        static_cast<int32_t>(b.group[t]), (h.adapt || h.caution) ? 1 : 0,
                        static_cast<int32_t>(b.index[t])};
    for (int64_t s = 0; s < p.numel(); s += kChunk) l.chunks.push_back({t, s, std::min(p.numel(), s + kChunk)});
    l.rows[t].n_chunks = static_cast<int64_t>(l.chunks.size()) - l.rows[t].first_chunk;
  }
  const int64_t n_chunks = static_cast<int64_t>(l.chunks.size());
  l.off_chunks = align16(n * static_cast<int64_t>(sizeof(LambRow)));
  l.off_partials = l.off_chunks + align16(n_chunks * static_cast<int64_t>(sizeof(ChunkRow)));
  l.off_steps = l.off_partials + align16(n_chunks * static_cast<int64_t>(sizeof(LambSums4)));
  l.bytes = l.off_steps + align16(n * static_cast<int64_t>(sizeof(LambStep)));
  return l;
}

inline LambTable lamb_table_at(const LambTableLayout& l, uint8_t* base) {
  return {reinterpret_cast<const LambRow*>(base), reinterpret_cast<const ChunkRow*>(base + l.off_chunks),
          reinterpret_cast<LambSums4*>(base + l.off_partials), reinterpret_cast<LambStep*>(base + l.off_steps),
          static_cast<int64_t>(l.rows.size()), static_cast<int64_t>(l.chunks.size())};
}

// Calls launch_bucket(args, bucket) for each dtype bucket of each launch of up to
// kMaxGroups groups, then writes the bucket's dense stand-ins back.
// `lr_is_host_value(tensor)`: where a tensor lr is read (lr_arg's rule).
template <typename LrIsHostValue, typename LaunchBucket>
void for_each_lamb_launch(const LambCall& call, LrIsHostValue lr_is_host_value, LaunchBucket launch_bucket) {
  const auto& groups = call.groups;
  std::vector<int64_t> offset(groups.size() + 1, 0);  // group k's first position in the flat lists
  for (size_t k = 0; k < groups.size(); ++k) offset[k + 1] = offset[k] + static_cast<int64_t>(groups[k].params.size());
  for (size_t first = 0; first < groups.size(); first += kMaxGroups) {
    const size_t last = std::min(groups.size(), first + kMaxGroups);
    std::vector<LambBucket> buckets;
    LambLaunchGroups args{};
    args.n = static_cast<int>(last - first);
    args.any_sums = false;
    for (size_t k = first; k < last; ++k) {
      const LambGroupCall& g = groups[k];
      args.h[k - first] = g.hyper;
      LrArg lr{static_cast<float>(g.lr), nullptr, false};
      if (g.lr_tensor.has_value()) {
        if (lr_is_host_value(*g.lr_tensor)) {
          lr.value = static_cast<float>(g.lr_tensor->item<double>());
        } else {
          lr.ptr = g.lr_tensor->const_data_ptr();
          lr.is_double = g.lr_tensor->scalar_type() == at::kDouble;
        }
      }
      args.lr[k - first] = lr;
      if (g.params.empty()) continue;
      args.any_sums |= g.hyper.adapt || g.hyper.caution;
      for (size_t i = 0; i < g.params.size(); ++i)
        add_to_lamb_buckets(buckets, g, i, static_cast<int64_t>(k - first), offset[k] + static_cast<int64_t>(i));
    }
    for (LambBucket& b : buckets) {
      launch_bucket(static_cast<const LambLaunchGroups&>(args), b);
      finish_lamb_bucket(b);
    }
  }
}

// A bucket's step counts as one float32 tensor on `device` (a copy: the kernel
// reads them there; a count on the host is copied without a sync).
inline at::Tensor lamb_step_counts(const LambBucket& b, const at::Device& device) {
  std::vector<at::Tensor> counts;
  counts.reserve(b.steps.size());
  bool on_host = true;
  for (const at::Tensor& s : b.steps) {
    counts.push_back(s.reshape({1}).to(at::kFloat));
    on_host &= s.is_cpu();
  }
  if (!on_host) {
    for (at::Tensor& c : counts) c = c.to(device);
    return at::cat(counts);
  }
  at::Tensor host = at::cat(counts);
  if (device.is_cpu()) return host;
  return host.pin_memory().to(device, at::kFloat, /*non_blocking=*/true);  // one copy, no sync
}

}  // namespace cuda_impl
}  // namespace lars_cuda
