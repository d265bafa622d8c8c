// Launching the kernel: one cooperative launch when the device allows it (the
// grid barriers separate the phases), else three ordinary launches on the same
// stream; one launch without LARS groups. The decisions are launch_plan.h's
// (pure host code, so the emulated build of the tests makes them too); the
// environment is read once (launch_config.h).
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <mutex>
#include <vector>

#include "../launch_config.h"
#include "../status.h"
#include "kernel.cuh"
#include "launch_plan.h"

namespace lars_cuda {
namespace cuda_impl {


template <typename P, typename G>
int cooperative_grid(int device) {
  // Blocks that can be co-resident, per device; 0 when cooperative launch is unsupported.
  static std::mutex mu;
  static std::vector<int> per_device;
  std::lock_guard<std::mutex> lock(mu);
  if (per_device.size() <= static_cast<size_t>(device)) per_device.resize(device + 1, -1);
  if (per_device[device] < 0) {
    int coop = 0, sms = 0, per_sm = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, lars_kernel<P, G>, kThreads, 0));
    per_device[device] = coop ? sms * per_sm : 0;
  }
  return per_device[device];
}

template <typename P, typename G>
void launch(const DeviceTable& tab, const LaunchGroups& groups, const float* grad_scale, const float* found_inf,
            int device, SumsIO io) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const LaunchConfig config = launch_config();
  const bool norms = groups.any_lars && io.in == nullptr;
  const int coop_max = norms && !config.force_three_kernel ? cooperative_grid<P, G>(device) : 0;
  const LaunchPlan plan = plan_launch(tab.n_chunks, groups.any_lars, io, config, sms, coop_max);
  if (plan.mode == LaunchPlan::kCooperative) {
    int phases = plan.phases[0];
    DeviceTable tab_arg = tab;
    LaunchGroups groups_arg = groups;
    SumsIO io_arg = io;
    void* args[] = {&tab_arg, &groups_arg, &grad_scale, &found_inf, &phases, &io_arg};
    C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(lars_kernel<P, G>),
                                               dim3(static_cast<unsigned>(plan.grid)), dim3(kThreads), args, 0,
                                               stream));
  } else {
    for (int k = 0; k < plan.n_launches; ++k) {
      lars_kernel<P, G><<<static_cast<unsigned>(plan.grid), kThreads, 0, stream>>>(tab, groups, grad_scale,
                                                                                    found_inf, plan.phases[k], io);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
  set_last_cuda_launch(plan.name);
}


}  // namespace cuda_impl
}  // namespace lars_cuda
