// What the CPU and CUDA implementations of lars_cuda::fused_lars_ share:
// argument checks (so both reject the same inputs with the same message),
// hyper-parameter packing and dtype dispatch.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include <string>
#include <vector>

#include "lars.h"

namespace lars_cuda {

// Checks lists, devices, dtypes and layouts; throws ValueError/TypeError
// (TORCH_CHECK_VALUE / TORCH_CHECK_TYPE) before anything is written.
void check_fused_lars_args(
    at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
    double momentum, double weight_decay, double eeta, double epsilon,
    std::optional<double> trust_clip, std::optional<double> update_clip,
    const std::optional<at::Tensor>& lr_tensor,
    const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf);

// The tensors of one group, split by (param dtype, grad dtype): each kernel
// instantiation walks one bucket. Zero-size tensors are left out; a grad whose
// strides differ from its param's is copied into the param's layout. A param
// that is not dense (a strided view), or whose buffer is laid out unlike it,
// is stepped in dense copies that finish_bucket() writes back.
struct Bucket {
  at::ScalarType p_type;
  at::ScalarType g_type;
  // bufs[i] is undefined for a param whose group has no momentum; group[i] is
  // the index of the param's group in the caller's list.
  std::vector<at::Tensor> params, grads, bufs;
  std::vector<int64_t> group;
  // index[i]: the tensor's position in the op call's flat list (its row of the
  // sharded step's sums tensor).
  std::vector<int64_t> index;
  std::vector<std::pair<at::Tensor, at::Tensor>> write_back;  // (destination, dense copy)
};
// Adds one group's tensors (bufs empty: no momentum) to the buckets, as group
// `group`, the first of them at position `first_index` of the call's list.
void add_to_buckets(std::vector<Bucket>& buckets, at::TensorList params, at::TensorList grads, at::TensorList bufs,
                    int64_t group, int64_t first_index = 0);
// Copies the dense stand-ins of non-dense params and buffers back (stream-ordered on CUDA).
void finish_bucket(Bucket& bucket);

LarsHyper make_hyper(double momentum, double weight_decay, double eeta, double epsilon, bool lars,
                     bool nesterov, std::optional<double> trust_clip, std::optional<double> update_clip,
                     bool maximize = false);

// One param group of a call: slices of the call's lists and its options.
struct GroupCall {
  at::TensorList params, grads, bufs;
  LarsHyper hyper;
  double lr;
  std::optional<at::Tensor> lr_tensor;
  int64_t first_index = 0;  // position of params[0] in the call's flat list
};

// The sharded step splits the kernel in two around one all-reduce (ops
// fused_lars_norms and fused_lars_apply_). Sums are per tensor of the call's
// flat list, (Σp², Σg², Σg·p) of the local shard in double, row-major [N, 3]
// (Σg·p only for groups whose ratio needs it, the SSL flavour's; else 0):
// `out` set: the norm pass writes them and nothing is updated;
// `in` set: the update takes them (the global sums) instead of a norm pass.
struct SumsIO {
  double* out = nullptr;
  const double* in = nullptr;
};
constexpr int64_t kSumsPerTensor = 3;

// fused_lars_groups_ packs each group's floats in `hyper` with this stride
// (a disabled clip is NaN) and its switches in `flags` as these bits.
constexpr int64_t kHyperStride = 8;  // lr, momentum, weight_decay, eeta, epsilon, trust_clip, update_clip,
                                     // dampening
constexpr int64_t kFlagLars = 1, kFlagNesterov = 2, kFlagMaximize = 4, kFlagDecay = 8, kFlagRatioOnGrad = 16,
                  kFlagNormOfUpdate = 32, kFlagLarcClip = 64, kFlagZeroNormSkip = 128;

// Splits the flat lists of fused_lars_groups_ into groups and checks every
// group (and grad_scale/found_inf) before the caller writes anything, so a bad
// group leaves every group as it was.
std::vector<GroupCall> parse_groups(at::TensorList params, at::TensorList grads, at::TensorList bufs,
                                    at::IntArrayRef group_sizes, at::ArrayRef<double> hyper,
                                    at::IntArrayRef flags, const c10::List<std::optional<at::Tensor>>& lr_tensors,
                                    const std::optional<at::Tensor>& grad_scale,
                                    const std::optional<at::Tensor>& found_inf);

// fused_lars_norms's lists: groups with only their lars flag (no hyper-parameters).
std::vector<GroupCall> parse_norm_groups(at::TensorList params, at::TensorList grads, at::IntArrayRef group_sizes,
                                         at::IntArrayRef flags);
// fused_lars_apply_'s arguments: parse_groups, and the sums must be float64
// [N, 3] on the params' device, contiguous.
std::vector<GroupCall> parse_apply_groups(at::TensorList params, at::TensorList grads, at::TensorList bufs,
                                          at::IntArrayRef group_sizes, at::ArrayRef<double> hyper,
                                          at::IntArrayRef flags,
                                          const c10::List<std::optional<at::Tensor>>& lr_tensors,
                                          const at::Tensor& sums, const std::optional<at::Tensor>& grad_scale,
                                          const std::optional<at::Tensor>& found_inf);

// The single-group form (fused_lars_), checked the same way.
std::vector<GroupCall> single_group(at::TensorList params, at::TensorList grads, at::TensorList bufs, double lr,
                                    const std::optional<at::Tensor>& lr_tensor, double momentum,
                                    double weight_decay, double eeta, double epsilon, bool lars, bool nesterov,
                                    std::optional<double> trust_clip, std::optional<double> update_clip,
                                    const std::optional<at::Tensor>& grad_scale,
                                    const std::optional<at::Tensor>& found_inf);

// Which launch path the CUDA implementation took last (reported to Python).
void set_last_cuda_launch(const char* kind);
std::string last_cuda_launch();

// Whether the CUDA kernel has code (SASS, or PTX the driver can compile) for a
// device; the CUDA translation unit installs the probe, a CPU-only build answers false.
using CudaProbe = bool (*)(int64_t device);
CudaProbe& cuda_kernel_probe();

// Which build of the CPU kernel runs here: "avx2" or "default".
std::string cpu_kernel_variant();

// Calls f(P{}) for the supported floating types; the math is float32 for all.
template <typename F>
void dispatch_lars_type(at::ScalarType t, const char* what, F&& f) {
  switch (t) {
    case at::kFloat: f(float{}); break;
    case at::kHalf: f(at::Half{}); break;
    case at::kBFloat16: f(at::BFloat16{}); break;
    default:
      TORCH_CHECK_TYPE(false, "fused_lars_: ", what, " must be float32, float16 or bfloat16, got ", t);
  }
}

}  // namespace lars_cuda
