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
};

// Splits the flat lists into groups and checks every group, the step counts,
// max_grad_norm, grad_scale and found_inf before the caller writes anything.
// Every error starts with the op's name.
LambCall parse_lamb_groups(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                           at::TensorList exp_avg_sqs, at::TensorList state_steps, at::IntArrayRef group_sizes,
                           at::ArrayRef<double> hyper, at::IntArrayRef flags,
                           const c10::List<std::optional<at::Tensor>>& lr_tensors,
                           std::optional<double> max_grad_norm, const std::optional<at::Tensor>& grad_scale,
                           const std::optional<at::Tensor>& found_inf);

}  // namespace lars_cuda
