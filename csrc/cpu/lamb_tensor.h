// One tensor of the CPU LAMB kernel's work list, as lamb_cpu.cpp hands it to a
// kernel build (lamb_cpu_kernel.h): dense memory of one dtype, its group's
// options and its own scalars (lamb.h).
#pragma once

#include <cstdint>

#include "../lamb.h"

namespace lars_cuda {

struct LambTensor {
  void* p;
  const void* g;
  void* m;  // exp_avg
  void* v;  // exp_avg_sq
  int64_t numel;
  const LambHyper* h;
  LambTensorCoeffs c;
  float lr;
  int64_t index;  // position in the op call's flat lists: the tensor's row of the sharded sums
  // A per-tensor sum is needed (trust ratio or caution): two passes around the norms.
  bool needs_sums() const { return h->adapt || h->caution; }
};

}  // namespace lars_cuda
