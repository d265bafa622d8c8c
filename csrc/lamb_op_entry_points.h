// The entry points of LAMB's sharded halves (fused_lamb_norms, fused_lamb_apply_),
// written once for every backend (the CPU, CUDA and the emulated CUDA build of the
// tests): parse and check every group and the sums (lamb_args.h), then the
// backend's `run`, which is the first to write. op_entry_points.h is LARS's.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/List.h>

#include <optional>

#include "lamb_args.h"
#include "op_entry_points.h"  // SumsIO, SumsDevice

namespace lars_cuda {

// Takes each tensor's sums (io.out) or steps from the given ones (io.in) for groups
// that were checked, every grad divided by grad_scale; may write.
using RunLambHalf = void (*)(const LambCall& call, const std::optional<at::Tensor>& grad_scale, SumsIO io);

template <RunLambHalf run, SumsDevice sums_device>
struct LambHalvesEntryPoints {
  static at::Tensor norms(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                          at::TensorList exp_avg_sqs, at::TensorList state_steps, at::IntArrayRef group_sizes,
                          at::ArrayRef<double> hyper, at::IntArrayRef flags,
                          const c10::List<std::optional<at::Tensor>>& lr_tensors,
                          const std::optional<at::Tensor>& grad_scale) {
    const LambCall call = parse_lamb_groups(params, grads, exp_avgs, exp_avg_sqs, state_steps, group_sizes, hyper,
                                            flags, lr_tensors, std::nullopt, grad_scale, std::nullopt, kLambNormsOp);
    at::Tensor sums = at::zeros({static_cast<int64_t>(params.size()), kLambSumsPerTensor},
                                at::TensorOptions().dtype(at::kDouble).device(sums_device(params)));
    if (!params.empty()) run(call, grad_scale, SumsIO{sums.data_ptr<double>(), nullptr});
    return sums;
  }

  static void apply(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                    at::TensorList exp_avg_sqs, at::TensorList state_steps, at::IntArrayRef group_sizes,
                    at::ArrayRef<double> hyper, at::IntArrayRef flags,
                    const c10::List<std::optional<at::Tensor>>& lr_tensors, const at::Tensor& sums,
                    const std::optional<at::Tensor>& grad_scale) {
    const LambCall call = parse_lamb_groups(params, grads, exp_avgs, exp_avg_sqs, state_steps, group_sizes, hyper,
                                            flags, lr_tensors, std::nullopt, grad_scale, std::nullopt, kLambApplyOp);
    if (params.empty()) return;
    // Checked first: the sums' data pointer is read only once they are known to be float64 [n, 5].
    check_lamb_sums(sums, static_cast<int64_t>(params.size()), params[0].device());
    const at::Tensor in = sums.contiguous();
    run(call, grad_scale, SumsIO{nullptr, in.const_data_ptr<double>()});
  }
};

}  // namespace lars_cuda
