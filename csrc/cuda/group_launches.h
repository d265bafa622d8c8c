// One op call's checked groups as launches, pure host C++ (no CUDA runtime
// call) so the emulated build (tests/cuda_emulator) walks them as the CUDA
// build does: up to kMaxGroups groups per launch, their options as the
// launch's LaunchGroups, their tensors split into dtype buckets.
#pragma once

#include <algorithm>
#include <optional>
#include <vector>

#include "../buckets.h"
#include "../group_args.h"
#include "kernel.cuh"

namespace lars_cuda {
namespace cuda_impl {

// A float32 pointer to a scalar tensor (converted into `keep` when it is float64).
inline const float* float_ptr_or_null(const std::optional<at::Tensor>& t, std::vector<at::Tensor>& keep) {
  if (!t.has_value()) return nullptr;
  if (t->scalar_type() == at::kFloat) return t->const_data_ptr<float>();
  keep.push_back(t->to(at::kFloat));
  return keep.back().const_data_ptr<float>();
}

// A group's lr for the kernel: the float, or a tensor's value read on the host
// (`host_value`: a CPU tensor beside device params, no device sync), or the
// pointer the kernel reads it through (a device scalar, so CUDA graphs replay it).
inline LrArg lr_arg(const GroupCall& g, bool host_value) {
  LrArg lr{static_cast<float>(g.lr), nullptr, false};
  if (g.lr_tensor.has_value()) {
    if (host_value) {
      lr.value = static_cast<float>(g.lr_tensor->item<double>());
    } else {
      lr.ptr = g.lr_tensor->const_data_ptr();
      lr.is_double = g.lr_tensor->scalar_type() == at::kDouble;
    }
  }
  return lr;
}

// Calls launch_bucket(args, bucket) for each dtype bucket of each launch, then
// writes the bucket's dense stand-ins back. `lr_is_host_value(tensor)` tells
// lr_arg where a tensor lr lives.
template <typename LrIsHostValue, typename LaunchBucket>
void for_each_launch(const std::vector<GroupCall>& groups, SumsIO io, LrIsHostValue lr_is_host_value,
                     LaunchBucket launch_bucket) {
  for (size_t first = 0; first < groups.size(); first += kMaxGroups) {
    const size_t last = std::min(groups.size(), first + kMaxGroups);
    std::vector<Bucket> buckets;
    LaunchGroups args{};
    args.n = static_cast<int>(last - first);
    args.any_lars = false;
    for (size_t k = first; k < last; ++k) {
      const GroupCall& g = groups[k];
      args.h[k - first] = g.hyper;
      args.lr[k - first] = lr_arg(g, g.lr_tensor.has_value() && lr_is_host_value(*g.lr_tensor));
      if (g.params.empty() || (io.out != nullptr && !g.hyper.lars)) continue;  // norms: LARS groups only
      args.any_lars |= g.hyper.lars;
      add_to_buckets(buckets, g.params, g.grads, g.bufs, static_cast<int64_t>(k - first), g.first_index);
    }
    for (Bucket& b : buckets) {
      launch_bucket(static_cast<const LaunchGroups&>(args), b);
      finish_bucket(b);
    }
  }
}

}  // namespace cuda_impl
}  // namespace lars_cuda
