// The ops' entry points (fused_lars_groups_, fused_lars_norms, fused_lars_apply_),
// written once for every backend: parse and check every group (group_args.h),
// then the backend's `run`, which is the first to write. A backend registers
// OpEntryPoints<its run, where its sums go>::groups / ::norms / ::apply.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/List.h>

#include <optional>
#include <vector>

#include "group_args.h"

namespace lars_cuda {

// Steps (or, with io.out, only sums) groups that were checked; may write.
using RunGroups = void (*)(const std::vector<GroupCall>& groups, const std::optional<at::Tensor>& grad_scale,
                           const std::optional<at::Tensor>& found_inf, SumsIO io);
// The device of fused_lars_norms's output (the params', or the backend's default for none).
using SumsDevice = at::Device (*)(at::TensorList params);

template <RunGroups run, SumsDevice sums_device>
struct OpEntryPoints {
  static void groups(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                     at::IntArrayRef group_sizes, at::ArrayRef<double> hyper, at::IntArrayRef flags,
                     const c10::List<std::optional<at::Tensor>>& lr_tensors,
                     const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
    run(parse_groups(params, grads, momentum_buffers, group_sizes, hyper, flags, lr_tensors, grad_scale, found_inf),
        grad_scale, found_inf, SumsIO{});
  }

  static at::Tensor norms(at::TensorList params, at::TensorList grads, at::IntArrayRef group_sizes,
                          at::IntArrayRef flags) {
    const std::vector<GroupCall> parsed = parse_norm_groups(params, grads, group_sizes, flags);
    at::Tensor sums = at::zeros({static_cast<int64_t>(params.size()), kSumsPerTensor},
                                at::TensorOptions().dtype(at::kDouble).device(sums_device(params)));
    run(parsed, std::nullopt, std::nullopt, SumsIO{sums.data_ptr<double>(), nullptr});
    return sums;
  }

  static void apply(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                    at::IntArrayRef group_sizes, at::ArrayRef<double> hyper, at::IntArrayRef flags,
                    const c10::List<std::optional<at::Tensor>>& lr_tensors, const at::Tensor& sums,
                    const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
    // Checked first: the sums' data pointer is read only once they are known to be float64.
    const std::vector<GroupCall> parsed = parse_apply_groups(params, grads, momentum_buffers, group_sizes, hyper,
                                                             flags, lr_tensors, sums, grad_scale, found_inf);
    run(parsed, grad_scale, found_inf, SumsIO{nullptr, sums.const_data_ptr<double>()});
  }
};

}  // namespace lars_cuda
