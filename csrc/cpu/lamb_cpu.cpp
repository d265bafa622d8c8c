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

// The tensors of one dtype, as dense memory; `write_back` holds (destination,
// dense copy) for a param or moment that is not dense or laid out unlike its param.
struct LambBucket {
  at::ScalarType dtype;
  std::vector<LambTensor> tensors;
  std::vector<at::Tensor> keep;  // dense copies of grads
  std::vector<std::pair<at::Tensor, at::Tensor>> write_back;
};

// t itself where it is dense in p's layout, else a copy in that layout
// (written back after the step where `written`).
at::Tensor in_layout_of(const at::Tensor& t, const at::Tensor& pk, bool written, LambBucket& b) {
  if (t.strides() == pk.strides() && t.is_non_overlapping_and_dense()) return t;
  at::Tensor copy = at::empty_like(pk).copy_(t);
  if (written) {
    b.write_back.emplace_back(t, copy);
  } else {
    b.keep.push_back(copy);
  }
  return copy;
}

void add_tensor(std::vector<LambBucket>& buckets, const LambGroupCall& g, size_t i, double lr) {
  const at::Tensor& p = g.params[i];
  if (p.numel() == 0) return;
  auto it = std::find_if(buckets.begin(), buckets.end(), [&](const LambBucket& b) { return b.dtype == p.scalar_type(); });
  if (it == buckets.end()) {
    buckets.push_back(LambBucket{p.scalar_type(), {}, {}, {}});
    it = buckets.end() - 1;
  }
  const bool dense = p.is_non_overlapping_and_dense();
  const at::Tensor pk = dense ? p : p.contiguous();
  if (!dense) it->write_back.emplace_back(p, pk);
  const at::Tensor gk = in_layout_of(g.grads[i], pk, false, *it);
  const at::Tensor mk = in_layout_of(g.exp_avgs[i], pk, true, *it);
  const at::Tensor vk = in_layout_of(g.exp_avg_sqs[i], pk, true, *it);
  const at::Tensor& step = g.steps[i];
  const double t = step.scalar_type() == at::kFloat ? *step.const_data_ptr<float>() : *step.const_data_ptr<double>();
  it->tensors.push_back(LambTensor{pk.data_ptr(), gk.const_data_ptr(), mk.data_ptr(), vk.data_ptr(), p.numel(),
                                   &g.hyper, lamb_tensor_coeffs(g.hyper, t, lr, 1.0), g.hyper.lr});
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
  std::vector<LambBucket> buckets;
  for (LambGroupCall& g : call.groups) {
    const double lr = g.lr_tensor.has_value() ? g.lr_tensor->item<double>() : g.lr;
    g.hyper.lr = static_cast<float>(lr);
    for (size_t i = 0; i < g.params.size(); ++i) add_tensor(buckets, g, i, lr);
  }
  with_build([&](auto run, auto grad_squares) {
    // The global clip c = max(1, ||g|| / max_grad_norm) over every grad of the call
    // (each dtype's sum in chunk order, then over the dtypes in order of appearance).
    double clip = 1.0;
    if (call.max_grad_norm.has_value()) {
      double squares = 0.0;
      for (const LambBucket& b : buckets) squares += grad_squares(b.tensors, b.dtype);
      clip = std::max(1.0, std::sqrt(squares) * inv_scale / *call.max_grad_norm);
    }
    for (LambBucket& b : buckets) {
      for (LambTensor& t : b.tensors) t.c.g_coef = static_cast<float>((t.h->maximize ? -inv_scale : inv_scale) / clip);
      run(b.tensors, b.dtype);
      for (auto& [dst, src] : b.write_back) dst.copy_(src);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(lars_cuda, CPU, m) { m.impl(kLambGroupsOp, &fused_lamb_groups_cpu); }

}  // namespace lars_cuda
