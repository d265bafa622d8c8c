// The CUDA backend: its run (bucket the checked groups by dtype, find or build
// each bucket's device table, launch), registered through op_entry_points.h, and
// the probe that tells whether this build has code for a device. The walk over
// launches and buckets is group_launches.h's, shared with the emulated build.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../buckets.h"
#include "../dispatch.h"
#include "../group_args.h"
#include "../launch_config.h"
#include "../op_entry_points.h"
#include "../status.h"
#include "group_launches.h"
#include "launch.cuh"
#include "tensor_table.cuh"

namespace lars_cuda {
namespace cuda_impl {
namespace {

// Every group was checked before this runs (parse_groups), so
// an invalid group has already raised with nothing written. One launch per
// dtype bucket for up to kMaxGroups groups (the seed's two groups: one launch).
void run_groups_cuda(const std::vector<GroupCall>& groups, const std::optional<at::Tensor>& grad_scale,
                     const std::optional<at::Tensor>& found_inf, SumsIO io) {
  std::vector<at::Tensor> keep;
  const float* scale_ptr = float_ptr_or_null(grad_scale, keep);
  const float* inf_ptr = float_ptr_or_null(found_inf, keep);
  for_each_launch(groups, io, [](const at::Tensor& lr) { return lr.is_cpu(); },
                  [&](const LaunchGroups& args, const Bucket& b) {
                    const c10::cuda::CUDAGuard guard(b.params[0].device());
                    const DeviceTable tab = get_table(b, launch_config().wave_bytes, op_of(io));
                    const int device = b.params[0].get_device();
                    dispatch_lars_type(b.p_type, "params", [&](auto p_tag) {
                      using P = decltype(p_tag);
                      dispatch_lars_type(b.g_type, "grads", [&](auto g_tag) {
                        using G = decltype(g_tag);
                        launch<P, G>(tab, args, scale_ptr, inf_ptr, device, io);
                      });
                    });
                  });
}

at::Device cuda_sums_device(at::TensorList params) {
  return params.empty() ? at::Device(at::kCUDA, c10::cuda::current_device()) : params[0].device();
}

// Whether lars_kernel has an image for `device` (SASS for its architecture or PTX
// the driver can JIT): cudaFuncGetAttributes fails with
// cudaErrorNoKernelImageForDevice otherwise. Cached per device.
bool kernel_runs_on(int64_t device) {
  static std::mutex mu;
  static std::vector<int> known;  // -1 unknown, 0 no, 1 yes
  std::lock_guard<std::mutex> lock(mu);
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || device < 0 || device >= count) {
    (void)cudaGetLastError();
    return false;
  }
  if (known.size() <= static_cast<size_t>(device)) known.resize(device + 1, -1);
  if (known[device] < 0) {
    const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
    cudaFuncAttributes attr;
    const cudaError_t err = cudaFuncGetAttributes(&attr, lars_kernel<float, float>);
    (void)cudaGetLastError();  // clear a sticky "no kernel image" so torch does not see it later
    known[device] = err == cudaSuccess ? 1 : 0;
  }
  return known[device] == 1;
}

const bool probe_installed = (cuda_kernel_probe() = &kernel_runs_on, true);

}  // namespace
}  // namespace cuda_impl

using CudaOps = OpEntryPoints<&cuda_impl::run_groups_cuda, &cuda_impl::cuda_sums_device>;

TORCH_LIBRARY_IMPL(lars_cuda, CUDA, m) {
  m.impl(kGroupsOp, &CudaOps::groups);
  m.impl(kNormsOp, &CudaOps::norms);
  m.impl(kApplyOp, &CudaOps::apply);
}

}  // namespace lars_cuda
