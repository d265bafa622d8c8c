// The CUDA backend of lars_cuda's ops with the emulator (emulator.h) in place
// of a GPU: the device code of csrc/cuda/ (kernel.cuh, traversal.cuh,
// device_table.cuh, csrc/lars.h) compiled unmodified by g++, and the host
// code's pure parts (group_launches.h, table_layout.h, launch_plan.h), on CPU
// tensors. Registered as torch.ops.lars_cuda_emulated.* with the schemas of
// torch.ops.lars_cuda.*, plus the emulated device's knobs.
//
// Left out (they call the CUDA runtime): the table cache and its pinned copy
// (tensor_table.cu), the occupancy query and the launches themselves
// (launch.cuh), streams and device guards, and the "has code for this card"
// probe (entry_points.cu). Here each launch gets a fresh table in host memory,
// its scratch (partials, steps) filled with NaN, each part its own allocation,
// so a sanitizer sees an access past any of them.
#include <torch/library.h>

#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cuda/group_launches.h"
#include "cuda/lamb_launches.h"
#include "cuda/launch_plan.h"
#include "cuda/table_layout.h"
#include "dispatch.h"
#include "lamb_op_entry_points.h"
#include "op_entry_points.h"
#include "op_schemas.h"
#include "emulator.h"

namespace lars_cuda {
namespace cuda_impl {
namespace {

// The emulated device: `grid` multiprocessors of one block each, cooperative
// launch supported or not, the wave size, the scheduling seed, where a tensor
// lr is read (host_lr: on the host, as a CPU lr beside CUDA params), and a fault to
// inject into the table (for the sanitizer tests): "", "read_past" (the last
// chunk of the last tensor one element longer), "partials_short" (one partial
// fewer than chunks), "misaligned" (every tensor marked 16-byte aligned).
struct Device {
  int64_t grid = 2;
  bool cooperative = true;
  int64_t wave_bytes = 0;
  uint64_t seed = 0;
  bool host_lr = false;  // a tensor lr read on the host (a CPU scalar beside device params), not by the kernel
  std::string fault;
  // What ran: the last plan's name and the launches since the last reset.
  std::string last = "none";
  int64_t launches = 0;
};

std::mutex device_mutex;
Device device;

// Each part of the table in an allocation of its exact size.
struct HostTable {
  std::vector<TensorRow> rows;
  std::vector<ChunkRow> chunks;
  std::vector<WaveRow> waves;
  std::unique_ptr<device_code::Sums3[]> partials;
  std::unique_ptr<TensorStep[]> steps;
  DeviceTable view;
};

// A copy of the device's settings (tests change them between calls).
Device current_device() {
  std::lock_guard<std::mutex> lock(device_mutex);
  return device;
}

void poison(void* p, size_t bytes) { std::memset(p, 0xff, bytes); }  // NaN in every float and double

// A scratch array of n elements filled with NaN (new of 0 elements is still a
// distinct allocation, so an access shows).
template <typename T>
std::unique_ptr<T[]> poisoned(int64_t n) {
  const size_t count = static_cast<size_t>(std::max<int64_t>(n, 0));
  std::unique_ptr<T[]> out(new T[count]);
  poison(out.get(), sizeof(T) * count);
  return out;
}

// The table faults a test can ask of the device: a chunk reading one element
// past its tensor, one partial too few, every tensor taken as 16-byte aligned.
template <typename Row>
int64_t apply_table_faults(const Device& d, std::vector<ChunkRow>& chunks, std::vector<Row>& rows) {
  int64_t n_partials = static_cast<int64_t>(chunks.size());
  if (d.fault == "read_past" && !chunks.empty()) chunks.back().end += 1;
  if (d.fault == "partials_short") n_partials -= 1;
  if (d.fault == "misaligned")
    for (Row& r : rows) r.vec_ok = 1;
  return n_partials;
}

// A bucket's launches as the CUDA backend plans them on device `d`, each running
// kernel(phases) on the emulator (a fault becomes a torch error); the device
// records the plan's name and its launch count.
template <typename Kernel>
void run_launches(const Device& d, int64_t n_chunks, bool any_sums, SumsIO io, const Kernel& kernel) {
  LaunchConfig config;
  config.blocks_per_sm = 1;
  config.force_three_kernel = !d.cooperative;
  const LaunchPlan plan = plan_launch(n_chunks, any_sums, io, config, d.grid, d.grid);
  const emu::LaunchKind kind =
      plan.mode == LaunchPlan::kCooperative ? emu::LaunchKind::kCooperative : emu::LaunchKind::kOrdinary;
  try {
    for (int k = 0; k < plan.n_launches; ++k) {
      const int phases = plan.phases[k];
      emu::launch(static_cast<unsigned>(plan.grid), kThreads, kind, [&] { kernel(phases); }, {d.seed});
    }
  } catch (const emu::Error& e) {
    TORCH_CHECK(false, "emulated CUDA kernel: ", e.what());
  }
  std::lock_guard<std::mutex> lock(device_mutex);
  device.last = plan.name;
  device.launches += plan.n_launches;
}

HostTable host_table(const Bucket& b, const Device& d) {
  TableLayout l = table_layout(b, d.wave_bytes);
  HostTable t;
  t.rows = std::move(l.rows);
  t.chunks = std::move(l.chunks);
  t.waves = std::move(l.waves);
  const int64_t n_partials = apply_table_faults(d, t.chunks, t.rows);
  t.partials = poisoned<device_code::Sums3>(n_partials);
  t.steps = poisoned<TensorStep>(static_cast<int64_t>(t.rows.size()));
  t.view = DeviceTable{t.rows.data(),       t.chunks.data(),
                       t.waves.data(),      t.partials.get(),
                       t.steps.get(),       static_cast<int64_t>(t.rows.size()),
                       static_cast<int64_t>(t.chunks.size()), static_cast<int64_t>(t.waves.size())};
  return t;
}

void run_groups_emulated(const std::vector<GroupCall>& groups, const std::optional<at::Tensor>& grad_scale,
                         const std::optional<at::Tensor>& found_inf, SumsIO io) {
  const Device d = current_device();
  std::vector<at::Tensor> keep;
  const float* scale_ptr = float_ptr_or_null(grad_scale, keep);
  const float* inf_ptr = float_ptr_or_null(found_inf, keep);
  // Every tensor here is "device memory": a tensor lr is read by the kernel, as on a
  // GPU, unless the device is told to take it as a host value.
  for_each_launch(groups, io, [&](const at::Tensor&) { return d.host_lr; },
                  [&](const LaunchGroups& args, const Bucket& b) {
                    const HostTable table = host_table(b, d);
                    dispatch_lars_type(b.p_type, "params", [&](auto p_tag) {
                      using P = decltype(p_tag);
                      dispatch_lars_type(b.g_type, "grads", [&](auto g_tag) {
                        using G = decltype(g_tag);
                        // The kernel's arguments, by value per thread as a launch passes them.
                        run_launches(d, table.view.n_chunks, args.any_lars, io, [&](int phases) {
                          lars_kernel<P, G>(table.view, args, scale_ptr, inf_ptr, phases, io);
                        });
                      });
                    });
                  });
}

// ---- LAMB (csrc/cuda/lamb_kernel.cuh) ----

// A LAMB bucket's table in host memory, each part its own allocation, the
// kernel's scratch (partials, steps) filled with NaN.
struct LambHostTable {
  std::vector<LambRow> rows;
  std::vector<ChunkRow> chunks;
  std::unique_ptr<LambSums4[]> partials;
  std::unique_ptr<LambStep[]> steps;
  LambTable view;
};

LambHostTable lamb_host_table(const LambBucket& b, const LambLaunchGroups& groups, const float* counts,
                              const Device& d) {
  LambTableLayout l = lamb_table_layout(b, groups, counts);
  LambHostTable t;
  t.rows = std::move(l.rows);
  t.chunks = std::move(l.chunks);
  const int64_t n_partials = apply_table_faults(d, t.chunks, t.rows);
  t.partials = poisoned<LambSums4>(n_partials);
  t.steps = poisoned<LambStep>(static_cast<int64_t>(t.rows.size()));
  t.view = LambTable{t.rows.data(), t.chunks.data(), t.partials.get(), t.steps.get(),
                     static_cast<int64_t>(t.rows.size()), static_cast<int64_t>(t.chunks.size())};
  return t;
}

// A call's launches, as the CUDA backend's run_lamb_launches (`io`: the sharded halves' sums).
void run_lamb_emulated(const LambCall& call, const float* scale_ptr, const float* inf_ptr, const float* clip_ptr,
                       SumsIO io) {
  const Device d = current_device();
  for_each_lamb_launch(call, [&](const at::Tensor&) { return d.host_lr; },
                       [&](const LambLaunchGroups& args, const LambBucket& b) {
                         if (io.out != nullptr && !args.any_sums) return;  // no sums to take here: zeros
                         const at::Tensor counts = lamb_step_counts(b, at::Device(at::kCPU));
                         const LambHostTable table = lamb_host_table(b, args, counts.const_data_ptr<float>(), d);
                         dispatch_lars_type(b.dtype, "params", [&](auto p_tag) {
                           using P = decltype(p_tag);
                           run_launches(d, table.view.n_chunks, args.any_sums, io, [&](int phases) {
                             lamb_kernel<P>(table.view, args, scale_ptr, inf_ptr, clip_ptr, phases, io);
                           });
                         });
                       });
}

void fused_lamb_groups_emulated(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                                at::TensorList exp_avg_sqs, at::TensorList state_steps, at::IntArrayRef group_sizes,
                                at::ArrayRef<double> hyper, at::IntArrayRef flags,
                                const c10::List<std::optional<at::Tensor>>& lr_tensors,
                                std::optional<double> max_grad_norm, const std::optional<at::Tensor>& grad_scale,
                                const std::optional<at::Tensor>& found_inf) {
  const LambCall call = parse_lamb_groups(params, grads, exp_avgs, exp_avg_sqs, state_steps, group_sizes, hyper,
                                          flags, lr_tensors, max_grad_norm, grad_scale, found_inf);
  std::vector<at::Tensor> keep;
  const float* scale_ptr = float_ptr_or_null(grad_scale, keep);
  const float* inf_ptr = float_ptr_or_null(found_inf, keep);
  // The clip as the CUDA backend takes it: ATen ops on the "device" before the launches.
  const std::optional<at::Tensor> clip = lamb_clip_factor(call, grad_scale);
  run_lamb_emulated(call, scale_ptr, inf_ptr, float_ptr_or_null(clip, keep), SumsIO{});
}

// The sharded halves' run (lamb_op_entry_points.h), as the CUDA backend's.
void run_lamb_half_emulated(const LambCall& call, const std::optional<at::Tensor>& grad_scale, SumsIO io) {
  std::vector<at::Tensor> keep;
  run_lamb_emulated(call, float_ptr_or_null(grad_scale, keep), nullptr, nullptr, io);
}

at::Device emulated_sums_device(at::TensorList) { return at::Device(at::kCPU); }

using EmulatedOps = OpEntryPoints<&run_groups_emulated, &emulated_sums_device>;
using EmulatedLambHalves = LambHalvesEntryPoints<&run_lamb_half_emulated, &emulated_sums_device>;

void configure(int64_t grid, bool cooperative, double wave_mb, int64_t seed, std::string fault, bool host_lr) {
  TORCH_CHECK_VALUE(grid >= 1, "configure: grid must be at least 1, got ", grid);
  TORCH_CHECK_VALUE(fault.empty() || fault == "read_past" || fault == "partials_short" || fault == "misaligned",
                    "configure: unknown fault ", fault);
  std::lock_guard<std::mutex> lock(device_mutex);
  device.grid = grid;
  device.cooperative = cooperative;
  device.wave_bytes = static_cast<int64_t>(wave_mb * (1 << 20));
  device.seed = static_cast<uint64_t>(seed);
  device.host_lr = host_lr;
  device.fault = std::move(fault);
  device.last = "none";
  device.launches = 0;
}

std::string last_launch() {
  std::lock_guard<std::mutex> lock(device_mutex);
  return device.last;
}

int64_t launches() {
  std::lock_guard<std::mutex> lock(device_mutex);
  return device.launches;
}

}  // namespace
}  // namespace cuda_impl

TORCH_LIBRARY(lars_cuda_emulated, m) {
  m.def(kGroupsSchema);
  m.def(kNormsSchema);
  m.def(kApplySchema);
  m.def(kLambGroupsSchema);
  m.def(kLambNormsSchema);
  m.def(kLambApplySchema);
  m.def("configure(int grid, bool cooperative, float wave_mb, int seed, str fault, bool host_lr=False) -> ()",
        &cuda_impl::configure);
  m.def("last_launch() -> str", &cuda_impl::last_launch);
  m.def("launches() -> int", &cuda_impl::launches);
}

TORCH_LIBRARY_IMPL(lars_cuda_emulated, CPU, m) {
  m.impl(kGroupsOp, &cuda_impl::EmulatedOps::groups);
  m.impl(kNormsOp, &cuda_impl::EmulatedOps::norms);
  m.impl(kApplyOp, &cuda_impl::EmulatedOps::apply);
  m.impl(kLambGroupsOp, &cuda_impl::fused_lamb_groups_emulated);
  m.impl(kLambNormsOp, &cuda_impl::EmulatedLambHalves::norms);
  m.impl(kLambApplyOp, &cuda_impl::EmulatedLambHalves::apply);
}

}  // namespace lars_cuda
