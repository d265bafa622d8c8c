// The CPU implementation of fused_lamb_groups_: parse and check every group
// (lamb_args.h), read the host scalars (lr, step counts, grad_scale,
// found_inf), compute the global clip, and hand each dtype's tensors to the
// kernel build this machine runs (lamb_cpu_kernel.h; the choice:
// kernel_choice.h).
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "../lamb_args.h"
#include "../lamb_buckets.h"
#include "kernel_choice.h"
#include "lamb_tensor.h"

namespace lars_cuda {

#define LARS_CUDA_DECLARE_LAMB(ns)                                                      \
  namespace ns {                                                                        \
  void lamb_run(const std::vector<LambTensor>& tensors, at::ScalarType dtype);          \
  double lamb_grad_squares(const std::vector<LambTensor>& tensors, at::ScalarType dtype); \
  }
LARS_CUDA_DECLARE_LAMB(cpu_default)
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(LARS_CUDA_NO_AVX2)
#define LARS_CUDA_HAS_X86_KERNELS 1
LARS_CUDA_DECLARE_LAMB(cpu_avx2)
LARS_CUDA_DECLARE_LAMB(cpu_avx512)
#endif
#undef LARS_CUDA_DECLARE_LAMB

namespace {

// A bucket's tensors as the kernel's work list (after the clip: g_coef set by the caller).
std::vector<LambTensor> work_list(const LambBucket& b, const LambCall& call, const std::vector<double>& lrs) {
  std::vector<LambTensor> out;
  out.reserve(b.params.size());
  for (size_t i = 0; i < b.params.size(); ++i) {
    const LambGroupCall& g = call.groups[b.group[i]];
    const at::Tensor& step = b.steps[i];
    const double t = step.scalar_type() == at::kFloat ? *step.const_data_ptr<float>() : *step.const_data_ptr<double>();
    const double lr = lrs[b.group[i]];
    out.push_back(LambTensor{b.params[i].data_ptr(), b.grads[i].const_data_ptr(), b.exp_avgs[i].data_ptr(),
                             b.exp_avg_sqs[i].data_ptr(), b.params[i].numel(), &g.hyper,
                             lamb_tensor_coeffs(g.hyper, t, lr, 1.0), static_cast<float>(lr)});
  }
  return out;
}

template <typename F>
void with_build(F&& f) {
#if defined(LARS_CUDA_HAS_X86_KERNELS)
  switch (cpu_kernel_choice()) {
    case CpuKernel::kAvx512:
      return f(&cpu_avx512::lamb_run, &cpu_avx512::lamb_grad_squares);
    case CpuKernel::kAvx2:
      return f(&cpu_avx2::lamb_run, &cpu_avx2::lamb_grad_squares);
    default:
      break;
  }
#endif
  f(&cpu_default::lamb_run, &cpu_default::lamb_grad_squares);
}

void fused_lamb_groups_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                           at::TensorList exp_avg_sqs, at::TensorList state_steps, at::IntArrayRef group_sizes,
                           at::ArrayRef<double> hyper, at::IntArrayRef flags,
                           const c10::List<std::optional<at::Tensor>>& lr_tensors,
                           std::optional<double> max_grad_norm, const std::optional<at::Tensor>& grad_scale,
                           const std::optional<at::Tensor>& found_inf) {
  LambCall call = parse_lamb_groups(params, grads, exp_avgs, exp_avg_sqs, state_steps, group_sizes, hyper, flags,
                                    lr_tensors, max_grad_norm, grad_scale, found_inf);
  // On the CPU these reads cost nothing: there is no device to wait for.
  if (found_inf.has_value() && found_inf->item<double>() != 0.0) return;
  const double inv_scale = grad_scale.has_value() ? 1.0 / grad_scale->item<double>() : 1.0;
  std::vector<double> lrs;
  for (LambGroupCall& g : call.groups) {
    lrs.push_back(lamb_lr(g));
    g.hyper.lr = static_cast<float>(lrs.back());
  }
  std::vector<LambBucket> buckets;
  for (size_t k = 0; k < call.groups.size(); ++k)
    for (size_t i = 0; i < call.groups[k].params.size(); ++i)
      add_to_lamb_buckets(buckets, call.groups[k], i, static_cast<int64_t>(k));
  std::vector<std::vector<LambTensor>> lists;
  for (const LambBucket& b : buckets) lists.push_back(work_list(b, call, lrs));
  with_build([&](auto run, auto grad_squares) {
    // The global clip c = max(1, ||g|| / max_grad_norm) over every grad of the call
    // (each dtype's sum in chunk order, then over the dtypes in order of appearance).
    double clip = 1.0;
    if (call.max_grad_norm.has_value()) {
      double squares = 0.0;
      for (size_t k = 0; k < buckets.size(); ++k) squares += grad_squares(lists[k], buckets[k].dtype);
      clip = std::max(1.0, std::sqrt(squares) * inv_scale / *call.max_grad_norm);
    }
    for (size_t k = 0; k < buckets.size(); ++k) {
      for (LambTensor& t : lists[k]) t.c.g_coef = static_cast<float>((t.h->maximize ? -inv_scale : inv_scale) / clip);
      run(lists[k], buckets[k].dtype);
      finish_lamb_bucket(buckets[k]);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(lars_cuda, CPU, m) { m.impl(kLambGroupsOp, &fused_lamb_groups_cpu); }

}  // namespace lars_cuda
