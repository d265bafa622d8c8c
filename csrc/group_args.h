// The ops' group arguments: the packed layout of each group's options (the one
// C++ owner; lars_cuda/options.py is the Python one, tests/test_layout.py checks
// they agree), parsing the flat lists into groups, and every check of them, so
// the CPU and CUDA backends reject the same inputs with the same message before
// anything is written.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/List.h>
#include <c10/util/Optional.h>

#include <unordered_set>
#include <vector>

#include "lars.h"

namespace lars_cuda {

// One param group of a call: slices of the call's lists and its options.
struct GroupCall {
  at::TensorList params, grads, bufs;
  LarsHyper hyper;
  double lr;
  std::optional<at::Tensor> lr_tensor;
  int64_t first_index = 0;  // position of params[0] in the call's flat list
};

// The sharded step splits the kernel in two around one all-reduce (ops
// fused_lars_norms and fused_lars_apply_). Sums are per tensor of the call's
// flat list, (Σp², Σg², Σg·p) of the local shard in double, row-major [N, 3]
// (Σg·p only for groups whose ratio needs it, the SSL flavour's; else 0):
// `out` set: the norm pass writes them and nothing is updated;
// `in` set: the update takes them (the global sums) instead of a norm pass.
struct SumsIO {
  double* out = nullptr;
  const double* in = nullptr;
};
constexpr int64_t kSumsPerTensor = 3;

// The ops' names, which start every error they raise.
constexpr const char* kGroupsOp = "fused_lars_groups_";
constexpr const char* kNormsOp = "fused_lars_norms";
constexpr const char* kApplyOp = "fused_lars_apply_";
// The op a backend's run serves, from where its sums go.
inline const char* op_of(SumsIO io) {
  return io.out != nullptr ? kNormsOp : io.in != nullptr ? kApplyOp : kGroupsOp;
}

// Each group's floats travel in `hyper` as a row of kHyperStride slots, in
// this order (a disabled clip is NaN; a tensor lr travels in lr_tensors and its
// slot holds 0), and its switches in `flags` as these bits. The Python owner of
// the same layout is lars_cuda/options.py (HYPER_FIELDS, FLAG_BITS);
// tests/test_layout.py holds the two together.
constexpr int64_t kSlotLr = 0, kSlotMomentum = 1, kSlotWeightDecay = 2, kSlotEeta = 3, kSlotEpsilon = 4,
                  kSlotTrustClip = 5, kSlotUpdateClip = 6, kSlotDampening = 7;
constexpr int64_t kHyperStride = 8;
constexpr int64_t kFlagLars = 1, kFlagNesterov = 2, kFlagMaximize = 4, kFlagDecay = 8, kFlagRatioOnGrad = 16,
                  kFlagNormOfUpdate = 32, kFlagLarcClip = 64, kFlagZeroNormSkip = 128;

// A one-element float32/float64 tensor (lr, grad_scale, found_inf) on the params'
// device, or on the CPU where allow_cpu; the message names op and argument.
void check_scalar_tensor(const char* op, const std::optional<at::Tensor>& t, const char* name,
                         const at::Device& device, bool allow_cpu);

// The per-tensor checks both ops make (fused_lars_groups_, fused_lamb_groups_), one
// owner for their rules and messages; k: the group, i: the index in it.
bool is_kernel_float(at::ScalarType t);  // float32, float16, bfloat16: what the kernels step
// Param i and its grad: dense, a kernel float (the grad: the param's dtype where
// grad_as_param, else any kernel float), on `device`, one shape, a param without
// overlapping memory (it would be written twice) and not already `seen` in the call.
void check_param_and_grad(const char* op, size_t k, size_t i, const at::Tensor& p, const at::Tensor& grad,
                          const at::Device& device, bool grad_as_param, std::unordered_set<const void*>& seen);
// A call's per-group lists: `stride` hyper values, one flags word and one lr tensor per group.
void check_group_lists(const char* op, size_t n_groups, int64_t stride, at::ArrayRef<double> hyper,
                       at::IntArrayRef flags, const c10::List<std::optional<at::Tensor>>& lr_tensors);
// A state tensor of param i (a momentum buffer, exp_avg, ...): the param's dtype,
// device and shape, without overlapping memory.
void check_state_tensor(const char* op, size_t k, size_t i, const char* name, const at::Tensor& s,
                        const at::Tensor& p);

// Splits the flat lists of fused_lars_groups_ into groups and checks every
// group (and grad_scale/found_inf) before the caller writes anything, so a bad
// group leaves every group as it was. Every error starts with the op's name.
std::vector<GroupCall> parse_groups(at::TensorList params, at::TensorList grads, at::TensorList bufs,
                                    at::IntArrayRef group_sizes, at::ArrayRef<double> hyper,
                                    at::IntArrayRef flags, const c10::List<std::optional<at::Tensor>>& lr_tensors,
                                    const std::optional<at::Tensor>& grad_scale,
                                    const std::optional<at::Tensor>& found_inf);

// fused_lars_norms's lists: groups with only their lars flag (no hyper-parameters).
std::vector<GroupCall> parse_norm_groups(at::TensorList params, at::TensorList grads, at::IntArrayRef group_sizes,
                                         at::IntArrayRef flags);
// fused_lars_apply_'s arguments: parse_groups, and the sums must be float64
// [N, 3] on the params' device, contiguous.
std::vector<GroupCall> parse_apply_groups(at::TensorList params, at::TensorList grads, at::TensorList bufs,
                                          at::IntArrayRef group_sizes, at::ArrayRef<double> hyper,
                                          at::IntArrayRef flags,
                                          const c10::List<std::optional<at::Tensor>>& lr_tensors,
                                          const at::Tensor& sums, const std::optional<at::Tensor>& grad_scale,
                                          const std::optional<at::Tensor>& found_inf);

}  // namespace lars_cuda
