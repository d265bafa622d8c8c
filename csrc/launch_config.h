// The CUDA launch's tuning knobs, read from the environment once (at the first
// launch) instead of on every call; reload_launch_config() re-reads them (the
// op lars_cuda::reload_launch_config, for tests and benchmarks that change them
// in-process). Host code: compiled into every build, used by the CUDA one.
//   LARS_CUDA_LAUNCH=three-kernel   force the three-launch fallback
//   LARS_CUDA_WAVE_MB=N             the wave size (default 0: one wave)
//   LARS_CUDA_BLOCKS_PER_SM=N       cap the grid (default 8 blocks per SM)
#pragma once

#include <cstdint>

namespace lars_cuda {

struct LaunchConfig {
  int64_t wave_bytes = 0;  // params+grads per wave; 0: one wave
  int64_t blocks_per_sm = 8;
  bool force_three_kernel = false;
};

LaunchConfig launch_config();
void reload_launch_config();

}  // namespace lars_cuda
