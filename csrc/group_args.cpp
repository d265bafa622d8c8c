// Parsing and checking the ops' group arguments (group_args.h). Every error
// names the op that raised it (`op` below), whichever backend runs it.
#include <ATen/MemoryOverlap.h>

#include <cmath>
#include <unordered_set>

#include "group_args.h"

namespace lars_cuda {

namespace {

// A clip slot: NaN means no clip.
std::optional<double> clip_at(const double* row, int64_t slot) {
  return std::isnan(row[slot]) ? std::optional<double>() : std::optional<double>(row[slot]);
}

// The values of group k's row and flags, before they become a LarsHyper.
void check_row(const char* op, size_t k, const double* row, int64_t flags) {
  const double lr = row[kSlotLr], momentum = row[kSlotMomentum], weight_decay = row[kSlotWeightDecay],
               eeta = row[kSlotEeta], epsilon = row[kSlotEpsilon], dampening = row[kSlotDampening];
  TORCH_CHECK_VALUE(std::isfinite(lr) && lr >= 0.0, op, ": group ", k, " has an invalid lr ", lr);
  TORCH_CHECK_VALUE(std::isfinite(momentum) && momentum >= 0.0, op, ": group ", k, " has an invalid momentum ",
                    momentum);
  TORCH_CHECK_VALUE(std::isfinite(weight_decay) && weight_decay >= 0.0, op, ": group ", k,
                    " has an invalid weight_decay ", weight_decay);
  TORCH_CHECK_VALUE(eeta > 0.0 && eeta <= 1.0, op, ": group ", k, ": eeta must be in (0, 1], got ", eeta);
  TORCH_CHECK_VALUE(std::isfinite(epsilon) && epsilon >= 0.0, op, ": group ", k, " has an invalid epsilon ",
                    epsilon);
  for (const int64_t slot : {kSlotTrustClip, kSlotUpdateClip}) {
    const std::optional<double> clip = clip_at(row, slot);
    TORCH_CHECK_VALUE(!clip.has_value() || *clip >= 0.0, op, ": group ", k, " has an invalid ",
                      slot == kSlotTrustClip ? "trust_clip " : "update_clip ", clip.value_or(0.0));
  }
  TORCH_CHECK_VALUE(std::isfinite(dampening) && dampening >= 0.0 && dampening <= 1.0, op, ": group ", k,
                    " has an invalid dampening ", dampening, " (it must lie in [0, 1])");
  TORCH_CHECK_VALUE(!((flags & kFlagNesterov) && dampening != 0.0), op, ": group ", k,
                    ": Nesterov momentum requires zero dampening");
}

// The kernels' options of a checked row and its flag bits.
LarsHyper hyper_of(const double* row, int64_t flags) {
  LarsHyper h;
  h.momentum = static_cast<float>(row[kSlotMomentum]);
  h.weight_decay = static_cast<float>(row[kSlotWeightDecay]);
  h.eeta = static_cast<float>(row[kSlotEeta]);
  h.epsilon = static_cast<float>(row[kSlotEpsilon]);
  const std::optional<double> trust_clip = clip_at(row, kSlotTrustClip), update_clip = clip_at(row, kSlotUpdateClip);
  h.has_trust_clip = trust_clip.has_value();
  h.trust_clip = static_cast<float>(trust_clip.value_or(0.0));
  h.has_update_clip = update_clip.has_value();
  h.update_clip = static_cast<float>(update_clip.value_or(0.0));
  h.dampening = static_cast<float>(row[kSlotDampening]);
  h.lars = flags & kFlagLars;
  h.nesterov = flags & kFlagNesterov;
  h.maximize = flags & kFlagMaximize;
  h.decay = flags & kFlagDecay;
  h.ratio_on_grad = flags & kFlagRatioOnGrad;
  h.norm_of_update = flags & kFlagNormOfUpdate;
  h.larc_clip = flags & kFlagLarcClip;
  h.zero_norm_skip = flags & kFlagZeroNormSkip;
  return h;
}

// Group k's tensors (a message names the group and the index in it), and the
// scalar tensors against its device.
void check_tensors(const char* op, size_t k, const GroupCall& g, const std::optional<at::Tensor>& grad_scale,
                   const std::optional<at::Tensor>& found_inf, std::unordered_set<const void*>& seen) {
  if (g.params.empty()) return;
  const at::Device device = g.params[0].device();
  const bool has_momentum = !g.bufs.empty();
  for (size_t i = 0; i < g.params.size(); ++i) {
    check_param_and_grad(op, k, i, g.params[i], g.grads[i], device, /*grad_as_param=*/false, seen);
    if (has_momentum) check_state_tensor(op, k, i, "momentum buffer", g.bufs[i], g.params[i]);
  }
  // Host scalars are fine on CPU; on CUDA a CPU lr is read once on the host.
  check_scalar_tensor(op, g.lr_tensor, "lr", device, /*allow_cpu=*/true);
  check_scalar_tensor(op, grad_scale, "grad_scale", device, /*allow_cpu=*/device.is_cpu());
  check_scalar_tensor(op, found_inf, "found_inf", device, /*allow_cpu=*/device.is_cpu());
}

std::vector<GroupCall> parse_groups_of(const char* op, at::TensorList params, at::TensorList grads,
                                       at::TensorList bufs, at::IntArrayRef group_sizes, at::ArrayRef<double> hyper,
                                       at::IntArrayRef flags, const c10::List<std::optional<at::Tensor>>& lr_tensors,
                                       const std::optional<at::Tensor>& grad_scale,
                                       const std::optional<at::Tensor>& found_inf) {
  const size_t n_groups = group_sizes.size();
  check_group_lists(op, n_groups, kHyperStride, hyper, flags, lr_tensors);
  TORCH_CHECK_VALUE(params.size() == grads.size(), op, ": got ", params.size(), " params but ", grads.size(),
                    " grads");
  int64_t total = 0, total_bufs = 0;
  for (size_t k = 0; k < n_groups; ++k) {
    TORCH_CHECK_VALUE(group_sizes[k] >= 0, op, ": group ", k, " has a negative size");
    total += group_sizes[k];
    if (hyper[k * kHyperStride + kSlotMomentum] != 0.0) total_bufs += group_sizes[k];
  }
  TORCH_CHECK_VALUE(total == static_cast<int64_t>(params.size()), op, ": group sizes add up to ", total, " but ",
                    params.size(), " params were given");
  TORCH_CHECK_VALUE(total_bufs == static_cast<int64_t>(bufs.size()), op, ": expected ", total_bufs,
                    " momentum buffers (one per param of each group with momentum), got ", bufs.size());

  std::vector<GroupCall> groups;
  groups.reserve(n_groups);
  std::unordered_set<const void*> seen;
  std::optional<at::Device> device;
  int64_t at = 0, at_buf = 0;
  for (size_t k = 0; k < n_groups; ++k) {
    const double* row = hyper.data() + k * kHyperStride;
    check_row(op, k, row, flags[k]);
    const int64_t n = group_sizes[k];
    const int64_t nb = row[kSlotMomentum] != 0.0 ? n : 0;
    GroupCall g{params.slice(at, n), grads.slice(at, n), bufs.slice(at_buf, nb), hyper_of(row, flags[k]),
                row[kSlotLr], lr_tensors.get(k), at};
    check_tensors(op, k, g, grad_scale, found_inf, seen);
    if (n > 0) {
      if (!device.has_value()) device = g.params[0].device();
      TORCH_CHECK_VALUE(g.params[0].device() == *device, op, ": one call steps one device; group 0 is on ",
                        *device, ", group ", k, " on ", g.params[0].device());
    }
    groups.push_back(std::move(g));
    at += n;
    at_buf += nb;
  }
  return groups;
}

}  // namespace

bool is_kernel_float(at::ScalarType t) { return t == at::kFloat || t == at::kHalf || t == at::kBFloat16; }

void check_param_and_grad(const char* op, size_t k, size_t i, const at::Tensor& p, const at::Tensor& grad,
                          const at::Device& device, bool grad_as_param, std::unordered_set<const void*>& seen) {
  TORCH_CHECK_TYPE(!p.is_sparse() && !grad.is_sparse(), op, ": sparse tensors are not supported (group ", k,
                   ", param ", i, ")");
  TORCH_CHECK_TYPE(is_kernel_float(p.scalar_type()), op, ": group ", k, ": param ", i,
                   " must be float32, float16 or bfloat16, got ", p.scalar_type());
  if (grad_as_param) {
    TORCH_CHECK_TYPE(grad.scalar_type() == p.scalar_type(), op, ": group ", k, ": grad ", i, " is ",
                     grad.scalar_type(), " but its param is ", p.scalar_type());
  } else {
    TORCH_CHECK_TYPE(is_kernel_float(grad.scalar_type()), op, ": group ", k, ": grad ", i,
                     " must be float32, float16 or bfloat16, got ", grad.scalar_type());
  }
  TORCH_CHECK_VALUE(p.device() == device && grad.device() == device, op, ": group ", k,
                    ": all tensors of a group must be on one device; its first param is on ", device, ", param ", i,
                    " on ", p.device(), " with its grad on ", grad.device());
  TORCH_CHECK_VALUE(p.sizes() == grad.sizes(), op, ": group ", k, ": param ", i, " has shape ", p.sizes(),
                    " but its grad has shape ", grad.sizes());
  TORCH_CHECK_VALUE(at::has_internal_overlap(p) != at::MemOverlap::Yes, op, ": group ", k, ": param ", i,
                    " has overlapping memory (strides ", p.strides(), "); step a contiguous tensor instead");
  TORCH_CHECK_VALUE(seen.insert(p.data_ptr()).second || p.numel() == 0, op, ": group ", k, ": param ", i,
                    " appears twice in one call");
}

void check_group_lists(const char* op, size_t n_groups, int64_t stride, at::ArrayRef<double> hyper,
                       at::IntArrayRef flags, const c10::List<std::optional<at::Tensor>>& lr_tensors) {
  const size_t n_hyper = n_groups * static_cast<size_t>(stride);
  TORCH_CHECK_VALUE(hyper.size() == n_hyper && flags.size() == n_groups && lr_tensors.size() == n_groups, op, ": ",
                    n_groups, " groups need ", n_hyper, " hyper values, ", n_groups, " flags and ", n_groups,
                    " lr tensors; got ", hyper.size(), ", ", flags.size(), " and ", lr_tensors.size());
}

void check_state_tensor(const char* op, size_t k, size_t i, const char* name, const at::Tensor& s,
                        const at::Tensor& p) {
  TORCH_CHECK_TYPE(s.scalar_type() == p.scalar_type(), op, ": group ", k, ": ", name, " ", i, " is ",
                   s.scalar_type(), " but its param is ", p.scalar_type());
  TORCH_CHECK_VALUE(s.device() == p.device() && s.sizes() == p.sizes(), op, ": group ", k, ": ", name, " ", i,
                    " must match its param's device and shape");
  TORCH_CHECK_VALUE(at::has_internal_overlap(s) != at::MemOverlap::Yes, op, ": group ", k, ": ", name, " ", i,
                    " has overlapping memory");
}

void check_scalar_tensor(const char* op, const std::optional<at::Tensor>& t, const char* name,
                         const at::Device& device, bool allow_cpu) {
  if (!t.has_value()) return;
  TORCH_CHECK_VALUE(t->numel() == 1, op, ": ", name, " must hold exactly one element, got shape ", t->sizes());
  TORCH_CHECK_TYPE(t->scalar_type() == at::kFloat || t->scalar_type() == at::kDouble, op, ": ", name,
                   " must be float32 or float64, got ", t->scalar_type());
  TORCH_CHECK_VALUE(t->device() == device || (allow_cpu && t->device().is_cpu()), op, ": ", name, " is on ",
                    t->device(), " but the params are on ", device);
}

std::vector<GroupCall> parse_groups(at::TensorList params, at::TensorList grads, at::TensorList bufs,
                                    at::IntArrayRef group_sizes, at::ArrayRef<double> hyper,
                                    at::IntArrayRef flags, const c10::List<std::optional<at::Tensor>>& lr_tensors,
                                    const std::optional<at::Tensor>& grad_scale,
                                    const std::optional<at::Tensor>& found_inf) {
  return parse_groups_of(kGroupsOp, params, grads, bufs, group_sizes, hyper, flags, lr_tensors, grad_scale,
                         found_inf);
}

std::vector<GroupCall> parse_norm_groups(at::TensorList params, at::TensorList grads, at::IntArrayRef group_sizes,
                                         at::IntArrayRef flags) {
  TORCH_CHECK_VALUE(flags.size() == group_sizes.size(), kNormsOp, ": ", group_sizes.size(),
                    " groups need as many flags, got ", flags.size());
  // Only the lars and norm-of-update flags matter to the norms: lr 0, no momentum,
  // no clips, and an eeta that passes the check.
  std::vector<double> row(kHyperStride, 0.0);
  row[kSlotEeta] = 1e-3;
  row[kSlotTrustClip] = row[kSlotUpdateClip] = NAN;
  std::vector<double> hyper;
  c10::List<std::optional<at::Tensor>> lr_tensors;
  for (size_t k = 0; k < group_sizes.size(); ++k) {
    hyper.insert(hyper.end(), row.begin(), row.end());
    lr_tensors.push_back(std::nullopt);
  }
  return parse_groups_of(kNormsOp, params, grads, {}, group_sizes, hyper, flags, lr_tensors, std::nullopt,
                         std::nullopt);
}

std::vector<GroupCall> parse_apply_groups(at::TensorList params, at::TensorList grads, at::TensorList bufs,
                                          at::IntArrayRef group_sizes, at::ArrayRef<double> hyper,
                                          at::IntArrayRef flags,
                                          const c10::List<std::optional<at::Tensor>>& lr_tensors,
                                          const at::Tensor& sums, const std::optional<at::Tensor>& grad_scale,
                                          const std::optional<at::Tensor>& found_inf) {
  std::vector<GroupCall> groups =
      parse_groups_of(kApplyOp, params, grads, bufs, group_sizes, hyper, flags, lr_tensors, grad_scale, found_inf);
  const int64_t n = static_cast<int64_t>(params.size());
  TORCH_CHECK_TYPE(sums.scalar_type() == at::kDouble, kApplyOp, ": sums must be float64, got ", sums.scalar_type());
  TORCH_CHECK_VALUE(sums.dim() == 2 && sums.size(0) == n && sums.size(1) == kSumsPerTensor && sums.is_contiguous(),
                    kApplyOp, ": sums must be a contiguous [", n, ", ", kSumsPerTensor,
                    "] tensor (one row per param), got shape ", sums.sizes());
  if (n > 0) {
    TORCH_CHECK_VALUE(sums.device() == params[0].device(), kApplyOp, ": sums are on ", sums.device(),
                      " but the params are on ", params[0].device());
  }
  return groups;
}

}  // namespace lars_cuda
