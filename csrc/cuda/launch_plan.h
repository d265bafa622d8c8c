// The launch's decisions, pure host C++ (no CUDA runtime call) so the emulated
// build (tests/cuda_emulator) makes them as the CUDA build does: which phases
// run in which launches, in which mode, on how many blocks.
#pragma once

#include <algorithm>
#include <cstdint>

#include "../group_args.h"
#include "../launch_config.h"
#include "device_table.cuh"

namespace lars_cuda {
namespace cuda_impl {

struct LaunchPlan {
  enum Mode { kSingle, kCooperative, kThreeKernel } mode;
  int64_t grid;      // blocks per launch
  int phases[3];     // each launch's phase bits (kPhase*, kGridSync)
  int n_launches;
  const char* name;  // what last_cuda_launch() reports
};

// `sms`: the device's multiprocessors; `coop_max`: the blocks a cooperative
// launch may hold at once (0: the device cannot launch cooperatively).
inline LaunchPlan plan_launch(int64_t n_chunks, bool any_lars, SumsIO io, const LaunchConfig& config, int64_t sms,
                              int64_t coop_max) {
  // LARS_CUDA_BLOCKS_PER_SM caps the grid (for tuning); by default as many
  // blocks as fit, which the cooperative launch caps again.
  const int64_t wanted = std::max<int64_t>(1, std::min<int64_t>(n_chunks, config.blocks_per_sm * sms));
  if (!any_lars || io.in != nullptr)  // no norms to take: the update alone
    return {LaunchPlan::kSingle, wanted, {kPhaseUpdate, 0, 0}, 1, "single"};
  // Sums out: the norm and ratio phases only.
  const int wanted_phases = io.out != nullptr ? kPhaseNorms | kPhaseRatios : kPhaseNorms | kPhaseRatios | kPhaseUpdate;
  // LARS_CUDA_LAUNCH=three-kernel forces the fallback (so the tests cover it).
  if (!config.force_three_kernel && coop_max > 0)
    return {LaunchPlan::kCooperative, std::min(wanted, coop_max), {wanted_phases | kGridSync, 0, 0}, 1,
            "cooperative"};
  LaunchPlan plan{LaunchPlan::kThreeKernel, wanted, {0, 0, 0}, 0, "three-kernel"};
  for (int phase : {kPhaseNorms, kPhaseRatios, kPhaseUpdate})
    if (wanted_phases & phase) plan.phases[plan.n_launches++] = phase;
  return plan;
}

}  // namespace cuda_impl
}  // namespace lars_cuda
