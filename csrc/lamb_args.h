// fused_lamb_groups_'s arguments: the packed layout of each group's LAMB
// options (the one C++ owner; lars_cuda/lamb_options.py is the Python one,
// tests/unit/test_layout.py holds them together), parsing the flat lists into
// groups, and every check of them before any backend writes.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/List.h>

#include <optional>
#include <vector>

#include "lamb.h"

namespace lars_cuda {

constexpr const char* kLambGroupsOp = "fused_lamb_groups_";
// The sharded step's halves (DTensor params): the local sums, then the update from
// the all-reduced ones. A row per param: (Σp², Σu², Σu·p, the caution mask's
// count, numel), the last three only in caution groups (u: the Adam update, the
// whole update with its decay where there is no caution), float64; the layout of
// lars_cuda/lamb_functional.py's sharded halves, so one all-reduce serves both.
constexpr const char* kLambNormsOp = "fused_lamb_norms";
constexpr const char* kLambApplyOp = "fused_lamb_apply_";  // (the row's width: lamb.h's kLambSumsPerTensor)

// Each group's floats travel in `hyper` as a row of kLambHyperStride slots (a
// tensor lr travels in lr_tensors and its slot holds 0; no max_lr is 0) and its
// switches in `flags` as these bits (neither decay bit: decay enters the update).
constexpr int64_t kLambSlotLr = 0, kLambSlotBeta1 = 1, kLambSlotBeta2 = 2, kLambSlotEps = 3,
                  kLambSlotWeightDecay = 4, kLambSlotMaxLr = 5;
constexpr int64_t kLambHyperStride = 6;
constexpr int64_t kLambFlagBiasCorrection = 1, kLambFlagGradAveraging = 2, kLambFlagTrustClip = 4,
                  kLambFlagAdapt = 8, kLambFlagCaution = 16, kLambFlagMaximize = 32, kLambFlagDecayGrad = 64,
                  kLambFlagDecayDecoupled = 128;

// One param group of a call: slices of the call's lists and its options.
struct LambGroupCall {
  at::TensorList params, grads, exp_avgs, exp_avg_sqs, steps;
  LambHyper hyper;
  double lr;
  std::optional<at::Tensor> lr_tensor;
};

struct LambCall {
  std::vector<LambGroupCall> groups;
  std::optional<double> max_grad_norm;  // the global clip over every grad of the call
  at::Device device = at::Device(at::kCPU);  // the params' device (the CPU where there are none)
};

// Splits the flat lists into groups and checks every group, the step counts,
// max_grad_norm, grad_scale and found_inf before the caller writes anything.
// Every error starts with the name of the op `op`.
LambCall parse_lamb_groups(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                           at::TensorList exp_avg_sqs, at::TensorList state_steps, at::IntArrayRef group_sizes,
                           at::ArrayRef<double> hyper, at::IntArrayRef flags,
                           const c10::List<std::optional<at::Tensor>>& lr_tensors,
                           std::optional<double> max_grad_norm, const std::optional<at::Tensor>& grad_scale,
                           const std::optional<at::Tensor>& found_inf, const char* op = kLambGroupsOp);

// fused_lamb_apply_'s sums: float64, [n, kLambSumsPerTensor], on the params' device.
void check_lamb_sums(const at::Tensor& sums, int64_t n, const at::Device& device);

}  // namespace lars_cuda
