// One fused_lamb_groups_ call's tensors by dtype, as dense memory: the host
// side the CPU backend (cpu/lamb_cpu.cpp) and the CUDA one (cuda/, and its
// emulated build in the tests) share.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <utility>
#include <vector>

#include "lamb_args.h"

namespace lars_cuda {

// The tensors of one dtype. A param that is not dense, or a grad or moment laid
// out unlike its param, is stepped in a dense copy in the param's layout;
// finish_lamb_bucket() writes the copies of params and moments back.
struct LambBucket {
  at::ScalarType dtype;
  std::vector<at::Tensor> params, grads, exp_avgs, exp_avg_sqs, steps;
  std::vector<int64_t> group;  // each tensor's group: its index in the call (or in its launch)
  std::vector<int64_t> index;  // each tensor's position in the call's flat lists (its row of the sums)
  std::vector<std::pair<at::Tensor, at::Tensor>> write_back;  // (destination, dense copy)
};

// Adds param i of group g (as group number `group`; `index`: its position in the
// call's flat lists) to the bucket of its dtype; zero-size tensors are left out.
void add_to_lamb_buckets(std::vector<LambBucket>& buckets, const LambGroupCall& g, size_t i, int64_t group,
                         int64_t index);
void finish_lamb_bucket(LambBucket& bucket);

// A group's lr: the tensor's value where it has one (read on the host), else its row's.
double lamb_lr(const LambGroupCall& g);

// The global clip factor c = max(1, ||(g1, g2, ...)|| * inv_scale / max_grad_norm)
// over every grad of the call as a float32 scalar tensor on the grads' device,
// computed with ATen ops (no host sync; the CUDA backends' way, where the CPU
// kernel sums in its own pass), or nullopt without clipping.
std::optional<at::Tensor> lamb_clip_factor(const LambCall& call, const std::optional<at::Tensor>& grad_scale);

}  // namespace lars_cuda
