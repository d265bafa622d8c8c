// The op's schema, its shared argument checks, and the Python module stub that
// lets `import lars_cuda._C` load the library (and so register the ops).
#include <Python.h>
#include <torch/library.h>

#include <cmath>
#include <string>
#include <algorithm>
#include <unordered_set>

#include <ATen/MemoryOverlap.h>

#include "lars_op.h"

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

namespace {
std::string& last_launch_storage() {
  static std::string kind = "none";
  return kind;
}
}  // namespace

void set_last_cuda_launch(const char* kind) { last_launch_storage() = kind; }
std::string last_cuda_launch() { return last_launch_storage(); }

CudaProbe& cuda_kernel_probe() {
  static CudaProbe probe = [](int64_t) { return false; };
  return probe;
}

void add_to_buckets(std::vector<Bucket>& buckets, at::TensorList params, at::TensorList grads, at::TensorList bufs,
                    int64_t group, int64_t first_index) {
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    if (p.numel() == 0) continue;
    const at::ScalarType pt = p.scalar_type(), gt = grads[i].scalar_type();
    auto it = std::find_if(buckets.begin(), buckets.end(),
                           [&](const Bucket& b) { return b.p_type == pt && b.g_type == gt; });
    if (it == buckets.end()) {
      buckets.push_back(Bucket{pt, gt, {}, {}, {}, {}, {}, {}});
      it = buckets.end() - 1;
    }
    // The kernels walk flat memory. A param that is not dense (a strided view)
    // is stepped in a contiguous copy, written back after the kernel; dense
    // params are used in place.
    const bool dense = p.is_non_overlapping_and_dense();
    const at::Tensor pk = dense ? p : p.contiguous();
    if (!dense) it->write_back.emplace_back(p, pk);
    it->params.push_back(pk);
    it->group.push_back(group);
    it->index.push_back(first_index + static_cast<int64_t>(i));
    // A grad laid out unlike its param (say a contiguous grad for a
    // channels_last param) is copied into the param's layout.
    it->grads.push_back(grads[i].strides() == pk.strides() ? grads[i] : at::empty_like(pk, gt).copy_(grads[i]));
    if (bufs.empty()) {
      it->bufs.emplace_back();  // undefined: no momentum in this group
    } else if (bufs[i].strides() == pk.strides()) {
      it->bufs.push_back(bufs[i]);
    } else {  // a buffer laid out unlike its param: stepped in the param's layout, written back
      at::Tensor mk = at::empty_like(pk).copy_(bufs[i]);
      it->write_back.emplace_back(bufs[i], mk);
      it->bufs.push_back(mk);
    }
  }
}

void finish_bucket(Bucket& bucket) {
  for (auto& [dst, src] : bucket.write_back) dst.copy_(src);
  bucket.write_back.clear();
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

std::vector<GroupCall> single_group(at::TensorList params, at::TensorList grads, at::TensorList bufs, double lr,
                                    const std::optional<at::Tensor>& lr_tensor, double momentum,
                                    double weight_decay, double eeta, double epsilon, bool lars, bool nesterov,
                                    std::optional<double> trust_clip, std::optional<double> update_clip,
                                    const std::optional<at::Tensor>& grad_scale,
                                    const std::optional<at::Tensor>& found_inf) {
  check_fused_lars_args(params, grads, bufs, momentum, weight_decay, eeta, epsilon, trust_clip, update_clip,
                        lr_tensor, grad_scale, found_inf);
  return {GroupCall{params, grads, bufs,
                    make_hyper(momentum, weight_decay, eeta, epsilon, lars, nesterov, trust_clip, update_clip),
                    lr, lr_tensor}};
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

TORCH_LIBRARY(lars_cuda, m) {
  m.def(
      "fused_lars_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, float lr, "
      "Tensor? lr_tensor, float momentum, float weight_decay, float eeta, float epsilon, bool lars, "
      "bool nesterov, float? trust_clip, float? update_clip, Tensor? grad_scale, Tensor? found_inf) -> ()");
  // Several param groups in one call: every group is checked before any is
  // written. Per group k: group_sizes[k] params (and as many buffers when its
  // momentum is nonzero), hyper[8k:8k+8] = lr, momentum, weight_decay, eeta,
  // epsilon, trust_clip, update_clip (NaN: no clip), dampening; flags[k] = lars
  // | 2 nesterov | 4 maximize | 8 decay | 16 ratio on the gradient | 32 norm of
  // the update (SSL) | 64 LARC clip | 128 zero norm skips decay (LARC);
  // lr_tensors[k] overriding lr when given.
  m.def(
      "fused_lars_groups_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, int[] group_sizes, "
      "float[] hyper, int[] flags, Tensor?[] lr_tensors, Tensor? grad_scale=None, Tensor? found_inf=None) -> ()");
  // The sharded step (DTensor params): per tensor of the local shards (Σp², Σg², Σg·p)
  // in float64, [N, 3] (zeros for lars=False groups and empty shards); the
  // caller all-reduces them over the shard group and passes the sums to
  // fused_lars_apply_, which forms the ratios from them and updates in place.
  m.def("fused_lars_norms(Tensor[] params, Tensor[] grads, int[] group_sizes, int[] flags) -> Tensor");
  m.def(
      "fused_lars_apply_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, int[] group_sizes, "
      "float[] hyper, int[] flags, Tensor?[] lr_tensors, Tensor sums, Tensor? grad_scale=None, "
      "Tensor? found_inf=None) -> ()");
  // Which CUDA launch path the last CUDA call took: "cooperative", "three-kernel" or "none".
  m.def("last_cuda_launch() -> str", [] { return last_cuda_launch(); });
  // Whether the CUDA kernel can run on CUDA device `device` (false in a CPU-only build).
  m.def("cuda_kernel_runs(int device) -> bool", [](int64_t device) { return cuda_kernel_probe()(device); });
  // Which build of the CPU kernel runs on this machine: "avx2" or "default".
  m.def("cpu_kernel() -> str", [] { return cpu_kernel_variant(); });
}

namespace {
// Sparse tensors dispatch here instead of to the CPU/CUDA kernels.
void reject_sparse(at::TensorList, at::TensorList, at::TensorList, double, const std::optional<at::Tensor>&, double,
                   double, double, double, bool, bool, std::optional<double>, std::optional<double>,
                   const std::optional<at::Tensor>&, const std::optional<at::Tensor>&) {
  TORCH_CHECK_TYPE(false, "fused_lars_: sparse tensors are not supported");
}

void reject_sparse_groups(at::TensorList, at::TensorList, at::TensorList, at::IntArrayRef, at::ArrayRef<double>,
                          at::IntArrayRef, const c10::List<std::optional<at::Tensor>>&,
                          const std::optional<at::Tensor>&, const std::optional<at::Tensor>&) {
  TORCH_CHECK_TYPE(false, "fused_lars_groups_: sparse tensors are not supported");
}

at::Tensor reject_sparse_norms(at::TensorList, at::TensorList, at::IntArrayRef, at::IntArrayRef) {
  TORCH_CHECK_TYPE(false, "fused_lars_norms: sparse tensors are not supported");
}

void reject_sparse_apply(at::TensorList, at::TensorList, at::TensorList, at::IntArrayRef, at::ArrayRef<double>,
                         at::IntArrayRef, const c10::List<std::optional<at::Tensor>>&, const at::Tensor&,
                         const std::optional<at::Tensor>&, const std::optional<at::Tensor>&) {
  TORCH_CHECK_TYPE(false, "fused_lars_apply_: sparse tensors are not supported");
}
}  // namespace

TORCH_LIBRARY_IMPL(lars_cuda, SparseCPU, m) {
  m.impl("fused_lars_", &reject_sparse);
  m.impl("fused_lars_groups_", &reject_sparse_groups);
  m.impl("fused_lars_norms", &reject_sparse_norms);
  m.impl("fused_lars_apply_", &reject_sparse_apply);
}
TORCH_LIBRARY_IMPL(lars_cuda, SparseCUDA, m) {
  m.impl("fused_lars_", &reject_sparse);
  m.impl("fused_lars_groups_", &reject_sparse_groups);
  m.impl("fused_lars_norms", &reject_sparse_norms);
  m.impl("fused_lars_apply_", &reject_sparse_apply);
}

}  // namespace lars_cuda

extern "C" {
// `import lars_cuda._C` loads this library, which runs the registrations above.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
