// Parsing and checking the ops' group arguments (group_args.h).
#include <ATen/MemoryOverlap.h>

#include <cmath>
#include <unordered_set>

#include "group_args.h"

namespace lars_cuda {

namespace {

bool is_lars_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

void check_scalar_tensor(const std::optional<at::Tensor>& t, const char* name, const at::Device& device,
                         bool allow_cpu) {
  if (!t.has_value()) return;
  TORCH_CHECK_VALUE(t->numel() == 1, "fused_lars_: ", name, " must hold exactly one element, got shape ",
                    t->sizes());
  TORCH_CHECK_TYPE(t->scalar_type() == at::kFloat || t->scalar_type() == at::kDouble, "fused_lars_: ", name,
                   " must be float32 or float64, got ", t->scalar_type());
  TORCH_CHECK_VALUE(t->device() == device || (allow_cpu && t->device().is_cpu()), "fused_lars_: ", name,
                    " is on ", t->device(), " but the params are on ", device);
}

}  // namespace

void check_fused_lars_args(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                           double momentum, double weight_decay, double eeta, double epsilon,
                           std::optional<double> trust_clip, std::optional<double> update_clip,
                           const std::optional<at::Tensor>& lr_tensor,
                           const std::optional<at::Tensor>& grad_scale,
                           const std::optional<at::Tensor>& found_inf) {
  TORCH_CHECK_VALUE(params.size() == grads.size(), "fused_lars_: got ", params.size(), " params but ",
                    grads.size(), " grads");
  const bool has_momentum = momentum != 0.0;
  TORCH_CHECK_VALUE(momentum_buffers.size() == (has_momentum ? params.size() : 0), "fused_lars_: expected ",
                    has_momentum ? params.size() : 0, " momentum buffers (momentum=", momentum, "), got ",
                    momentum_buffers.size());
  TORCH_CHECK_VALUE(std::isfinite(momentum) && momentum >= 0.0, "fused_lars_: invalid momentum ", momentum);
  TORCH_CHECK_VALUE(std::isfinite(weight_decay) && weight_decay >= 0.0, "fused_lars_: invalid weight_decay ",
                    weight_decay);
  TORCH_CHECK_VALUE(eeta > 0.0 && eeta <= 1.0, "fused_lars_: eeta must be in (0, 1], got ", eeta);
  TORCH_CHECK_VALUE(std::isfinite(epsilon) && epsilon >= 0.0, "fused_lars_: invalid epsilon ", epsilon);
  TORCH_CHECK_VALUE(!trust_clip.has_value() || *trust_clip >= 0.0, "fused_lars_: invalid trust_clip ",
                    *trust_clip);
  TORCH_CHECK_VALUE(!update_clip.has_value() || *update_clip >= 0.0, "fused_lars_: invalid update_clip ",
                    *update_clip);
  if (params.empty()) return;

  const at::Device device = params[0].device();
  std::unordered_set<const void*> seen;
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    const at::Tensor& g = grads[i];
    TORCH_CHECK_TYPE(!p.is_sparse() && !g.is_sparse(), "fused_lars_: sparse tensors are not supported (param ",
                     i, ")");
    TORCH_CHECK_TYPE(is_lars_float(p.scalar_type()), "fused_lars_: param ", i,
                     " must be float32, float16 or bfloat16, got ", p.scalar_type());
    TORCH_CHECK_TYPE(is_lars_float(g.scalar_type()), "fused_lars_: grad ", i,
                     " must be float32, float16 or bfloat16, got ", g.scalar_type());
    TORCH_CHECK_VALUE(p.device() == device && g.device() == device, "fused_lars_: all tensors must be on one ",
                      "device; param 0 is on ", device, ", param ", i, " on ", p.device(), " with its grad on ",
                      g.device());
    TORCH_CHECK_VALUE(p.sizes() == g.sizes(), "fused_lars_: param ", i, " has shape ", p.sizes(),
                      " but its grad has shape ", g.sizes());
    // Overlapping params (expanded views) would be written twice per element.
    TORCH_CHECK_VALUE(at::has_internal_overlap(p) != at::MemOverlap::Yes, "fused_lars_: param ", i,
                      " has overlapping memory (strides ", p.strides(), "); step a contiguous tensor instead");
    TORCH_CHECK_VALUE(seen.insert(p.data_ptr()).second || p.numel() == 0, "fused_lars_: param ", i,
                      " appears twice in one call");
    if (has_momentum) {
      const at::Tensor& m = momentum_buffers[i];
      TORCH_CHECK_TYPE(m.scalar_type() == p.scalar_type(), "fused_lars_: momentum buffer ", i, " is ",
                       m.scalar_type(), " but its param is ", p.scalar_type());
      TORCH_CHECK_VALUE(m.device() == device && m.sizes() == p.sizes(), "fused_lars_: momentum buffer ", i,
                        " must match its param's device and shape");
      TORCH_CHECK_VALUE(at::has_internal_overlap(m) != at::MemOverlap::Yes, "fused_lars_: momentum buffer ", i,
                        " has overlapping memory");
    }
  }
  // Host scalars are fine on CPU; on CUDA a CPU lr is read once on the host.
  check_scalar_tensor(lr_tensor, "lr", device, /*allow_cpu=*/true);
  check_scalar_tensor(grad_scale, "grad_scale", device, /*allow_cpu=*/device.is_cpu());
  check_scalar_tensor(found_inf, "found_inf", device, /*allow_cpu=*/device.is_cpu());
}

LarsHyper make_hyper(double momentum, double weight_decay, double eeta, double epsilon, bool lars,
                     bool nesterov, std::optional<double> trust_clip, std::optional<double> update_clip,
                     bool maximize) {
  LarsHyper h;
  h.maximize = maximize;
  h.momentum = static_cast<float>(momentum);
  h.weight_decay = static_cast<float>(weight_decay);
  h.eeta = static_cast<float>(eeta);
  h.epsilon = static_cast<float>(epsilon);
  h.lars = lars;
  h.decay = lars;  // the seed: weight decay exactly where LARS adapts
  h.nesterov = nesterov;
  h.has_trust_clip = trust_clip.has_value();
  h.trust_clip = static_cast<float>(trust_clip.value_or(0.0));
  h.has_update_clip = update_clip.has_value();
  h.update_clip = static_cast<float>(update_clip.value_or(0.0));
  return h;
}

std::vector<GroupCall> parse_groups(at::TensorList params, at::TensorList grads, at::TensorList bufs,
                                    at::IntArrayRef group_sizes, at::ArrayRef<double> hyper,
                                    at::IntArrayRef flags, const c10::List<std::optional<at::Tensor>>& lr_tensors,
                                    const std::optional<at::Tensor>& grad_scale,
                                    const std::optional<at::Tensor>& found_inf) {
  const size_t n_groups = group_sizes.size();
  TORCH_CHECK_VALUE(hyper.size() == n_groups * kHyperStride && flags.size() == n_groups &&
                        lr_tensors.size() == n_groups,
                    "fused_lars_groups_: ", n_groups, " groups need ", n_groups * kHyperStride, " hyper values, ",
                    n_groups, " flags and ", n_groups, " lr tensors; got ", hyper.size(), ", ", flags.size(),
                    " and ", lr_tensors.size());
  TORCH_CHECK_VALUE(params.size() == grads.size(), "fused_lars_groups_: got ", params.size(), " params but ",
                    grads.size(), " grads");
  int64_t total = 0, total_bufs = 0;
  for (size_t k = 0; k < n_groups; ++k) {
    TORCH_CHECK_VALUE(group_sizes[k] >= 0, "fused_lars_groups_: group ", k, " has a negative size");
    total += group_sizes[k];
    if (hyper[k * kHyperStride + 1] != 0.0) total_bufs += group_sizes[k];
  }
  TORCH_CHECK_VALUE(total == static_cast<int64_t>(params.size()), "fused_lars_groups_: group sizes add up to ",
                    total, " but ", params.size(), " params were given");
  TORCH_CHECK_VALUE(total_bufs == static_cast<int64_t>(bufs.size()), "fused_lars_groups_: expected ", total_bufs,
                    " momentum buffers (one per param of each group with momentum), got ", bufs.size());

  std::vector<GroupCall> groups;
  groups.reserve(n_groups);
  const auto clip = [](double x) { return std::isnan(x) ? std::optional<double>() : std::optional<double>(x); };
  int64_t at = 0, at_buf = 0;
  std::optional<at::Device> device;
  for (size_t k = 0; k < n_groups; ++k) {
    const double* v = hyper.data() + k * kHyperStride;
    const int64_t n = group_sizes[k];
    const int64_t nb = v[1] != 0.0 ? n : 0;
    const std::optional<at::Tensor> lr_t = lr_tensors.get(k);
    GroupCall g{params.slice(at, n), grads.slice(at, n), bufs.slice(at_buf, nb),
                make_hyper(v[1], v[2], v[3], v[4], flags[k] & kFlagLars, flags[k] & kFlagNesterov, clip(v[5]),
                           clip(v[6]), flags[k] & kFlagMaximize),
                v[0], lr_t, at};
    g.hyper.decay = flags[k] & kFlagDecay;
    g.hyper.ratio_on_grad = flags[k] & kFlagRatioOnGrad;
    g.hyper.norm_of_update = flags[k] & kFlagNormOfUpdate;
    g.hyper.larc_clip = flags[k] & kFlagLarcClip;
    g.hyper.zero_norm_skip = flags[k] & kFlagZeroNormSkip;
    g.hyper.dampening = static_cast<float>(v[7]);
    TORCH_CHECK_VALUE(std::isfinite(v[7]) && v[7] >= 0.0 && v[7] <= 1.0, "fused_lars_groups_: group ", k,
                      " has an invalid dampening ", v[7], " (it must lie in [0, 1])");
    TORCH_CHECK_VALUE(!(g.hyper.nesterov && v[7] != 0.0), "fused_lars_groups_: group ", k,
                      ": Nesterov momentum requires zero dampening");
    TORCH_CHECK_VALUE(std::isfinite(g.lr) && g.lr >= 0.0, "fused_lars_groups_: group ", k, " has an invalid lr ",
                      g.lr);
    check_fused_lars_args(g.params, g.grads, g.bufs, v[1], v[2], v[3], v[4], clip(v[5]), clip(v[6]), lr_t,
                          grad_scale, found_inf);
    if (n > 0) {
      if (!device.has_value()) device = g.params[0].device();
      TORCH_CHECK_VALUE(g.params[0].device() == *device, "fused_lars_groups_: one call steps one device; group 0 ",
                        "is on ", *device, ", group ", k, " on ", g.params[0].device());
    }
    groups.push_back(std::move(g));
    at += n;
    at_buf += nb;
  }
  return groups;
}

std::vector<GroupCall> parse_norm_groups(at::TensorList params, at::TensorList grads, at::IntArrayRef group_sizes,
                                         at::IntArrayRef flags) {
  TORCH_CHECK_VALUE(flags.size() == group_sizes.size(), "fused_lars_norms: ", group_sizes.size(),
                    " groups need as many flags, got ", flags.size());
  std::vector<double> hyper;
  c10::List<std::optional<at::Tensor>> lr_tensors;
  for (size_t k = 0; k < group_sizes.size(); ++k) {
    // lr 0, no momentum, default coefficients: only the lars and norm-of-update flags matter to the norms.
    hyper.insert(hyper.end(), {0.0, 0.0, 0.0, 1e-3, 0.0, NAN, NAN, 0.0});
    lr_tensors.push_back(std::nullopt);
  }
  return parse_groups(params, grads, {}, group_sizes, hyper, flags, lr_tensors, std::nullopt, std::nullopt);
}

std::vector<GroupCall> parse_apply_groups(at::TensorList params, at::TensorList grads, at::TensorList bufs,
                                          at::IntArrayRef group_sizes, at::ArrayRef<double> hyper,
                                          at::IntArrayRef flags,
                                          const c10::List<std::optional<at::Tensor>>& lr_tensors,
                                          const at::Tensor& sums, const std::optional<at::Tensor>& grad_scale,
                                          const std::optional<at::Tensor>& found_inf) {
  std::vector<GroupCall> groups =
      parse_groups(params, grads, bufs, group_sizes, hyper, flags, lr_tensors, grad_scale, found_inf);
  const int64_t n = static_cast<int64_t>(params.size());
  TORCH_CHECK_TYPE(sums.scalar_type() == at::kDouble, "fused_lars_apply_: sums must be float64, got ",
                   sums.scalar_type());
  TORCH_CHECK_VALUE(sums.dim() == 2 && sums.size(0) == n && sums.size(1) == kSumsPerTensor && sums.is_contiguous(),
                    "fused_lars_apply_: sums must be a contiguous [", n, ", ", kSumsPerTensor,
                    "] tensor (one row per param), got shape ", sums.sizes());
  if (n > 0) {
    TORCH_CHECK_VALUE(sums.device() == params[0].device(), "fused_lars_apply_: sums are on ", sums.device(),
                      " but the params are on ", params[0].device());
  }
  return groups;
}

}  // namespace lars_cuda
