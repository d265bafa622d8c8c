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
      TORCH_CHECK_TYPE(false, "fused_lars_: ", what, " must be float32, float16 or bfloat16, got ", t);
  }
}

}  // namespace lars_cuda
