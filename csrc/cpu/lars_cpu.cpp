// CPU implementation of lars_cuda's ops: checks, host scalars, and the
// choice between the AVX-512, AVX2 and portable builds of the kernel.
#include <ATen/Version.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "../buckets.h"
#include "../dispatch.h"
#include "../group_args.h"
#include "../op_entry_points.h"
#include "../status.h"
#include "kernel_choice.h"

namespace lars_cuda {

namespace cpu_default {
void run(at::TensorList, at::TensorList, at::TensorList, float, float, const LarsHyper&, const int64_t*, SumsIO);
}
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(LARS_CUDA_NO_AVX2)
#define LARS_CUDA_HAS_X86_KERNELS 1
namespace cpu_avx2 {
void run(at::TensorList, at::TensorList, at::TensorList, float, float, const LarsHyper&, const int64_t*, SumsIO);
}
namespace cpu_avx512 {
void run(at::TensorList, at::TensorList, at::TensorList, float, float, const LarsHyper&, const int64_t*, SumsIO);
}
#endif

CpuKernel cpu_kernel_choice() {
#if defined(LARS_CUDA_HAS_X86_KERNELS)
  static const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                               __builtin_cpu_supports("f16c");
  static const bool has_avx512 = has_avx2 && __builtin_cpu_supports("avx512f") &&
                                 __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                                 __builtin_cpu_supports("avx512dq");
  static const std::string torch_capability = at::get_cpu_capability();
  const char* forced = std::getenv("LARS_CUDA_CPU_KERNEL");
  const std::string want = forced != nullptr && *forced != '\0' ? std::string(forced)
                           : torch_capability == "AVX512"        ? "avx512"
                           : torch_capability == "AVX2"          ? "avx2"
                                                                 : "default";
  if (want == "avx512" && has_avx512) return CpuKernel::kAvx512;
  if ((want == "avx512" || want == "avx2") && has_avx2) return CpuKernel::kAvx2;
#endif
  return CpuKernel::kDefault;
}

namespace {

// Every group was checked before this runs (parse_groups), so
// an invalid group has already raised with nothing written. `io`: the sharded
// step's halves (group_args.h); the norms half reads no grad_scale/found_inf.
void run_groups_cpu(const std::vector<GroupCall>& groups, const std::optional<at::Tensor>& grad_scale,
                    const std::optional<at::Tensor>& found_inf, SumsIO io) {
  // On the CPU these reads cost nothing: there is no device to wait for.
  if (found_inf.has_value() && found_inf->item<double>() != 0.0) return;
  const float inv_scale = grad_scale.has_value() ? static_cast<float>(1.0 / grad_scale->item<double>()) : 1.f;
  const CpuKernel kernel = cpu_kernel_choice();
  for (const GroupCall& g : groups) {
    if (g.params.empty() || (io.out != nullptr && !g.hyper.lars)) continue;
    const float lr_f = static_cast<float>(g.lr_tensor.has_value() ? g.lr_tensor->item<double>() : g.lr);
    std::vector<Bucket> buckets;
    add_to_buckets(buckets, g.params, g.grads, g.bufs, 0, g.first_index);
    for (Bucket& b : buckets) {
#if defined(LARS_CUDA_HAS_X86_KERNELS)
      if (kernel == CpuKernel::kAvx512) {
        cpu_avx512::run(b.params, b.grads, b.bufs, lr_f, inv_scale, g.hyper, b.index.data(), io);
      } else if (kernel == CpuKernel::kAvx2) {
        cpu_avx2::run(b.params, b.grads, b.bufs, lr_f, inv_scale, g.hyper, b.index.data(), io);
      } else
#endif
      {
        cpu_default::run(b.params, b.grads, b.bufs, lr_f, inv_scale, g.hyper, b.index.data(), io);
      }
      finish_bucket(b);
    }
  }
}

at::Device cpu_sums_device(at::TensorList) { return at::Device(at::kCPU); }

using CpuOps = OpEntryPoints<&run_groups_cpu, &cpu_sums_device>;

}  // namespace

std::string cpu_kernel_variant() {
  switch (cpu_kernel_choice()) {
    case CpuKernel::kAvx512:
      return "avx512";
    case CpuKernel::kAvx2:
      return "avx2";
    default:
      return "default";
  }
}

TORCH_LIBRARY_IMPL(lars_cuda, CPU, m) {
  m.impl(kGroupsOp, &CpuOps::groups);
  m.impl(kNormsOp, &CpuOps::norms);
  m.impl(kApplyOp, &CpuOps::apply);
}

}  // namespace lars_cuda
