// LAMB's tensor table of a bucket on the device, cached per parameter list as
// LARS's (tensor_table.cuh, table_cache.h), with a region for the bucket's step
// counts that each call refreshes on the device: a steady-state step copies no
// table from the host, so it can be captured in a CUDA graph.
#pragma once

#include <ATen/ATen.h>

#include "../lamb_buckets.h"
#include "lamb_kernel.cuh"

namespace lars_cuda {
namespace cuda_impl {

// The bucket's table (built with one asynchronous copy from pinned memory, or
// found), its rows reading their step counts from the table's counts region,
// into which `counts` (one float32 per tensor, on the device) is copied on the
// current stream. Throws (naming `op`) if it would have to be built during capture.
LambTable get_lamb_table(const LambBucket& b, const LambLaunchGroups& groups, const at::Tensor& counts,
                         const char* op);

}  // namespace cuda_impl
}  // namespace lars_cuda
