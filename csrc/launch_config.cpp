// The launch knobs, read once (launch_config.h).
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <mutex>
#include <string>

#include "launch_config.h"

namespace lars_cuda {

namespace {
// Atomics: a launch reads them without a lock while a reload may write them.
// (the defaults: LaunchConfig's, launch_config.h)
std::atomic<int64_t> wave_bytes{LaunchConfig{}.wave_bytes};
std::atomic<int64_t> blocks_per_sm{LaunchConfig{}.blocks_per_sm};
std::atomic<bool> force_three_kernel{false};
std::once_flag first_read;

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : nullptr;
}

void read_environment() {
  const char* wave = env("LARS_CUDA_WAVE_MB");
  wave_bytes = wave ? std::max<int64_t>(0, static_cast<int64_t>(std::atof(wave) * (1 << 20))) : LaunchConfig{}.wave_bytes;
  const char* per_sm = env("LARS_CUDA_BLOCKS_PER_SM");
  blocks_per_sm = per_sm ? std::max<int64_t>(1, std::atoi(per_sm)) : LaunchConfig{}.blocks_per_sm;
  const char* launch = env("LARS_CUDA_LAUNCH");
  force_three_kernel = launch != nullptr && std::string(launch) == "three-kernel";
}
}  // namespace

LaunchConfig launch_config() {
  std::call_once(first_read, read_environment);
  return LaunchConfig{wave_bytes.load(), blocks_per_sm.load(), force_three_kernel.load()};
}

void reload_launch_config() {
  std::call_once(first_read, [] {});
  read_environment();
}

}  // namespace lars_cuda
