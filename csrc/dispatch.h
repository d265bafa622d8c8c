// The dtype dispatch of the backends: the floating types the kernels step.
#pragma once

#include <ATen/ATen.h>

namespace lars_cuda {

// Calls f(P{}) for the supported floating types; the math is float32 for all.
template <typename F>
void dispatch_lars_type(at::ScalarType t, const char* what, F&& f) {
  switch (t) {
    case at::kFloat: f(float{}); break;
    case at::kHalf: f(at::Half{}); break;
    case at::kBFloat16: f(at::BFloat16{}); break;
    default:
      // (parse_groups refused every other dtype before any backend runs)
      TORCH_INTERNAL_ASSERT(false, what, " of dtype ", t, " reached a kernel");
  }
}

}  // namespace lars_cuda
