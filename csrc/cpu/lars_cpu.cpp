// CPU implementation of lars_cuda::fused_lars_: checks, host scalars, and the
// choice between the AVX2 and the portable build of the kernel.
#include <torch/library.h>

#include <cstdlib>
#include <string>

#include "../lars_op.h"

namespace lars_cuda {

namespace cpu_default {
void run(at::TensorList, at::TensorList, at::TensorList, float, float, const LarsHyper&);
}
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(LARS_CUDA_NO_AVX2)
#define LARS_CUDA_HAS_AVX2_KERNEL 1
namespace cpu_avx2 {
void run(at::TensorList, at::TensorList, at::TensorList, float, float, const LarsHyper&);
}
#endif

namespace {

// LARS_CUDA_CPU_KERNEL=default forces the portable build (the tests run both).
bool cpu_has_avx2() {
#if defined(LARS_CUDA_HAS_AVX2_KERNEL)
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                                __builtin_cpu_supports("f16c");
  const char* forced = std::getenv("LARS_CUDA_CPU_KERNEL");
  return supported && !(forced != nullptr && std::string(forced) == "default");
#else
  return false;
#endif
}

void fused_lars_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers, double lr,
                    const std::optional<at::Tensor>& lr_tensor, double momentum, double weight_decay, double eeta,
                    double epsilon, bool lars, bool nesterov, std::optional<double> trust_clip,
                    std::optional<double> update_clip, const std::optional<at::Tensor>& grad_scale,
                    const std::optional<at::Tensor>& found_inf) {
  check_fused_lars_args(params, grads, momentum_buffers, momentum, weight_decay, eeta, epsilon, trust_clip,
                        update_clip, lr_tensor, grad_scale, found_inf);
  if (params.empty()) return;
  // On the CPU these reads cost nothing: there is no device to wait for.
  if (found_inf.has_value() && found_inf->item<double>() != 0.0) return;
  const float inv_scale = grad_scale.has_value() ? static_cast<float>(1.0 / grad_scale->item<double>()) : 1.f;
  const float lr_f = static_cast<float>(lr_tensor.has_value() ? lr_tensor->item<double>() : lr);
  const LarsHyper h = make_hyper(momentum, weight_decay, eeta, epsilon, lars, nesterov, trust_clip, update_clip);

  const bool avx2 = cpu_has_avx2();
  for (const Bucket& b : bucket_by_dtype(params, grads, momentum_buffers)) {
#if defined(LARS_CUDA_HAS_AVX2_KERNEL)
    if (avx2) {
      cpu_avx2::run(b.params, b.grads, b.bufs, lr_f, inv_scale, h);
      continue;
    }
#endif
    cpu_default::run(b.params, b.grads, b.bufs, lr_f, inv_scale, h);
  }
}

}  // namespace

std::string cpu_kernel_variant() { return cpu_has_avx2() ? "avx2" : "default"; }

TORCH_LIBRARY_IMPL(lars_cuda, CPU, m) { m.impl("fused_lars_", &fused_lars_cpu); }

}  // namespace lars_cuda
