// The library: the ops' schemas (TORCH_LIBRARY), the single-group op as a
// composite of the groups op, the sparse rejections, and the Python module stub
// that lets `import lars_cuda._C` load the library (and so register the ops).
#include <Python.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cmath>
#include <string>
#include <vector>

#include "group_args.h"
#include "launch_config.h"
#include "op_schemas.h"
#include "status.h"

namespace lars_cuda {

TORCH_LIBRARY(lars_cuda, m) {
  // The single-group form, kept for callers of the first release: a composite
  // that forwards to fused_lars_groups_ (fused_lars_composite below).
  m.def(
      "fused_lars_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, float lr, "
      "Tensor? lr_tensor, float momentum, float weight_decay, float eeta, float epsilon, bool lars, "
      "bool nesterov, float? trust_clip, float? update_clip, Tensor? grad_scale, Tensor? found_inf) -> ()");
  // The kernel ops (their schemas and what they do: op_schemas.h).
  m.def(kGroupsSchema);
  m.def(kNormsSchema);
  m.def(kApplySchema);
  // Which CUDA launch path the last CUDA call took: "cooperative", "three-kernel" or "none".
  m.def("last_cuda_launch() -> str", [] { return last_cuda_launch(); });
  // Whether the CUDA kernel can run on CUDA device `device` (false in a CPU-only build).
  m.def("cuda_kernel_runs(int device) -> bool", [](int64_t device) { return cuda_kernel_probe()(device); });
  // Which build of the CPU kernel runs on this machine: "avx512", "avx2" or "default".
  m.def("cpu_kernel() -> str", [] { return cpu_kernel_variant(); });
  // Re-reads the CUDA launch knobs from the environment (launch_config.h).
  m.def("reload_launch_config() -> ()", [] { reload_launch_config(); });
}

namespace {
// Sparse tensors dispatch here instead of to the CPU/CUDA kernels.
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

namespace {
// fused_lars_ (one group, the seed's switches) as one fused_lars_groups_ call:
// the packed row and flags of group_args.h, NaN for a disabled clip.
void fused_lars_composite(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers, double lr,
                          const std::optional<at::Tensor>& lr_tensor, double momentum, double weight_decay,
                          double eeta, double epsilon, bool lars, bool nesterov, std::optional<double> trust_clip,
                          std::optional<double> update_clip, const std::optional<at::Tensor>& grad_scale,
                          const std::optional<at::Tensor>& found_inf) {
  // (NaN would read as "no clip" in the packed row.)
  TORCH_CHECK_VALUE(!trust_clip.has_value() || *trust_clip >= 0.0, "fused_lars_: invalid trust_clip ",
                    trust_clip.value_or(0.0));
  TORCH_CHECK_VALUE(!update_clip.has_value() || *update_clip >= 0.0, "fused_lars_: invalid update_clip ",
                    update_clip.value_or(0.0));
  const std::vector<double> hyper = {lr, momentum, weight_decay, eeta, epsilon, trust_clip.value_or(NAN),
                                     update_clip.value_or(NAN), 0.0};
  static_assert(kHyperStride == 8, "the packed row above has 8 entries");
  // The seed: weight decay exactly where LARS adapts.
  const std::vector<int64_t> flags = {(lars ? kFlagLars | kFlagDecay : 0) | (nesterov ? kFlagNesterov : 0)};
  c10::List<std::optional<at::Tensor>> lr_tensors;
  lr_tensors.push_back(lr_tensor);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lars_cuda::fused_lars_groups_", "")
                       .typed<void(at::TensorList, at::TensorList, at::TensorList, at::IntArrayRef,
                                   at::ArrayRef<double>, at::IntArrayRef,
                                   const c10::List<std::optional<at::Tensor>>&, const std::optional<at::Tensor>&,
                                   const std::optional<at::Tensor>&)>();
  const std::vector<int64_t> sizes = {static_cast<int64_t>(params.size())};
  op.call(params, grads, momentum_buffers, sizes, hyper, flags, lr_tensors, grad_scale, found_inf);
}
}  // namespace

TORCH_LIBRARY_IMPL(lars_cuda, CompositeImplicitAutograd, m) { m.impl("fused_lars_", &fused_lars_composite); }

TORCH_LIBRARY_IMPL(lars_cuda, SparseCPU, m) {
  m.impl("fused_lars_groups_", &reject_sparse_groups);
  m.impl("fused_lars_norms", &reject_sparse_norms);
  m.impl("fused_lars_apply_", &reject_sparse_apply);
}
TORCH_LIBRARY_IMPL(lars_cuda, SparseCUDA, m) {
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
