// The CUDA backend of fused_lamb_groups_ and of the sharded halves
// fused_lamb_norms / fused_lamb_apply_ (the same launches with SumsIO): parse
// and check every group (lamb_args.h), the global clip with ATen ops on the
// device (lamb_buckets.h),
// then per launch of up to kMaxGroups groups and per dtype bucket its table
// (lamb_launches.h, shared with the emulated build of the tests; cached on the
// device per parameter list, lamb_tensor_table.cuh, so only the step counts are
// copied, device to device where they live there) and the launch: cooperative
// when the device allows it, else three ordinary launches on the same stream,
// one where no group needs a per-tensor sum (launch_plan.h).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <mutex>
#include <vector>

#include "../dispatch.h"
#include "../lamb_args.h"
#include "../lamb_buckets.h"
#include "../lamb_op_entry_points.h"
#include "../launch_config.h"
#include "../status.h"
#include "lamb_kernel.cuh"
#include "lamb_launches.h"
#include "lamb_tensor_table.cuh"
#include "launch_plan.h"

namespace lars_cuda {
namespace cuda_impl {
namespace {

template <typename P>
int lamb_cooperative_grid(int device) {
  // Blocks that can be co-resident, per device; 0 when cooperative launch is unsupported.
  static std::mutex mu;
  static std::vector<int> per_device;
  std::lock_guard<std::mutex> lock(mu);
  if (per_device.size() <= static_cast<size_t>(device)) per_device.resize(device + 1, -1);
  if (per_device[device] < 0) {
    int coop = 0, sms = 0, per_sm = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, lamb_kernel<P>, kThreads, 0));
    per_device[device] = coop ? sms * per_sm : 0;
  }
  return per_device[device];
}

template <typename P>
void launch_lamb(const LambTable& tab, const LambLaunchGroups& groups, const float* grad_scale,
                 const float* found_inf, const float* clip, int device, SumsIO io) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const LaunchConfig config = launch_config();
  const int coop_max = groups.any_sums && !config.force_three_kernel ? lamb_cooperative_grid<P>(device) : 0;
  const LaunchPlan plan = plan_launch(tab.n_chunks, groups.any_sums, io, config, sms, coop_max);
  if (plan.mode == LaunchPlan::kCooperative) {
    int phases = plan.phases[0];
    LambTable tab_arg = tab;
    LambLaunchGroups groups_arg = groups;
    SumsIO io_arg = io;
    void* args[] = {&tab_arg, &groups_arg, &grad_scale, &found_inf, &clip, &phases, &io_arg};
    C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(lamb_kernel<P>),
                                               dim3(static_cast<unsigned>(plan.grid)), dim3(kThreads), args, 0,
                                               stream));
  } else {
    for (int k = 0; k < plan.n_launches; ++k) {
      lamb_kernel<P><<<static_cast<unsigned>(plan.grid), kThreads, 0, stream>>>(tab, groups, grad_scale, found_inf,
                                                                               clip, plan.phases[k], io);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
  set_last_cuda_launch(plan.name);
}

// One call's launches: per launch of up to kMaxGroups groups and per dtype
// bucket, its cached table and the kernel (`io`: the sharded halves' sums).
void run_lamb_launches(const LambCall& call, const float* scale_ptr, const float* inf_ptr, const float* clip_ptr,
                       SumsIO io, const char* op) {
  for_each_lamb_launch(call, [](const at::Tensor& lr) { return lr.is_cpu(); },
                       [&](const LambLaunchGroups& args, const LambBucket& b) {
                         if (io.out != nullptr && !args.any_sums) return;  // no sums to take here: zeros
                         const at::Device device = b.params[0].device();
                         const LambTable tab = get_lamb_table(b, args, lamb_step_counts(b, device), op);
                         dispatch_lars_type(b.dtype, "params", [&](auto p_tag) {
                           launch_lamb<decltype(p_tag)>(tab, args, scale_ptr, inf_ptr, clip_ptr, device.index(),
                                                        io);
                         });
                       });
}

void fused_lamb_groups_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                            at::TensorList exp_avg_sqs, at::TensorList state_steps, at::IntArrayRef group_sizes,
                            at::ArrayRef<double> hyper, at::IntArrayRef flags,
                            const c10::List<std::optional<at::Tensor>>& lr_tensors,
                            std::optional<double> max_grad_norm, const std::optional<at::Tensor>& grad_scale,
                            const std::optional<at::Tensor>& found_inf) {
  const LambCall call = parse_lamb_groups(params, grads, exp_avgs, exp_avg_sqs, state_steps, group_sizes, hyper,
                                          flags, lr_tensors, max_grad_norm, grad_scale, found_inf);
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(params[0].device());
  std::vector<at::Tensor> keep;
  const float* scale_ptr = float_ptr_or_null(grad_scale, keep);
  const float* inf_ptr = float_ptr_or_null(found_inf, keep);
  const std::optional<at::Tensor> clip = lamb_clip_factor(call, grad_scale);
  const float* clip_ptr = float_ptr_or_null(clip, keep);
  run_lamb_launches(call, scale_ptr, inf_ptr, clip_ptr, SumsIO{}, kLambGroupsOp);
}

// The sharded halves' run (lamb_op_entry_points.h): the launches with sums out or in.
void run_lamb_half_cuda(const LambCall& call, const std::optional<at::Tensor>& grad_scale, SumsIO io) {
  const c10::cuda::CUDAGuard guard(call.device);
  std::vector<at::Tensor> keep;
  run_lamb_launches(call, float_ptr_or_null(grad_scale, keep), nullptr, nullptr, io,
                    io.out != nullptr ? kLambNormsOp : kLambApplyOp);
}

at::Device lamb_sums_device(at::TensorList params) {
  return params.empty() ? at::Device(at::kCUDA, c10::cuda::current_device()) : params[0].device();
}

using CudaLambHalves = LambHalvesEntryPoints<&run_lamb_half_cuda, &lamb_sums_device>;

}  // namespace
}  // namespace cuda_impl

TORCH_LIBRARY_IMPL(lars_cuda, CUDA, m) {
  m.impl(kLambGroupsOp, &cuda_impl::fused_lamb_groups_cuda);
  m.impl(kLambNormsOp, &cuda_impl::CudaLambHalves::norms);
  m.impl(kLambApplyOp, &cuda_impl::CudaLambHalves::apply);
}

}  // namespace lars_cuda
