// The schemas of the kernel ops, one owner for the library (library.cpp) and the
// emulated CUDA backend of the tests (tests/cuda_emulator/emulated_ops.cpp).
#pragma once

namespace lars_cuda {

// Several param groups in one call: every group is checked before any is
// written. Per group k: group_sizes[k] params (and as many buffers when its
// momentum is nonzero), a row of kHyperStride floats in `hyper`, its switches
// as bits in flags[k] (the layout: group_args.h), lr_tensors[k] overriding
// the row's lr when given.
constexpr const char* kGroupsSchema =
    "fused_lars_groups_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, int[] group_sizes, "
    "float[] hyper, int[] flags, Tensor?[] lr_tensors, Tensor? grad_scale=None, Tensor? found_inf=None) -> ()";
// The sharded step (DTensor params): per tensor of the local shards (Σp², Σg², Σg·p)
// in float64, [N, 3] (zeros for lars=False groups and empty shards); the
// caller all-reduces them over the shard group and passes the sums to
// fused_lars_apply_, which forms the ratios from them and updates in place.
constexpr const char* kNormsSchema =
    "fused_lars_norms(Tensor[] params, Tensor[] grads, int[] group_sizes, int[] flags) -> Tensor";
constexpr const char* kApplySchema =
    "fused_lars_apply_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, int[] group_sizes, "
    "float[] hyper, int[] flags, Tensor?[] lr_tensors, Tensor sums, Tensor? grad_scale=None, "
    "Tensor? found_inf=None) -> ()";
// LAMB, every param group of a step in one call (the layout: lamb_args.h):
// per group k group_sizes[k] params with their grads, exp_avgs, exp_avg_sqs and
// step counts (the count after this step; the caller advances it), a row of
// kLambHyperStride floats, its switches in flags[k], lr_tensors[k] overriding
// the row's lr. max_grad_norm: the global clip over every grad of the call.
constexpr const char* kLambGroupsSchema =
    "fused_lamb_groups_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
    "Tensor[] state_steps, int[] group_sizes, float[] hyper, int[] flags, Tensor?[] lr_tensors, "
    "float? max_grad_norm=None, Tensor? grad_scale=None, Tensor? found_inf=None) -> ()";
// LAMB's sharded step (DTensor params) in two halves around one all-reduce:
// fused_lamb_norms gives per tensor of the local shards a float64 row of
// kLambSumsPerTensor sums (lamb.h; zeros where no sum is needed), writing
// nothing; the caller all-reduces them over the shard group and passes them to
// fused_lamb_apply_, which forms each tensor's ratio from them and steps in place.
// grad_scale divides every grad (a global clip computed by the caller travels here).
constexpr const char* kLambNormsSchema =
    "fused_lamb_norms(Tensor[] params, Tensor[] grads, Tensor[] exp_avgs, Tensor[] exp_avg_sqs, "
    "Tensor[] state_steps, int[] group_sizes, float[] hyper, int[] flags, Tensor?[] lr_tensors, "
    "Tensor? grad_scale=None) -> Tensor";
constexpr const char* kLambApplySchema =
    "fused_lamb_apply_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
    "Tensor[] state_steps, int[] group_sizes, float[] hyper, int[] flags, Tensor?[] lr_tensors, Tensor sums, "
    "Tensor? grad_scale=None) -> ()";

}  // namespace lars_cuda
