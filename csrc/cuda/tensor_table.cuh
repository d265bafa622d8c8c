// The tensor table of a bucket on the device, cached per parameter list (so a
// steady-state step does no host-to-device copy) and never evicted once a CUDA
// graph captured it.
#pragma once

#include <cstdint>

#include "../buckets.h"
#include "device_table.cuh"

namespace lars_cuda {
namespace cuda_impl {

// The bucket's table, built (one asynchronous copy from pinned memory) or found;
// `wave_bytes` 0 is one wave. Throws (naming `op`) if it would have to be built
// during capture.
DeviceTable get_table(const Bucket& b, int64_t wave_bytes, const char* op);

}  // namespace cuda_impl
}  // namespace lars_cuda
