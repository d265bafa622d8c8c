// The CUDA execution model on the CPU, for running our device code in the tests
// (README.md here says what it models and what it cannot).
//
// Each CUDA thread is a fiber (ucontext) with its own stack. The fibers of a
// block run on one OS thread, so a `static thread_local` is the block's
// __shared__ memory; every block has an OS thread of its own. Exactly one
// fiber of the whole grid runs at a time: a block runs until all of its
// threads wait (at a shuffle, __syncthreads or grid.sync()), then hands the
// baton to another block. That makes a launch deterministic for a given seed,
// and a missing barrier shows as a wrong result every time, not by luck.
//
//  * a warp leaves a shuffle when every lane of the mask stands at the same
//    call site (then the values are exchanged at once);
//  * a block leaves __syncthreads when every thread stands at the same one;
//  * the grid leaves grid.sync() when every thread of every block does
//    (cooperative launches only).
// Anything else that leaves no thread able to run (lanes of one shuffle at
// different sites, a thread that exited while others wait at a barrier, a
// grid.sync() in an ordinary launch) is what a GPU would hang or corrupt on:
// the launch stops and emu::Error names the file:line of each party. So does
// a 16-byte load or store from an address that is not 16-byte aligned.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>

namespace emu {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class LaunchKind { kOrdinary, kCooperative };

struct LaunchOptions {
  // 0: a fixed order (fibers by index, blocks by index, a block runs until it
  // cannot go on). Otherwise the seed of a random order of fibers and blocks,
  // and of random hand-overs between blocks at every barrier.
  uint64_t seed = 0;
};

// Runs `thread_body` once per thread of a grid of `grid` blocks of `block`
// threads; returns when every thread has returned. Throws emu::Error (and
// runs no further) on a divergent barrier, a deadlock or a misaligned access.
void launch(unsigned grid, unsigned block, LaunchKind kind, const std::function<void()>& thread_body,
            const LaunchOptions& options = {});

// The device code's side (include/cuda_runtime.h and include/cooperative_groups.h call these).
void shuffle_down(unsigned mask, const void* in, void* out, int size, unsigned delta, int width, const char* file,
                  int line);
void sync_block(const char* file, int line);
void sync_grid(const char* file, int line);
[[noreturn]] void fail(const std::string& what, const char* file, int line);

inline void check_aligned(const void* p, std::size_t bytes, const char* what, const char* file, int line) {
  if (reinterpret_cast<std::uintptr_t>(p) % bytes != 0)
    fail(std::string(what) + " of " + std::to_string(bytes) + " bytes from an address that is not " +
             std::to_string(bytes) + "-byte aligned",
         file, line);
}

}  // namespace emu
