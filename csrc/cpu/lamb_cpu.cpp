// The CPU implementation of fused_lamb_groups_ (and of the sharded halves
// fused_lamb_norms / fused_lamb_apply_, lamb_op_entry_points.h): parse and check
// every group (lamb_args.h), read the host scalars (lr, step counts,
// grad_scale, found_inf), compute the global clip, and hand each dtype's
// tensors to the kernel build this machine runs (lamb_cpu_kernel.h; the
// choice: kernel_choice.h).
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "../lamb_args.h"
#include "../lamb_buckets.h"
#include "../lamb_op_entry_points.h"
#include "kernel_choice.h"
#include "lamb_tensor.h"

namespace lars_cuda {

#define LARS_CUDA_DECLARE_LAMB(ns)                                                            \
  namespace ns {                                                                              \
  void lamb_run(const std::vector<LambTensor>& tensors, at::ScalarType dtype);                \
  double lamb_grad_squares(const std::vector<LambTensor>& tensors, at::ScalarType dtype);     \
  void lamb_norms(const std::vector<LambTensor>& tensors, at::ScalarType dtype, double* rows); \
  void lamb_apply(const std::vector<LambTensor>& tensors, at::ScalarType dtype, const double* rows); \
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
                             lamb_tensor_coeffs(g.hyper, t, lr, 1.0), static_cast<float>(lr), b.index[i]});
  }
  return out;
}

// The entry points of the kernel build this machine runs (kernel_choice.h).
struct LambBuild {
  void (*run)(const std::vector<LambTensor>&, at::ScalarType);
  double (*grad_squares)(const std::vector<LambTensor>&, at::ScalarType);
  void (*norms)(const std::vector<LambTensor>&, at::ScalarType, double*);
  void (*apply)(const std::vector<LambTensor>&, at::ScalarType, const double*);
};

LambBuild lamb_build() {
#define LARS_CUDA_LAMB_BUILD(ns) LambBuild{&ns::lamb_run, &ns::lamb_grad_squares, &ns::lamb_norms, &ns::lamb_apply}
#if defined(LARS_CUDA_HAS_X86_KERNELS)
  switch (cpu_kernel_choice()) {
    case CpuKernel::kAvx512:
      return LARS_CUDA_LAMB_BUILD(cpu_avx512);
    case CpuKernel::kAvx2:
      return LARS_CUDA_LAMB_BUILD(cpu_avx2);
    default:
      break;
  }
#endif
  return LARS_CUDA_LAMB_BUILD(cpu_default);
#undef LARS_CUDA_LAMB_BUILD
}

// A call's tensors by dtype (each group's lr in its hyper) and their work lists,
// every grad multiplied by g_coef (maximize's sign, 1/grad_scale, 1/clip).
struct LambWork {
  std::vector<LambBucket> buckets;
  std::vector<std::vector<LambTensor>> lists;
};

LambWork lamb_work(LambCall& call) {
  std::vector<double> lrs;
  for (LambGroupCall& g : call.groups) {
    lrs.push_back(lamb_lr(g));
    g.hyper.lr = static_cast<float>(lrs.back());
  }
  LambWork w;
  int64_t index = 0;
  for (size_t k = 0; k < call.groups.size(); ++k)
    for (size_t i = 0; i < call.groups[k].params.size(); ++i, ++index)
      add_to_lamb_buckets(w.buckets, call.groups[k], i, static_cast<int64_t>(k), index);
  for (const LambBucket& b : w.buckets) w.lists.push_back(work_list(b, call, lrs));
  return w;
}

void set_grad_coefficients(LambWork& w, double inv_scale, double clip) {
  for (auto& list : w.lists)
    for (LambTensor& t : list) t.c.g_coef = static_cast<float>((t.h->maximize ? -inv_scale : inv_scale) / clip);
}

double inverse_scale(const std::optional<at::Tensor>& grad_scale) {
  return grad_scale.has_value() ? 1.0 / grad_scale->item<double>() : 1.0;
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
  const double inv_scale = inverse_scale(grad_scale);
  LambWork w = lamb_work(call);
  const LambBuild build = lamb_build();
  // The global clip c = max(1, ||g|| / max_grad_norm) over every grad of the call
  // (each dtype's sum in chunk order, then over the dtypes in order of appearance).
  double clip = 1.0;
  if (call.max_grad_norm.has_value()) {
    double squares = 0.0;
    for (size_t k = 0; k < w.buckets.size(); ++k) squares += build.grad_squares(w.lists[k], w.buckets[k].dtype);
    clip = std::max(1.0, std::sqrt(squares) * inv_scale / *call.max_grad_norm);
  }
  set_grad_coefficients(w, inv_scale, clip);
  for (size_t k = 0; k < w.buckets.size(); ++k) {
    build.run(w.lists[k], w.buckets[k].dtype);
    finish_lamb_bucket(w.buckets[k]);
  }
}

// The sharded step's halves' run (lamb_op_entry_points.h): each dtype's rows into
// io.out, or every tensor stepped from io.in; grad_scale divides the grads (the
// caller's global clip travels there).
void run_lamb_half_cpu(const LambCall& checked, const std::optional<at::Tensor>& grad_scale, SumsIO io) {
  LambCall call = checked;  // (lamb_work writes each group's lr into its options)
  LambWork w = lamb_work(call);
  set_grad_coefficients(w, inverse_scale(grad_scale), 1.0);
  const LambBuild build = lamb_build();
  for (size_t k = 0; k < w.buckets.size(); ++k) {
    if (io.out != nullptr) {
      build.norms(w.lists[k], w.buckets[k].dtype, io.out);  // (dense stand-ins only read: nothing to write back)
    } else {
      build.apply(w.lists[k], w.buckets[k].dtype, io.in);
      finish_lamb_bucket(w.buckets[k]);
    }
  }
}

at::Device cpu_lamb_sums_device(at::TensorList) { return at::Device(at::kCPU); }

using CpuLambHalves = LambHalvesEntryPoints<&run_lamb_half_cpu, &cpu_lamb_sums_device>;

}  // namespace

TORCH_LIBRARY_IMPL(lars_cuda, CPU, m) {
  m.impl(kLambGroupsOp, &fused_lamb_groups_cpu);
  m.impl(kLambNormsOp, &CpuLambHalves::norms);
  m.impl(kLambApplyOp, &CpuLambHalves::apply);
}

}  // namespace lars_cuda
