// Parsing and checking the LAMB ops' arguments (lamb_args.h).
#include "lamb_args.h"

#include <cmath>
#include <unordered_set>

#include "group_args.h"  // the per-tensor checks both ops share

namespace lars_cuda {

namespace {

// Group k's row and flags, checked, as the kernels' options.
LambHyper lamb_hyper_of(const char* op, size_t k, const double* row, int64_t flags) {
  const double lr = row[kLambSlotLr], beta1 = row[kLambSlotBeta1], beta2 = row[kLambSlotBeta2],
               eps = row[kLambSlotEps], wd = row[kLambSlotWeightDecay], max_lr = row[kLambSlotMaxLr];
  TORCH_CHECK_VALUE(std::isfinite(lr) && lr >= 0.0, op, ": group ", k, " has an invalid lr ", lr);
  TORCH_CHECK_VALUE(beta1 >= 0.0 && beta1 < 1.0, op, ": group ", k, ": beta1 must be in [0, 1), got ", beta1);
  TORCH_CHECK_VALUE(beta2 >= 0.0 && beta2 < 1.0, op, ": group ", k, ": beta2 must be in [0, 1), got ", beta2);
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0.0, op, ": group ", k, " has an invalid eps ", eps);
  TORCH_CHECK_VALUE(std::isfinite(wd) && wd >= 0.0, op, ": group ", k, " has an invalid weight_decay ", wd);
  TORCH_CHECK_VALUE(std::isfinite(max_lr) && max_lr >= 0.0, op, ": group ", k, " has an invalid max_lr ", max_lr,
                    " (0: none)");
  TORCH_CHECK_VALUE(flags >= 0 && flags < 2 * kLambFlagDecayDecoupled, op, ": group ", k, " has unknown flag bits ",
                    flags);
  TORCH_CHECK_VALUE(!((flags & kLambFlagDecayGrad) && (flags & kLambFlagDecayDecoupled)), op, ": group ", k,
                    ": weight decay enters the gradient or is decoupled, not both");
  LambHyper h;
  h.lr = static_cast<float>(lr);
  h.beta1 = static_cast<float>(beta1);
  h.beta2 = static_cast<float>(beta2);
  h.eps = static_cast<float>(eps);
  h.weight_decay = static_cast<float>(wd);
  h.max_lr = static_cast<float>(max_lr);
  h.bias_correction = flags & kLambFlagBiasCorrection;
  h.grad_averaging = flags & kLambFlagGradAveraging;
  h.trust_clip = flags & kLambFlagTrustClip;
  h.adapt = flags & kLambFlagAdapt;
  h.caution = flags & kLambFlagCaution;
  h.maximize = flags & kLambFlagMaximize;
  h.decay = (flags & kLambFlagDecayGrad)        ? LambDecay::kGrad
            : (flags & kLambFlagDecayDecoupled) ? LambDecay::kDecoupled
                                                : LambDecay::kUpdate;
  return h;
}

// A step count: one float element, the count after this step (bias correction
// divides by 1 - beta^t, so t >= 1 there). A CPU count is read here; one on the
// device is the kernel's to read.
void check_step(const char* op, size_t k, size_t i, const at::Tensor& t, const at::Device& device, bool bias_correction) {
  TORCH_CHECK_VALUE(t.numel() == 1, op, ": group ", k, ": state_steps ", i, " must hold one element, got shape ",
                    t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": group ", k,
                   ": state_steps ", i, " must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device().is_cpu() || t.device() == device, op, ": group ", k, ": state_steps ", i, " is on ",
                    t.device(), " but its param is on ", device);
  if (t.device().is_cpu()) {
    const double step = t.item<double>();
    TORCH_CHECK_VALUE(std::isfinite(step) && step >= (bias_correction ? 1.0 : 0.0), op, ": group ", k,
                      ": state_steps ", i, " holds ", step,
                      " (the count after this step: at least 1 with bias correction)");
  }
}

void check_group(const char* op, size_t k, const LambGroupCall& g, std::unordered_set<const void*>& seen) {
  for (size_t i = 0; i < g.params.size(); ++i) {
    const at::Tensor& p = g.params[i];
    check_param_and_grad(op, k, i, p, g.grads[i], g.params[0].device(), /*grad_as_param=*/true, seen);
    check_state_tensor(op, k, i, "exp_avg", g.exp_avgs[i], p);
    check_state_tensor(op, k, i, "exp_avg_sq", g.exp_avg_sqs[i], p);
    check_step(op, k, i, g.steps[i], p.device(), g.hyper.bias_correction);
  }
  if (!g.params.empty()) check_scalar_tensor(op, g.lr_tensor, "lr", g.params[0].device(), /*allow_cpu=*/true);
}

}  // namespace

LambCall parse_lamb_groups(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                           at::TensorList exp_avg_sqs, at::TensorList state_steps, at::IntArrayRef group_sizes,
                           at::ArrayRef<double> hyper, at::IntArrayRef flags,
                           const c10::List<std::optional<at::Tensor>>& lr_tensors,
                           std::optional<double> max_grad_norm, const std::optional<at::Tensor>& grad_scale,
                           const std::optional<at::Tensor>& found_inf, const char* op) {
  const size_t n_groups = group_sizes.size();
  check_group_lists(op, n_groups, kLambHyperStride, hyper, flags, lr_tensors);
  const size_t n = params.size();
  TORCH_CHECK_VALUE(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n && state_steps.size() == n,
                    op, ": every param needs a grad, an exp_avg, an exp_avg_sq and a step count; got ", n,
                    " params, ", grads.size(), " grads, ", exp_avgs.size(), " exp_avgs, ", exp_avg_sqs.size(),
                    " exp_avg_sqs and ", state_steps.size(), " state_steps");
  int64_t total = 0;
  for (size_t k = 0; k < n_groups; ++k) {
    TORCH_CHECK_VALUE(group_sizes[k] >= 0, op, ": group ", k, " has a negative size");
    total += group_sizes[k];
  }
  TORCH_CHECK_VALUE(total == static_cast<int64_t>(n), op, ": group sizes add up to ", total, " but ", n,
                    " params were given");
  TORCH_CHECK_VALUE(!max_grad_norm.has_value() || (std::isfinite(*max_grad_norm) && *max_grad_norm > 0.0), op,
                    ": max_grad_norm must be a positive number or None, got ", max_grad_norm.value_or(0.0));

  LambCall call;
  call.max_grad_norm = max_grad_norm;
  std::unordered_set<const void*> seen;
  std::optional<at::Device> device;
  int64_t at = 0;
  for (size_t k = 0; k < n_groups; ++k) {
    const int64_t size = group_sizes[k];
    const double* row = hyper.data() + k * kLambHyperStride;
    LambGroupCall g{params.slice(at, size),   grads.slice(at, size),      exp_avgs.slice(at, size),
                    exp_avg_sqs.slice(at, size), state_steps.slice(at, size), lamb_hyper_of(op, k, row, flags[k]),
                    row[kLambSlotLr],         lr_tensors.get(k)};
    check_group(op, k, g, seen);
    if (size > 0) {
      if (!device.has_value()) device = g.params[0].device();
      TORCH_CHECK_VALUE(g.params[0].device() == *device, op, ": one call steps one device; the first group is on ",
                        *device, ", group ", k, " on ", g.params[0].device());
    }
    call.groups.push_back(std::move(g));
    at += size;
  }
  const at::Device where = device.value_or(at::Device(at::kCPU));
  call.device = where;
  check_scalar_tensor(op, grad_scale, "grad_scale", where, /*allow_cpu=*/where.is_cpu());
  check_scalar_tensor(op, found_inf, "found_inf", where, /*allow_cpu=*/where.is_cpu());
  return call;
}

}  // namespace lars_cuda

namespace lars_cuda {

void check_lamb_sums(const at::Tensor& sums, int64_t n, const at::Device& device) {
  TORCH_CHECK_TYPE(sums.scalar_type() == at::kDouble, kLambApplyOp, ": sums must be float64, got ",
                   sums.scalar_type());
  TORCH_CHECK_VALUE(sums.dim() == 2 && sums.size(0) == n && sums.size(1) == kLambSumsPerTensor, kLambApplyOp,
                    ": sums must have shape [", n, ", ", kLambSumsPerTensor, "] (one row per param), got ",
                    sums.sizes());
  TORCH_CHECK_VALUE(sums.device() == device, kLambApplyOp, ": sums is on ", sums.device(), " but the params are on ",
                    device);
}

}  // namespace lars_cuda
