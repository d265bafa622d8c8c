// The library: the ops' schemas (TORCH_LIBRARY), the sparse rejections, and the
// Python module stub that lets `import lars_cuda._C` load the library (and so
// register the ops).
#include <Python.h>
#include <torch/library.h>

#include "group_args.h"
#include "lamb_args.h"
#include "launch_config.h"
#include "op_schemas.h"
#include "status.h"

namespace lars_cuda {

TORCH_LIBRARY(lars_cuda, m) {
  // The kernel ops (their schemas and what they do: op_schemas.h).
  m.def(kGroupsSchema);
  m.def(kNormsSchema);
  m.def(kApplySchema);
  m.def(kLambGroupsSchema);
  m.def(kLambNormsSchema);
  m.def(kLambApplySchema);
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
  TORCH_CHECK_TYPE(false, kGroupsOp, ": sparse tensors are not supported");
}

at::Tensor reject_sparse_norms(at::TensorList, at::TensorList, at::IntArrayRef, at::IntArrayRef) {
  TORCH_CHECK_TYPE(false, kNormsOp, ": sparse tensors are not supported");
}

void reject_sparse_apply(at::TensorList, at::TensorList, at::TensorList, at::IntArrayRef, at::ArrayRef<double>,
                         at::IntArrayRef, const c10::List<std::optional<at::Tensor>>&, const at::Tensor&,
                         const std::optional<at::Tensor>&, const std::optional<at::Tensor>&) {
  TORCH_CHECK_TYPE(false, kApplyOp, ": sparse tensors are not supported");
}

void reject_sparse_lamb(at::TensorList, at::TensorList, at::TensorList, at::TensorList, at::TensorList,
                        at::IntArrayRef, at::ArrayRef<double>, at::IntArrayRef,
                        const c10::List<std::optional<at::Tensor>>&, std::optional<double>,
                        const std::optional<at::Tensor>&, const std::optional<at::Tensor>&) {
  TORCH_CHECK_TYPE(false, kLambGroupsOp, ": sparse tensors are not supported");
}

at::Tensor reject_sparse_lamb_norms(at::TensorList, at::TensorList, at::TensorList, at::TensorList, at::TensorList,
                                    at::IntArrayRef, at::ArrayRef<double>, at::IntArrayRef,
                                    const c10::List<std::optional<at::Tensor>>&, const std::optional<at::Tensor>&) {
  TORCH_CHECK_TYPE(false, kLambNormsOp, ": sparse tensors are not supported");
}

void reject_sparse_lamb_apply(at::TensorList, at::TensorList, at::TensorList, at::TensorList, at::TensorList,
                              at::IntArrayRef, at::ArrayRef<double>, at::IntArrayRef,
                              const c10::List<std::optional<at::Tensor>>&, const at::Tensor&,
                              const std::optional<at::Tensor>&) {
  TORCH_CHECK_TYPE(false, kLambApplyOp, ": sparse tensors are not supported");
}
}  // namespace

TORCH_LIBRARY_IMPL(lars_cuda, SparseCPU, m) {
  m.impl(kGroupsOp, &reject_sparse_groups);
  m.impl(kNormsOp, &reject_sparse_norms);
  m.impl(kApplyOp, &reject_sparse_apply);
  m.impl(kLambGroupsOp, &reject_sparse_lamb);
  m.impl(kLambNormsOp, &reject_sparse_lamb_norms);
  m.impl(kLambApplyOp, &reject_sparse_lamb_apply);
}
TORCH_LIBRARY_IMPL(lars_cuda, SparseCUDA, m) {
  m.impl(kGroupsOp, &reject_sparse_groups);
  m.impl(kNormsOp, &reject_sparse_norms);
  m.impl(kApplyOp, &reject_sparse_apply);
  m.impl(kLambGroupsOp, &reject_sparse_lamb);
  m.impl(kLambNormsOp, &reject_sparse_lamb_norms);
  m.impl(kLambApplyOp, &reject_sparse_lamb_apply);
}

}  // namespace lars_cuda

extern "C" {
// `import lars_cuda._C` loads this library, which runs the registrations above.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
