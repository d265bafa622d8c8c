// The backends' reports to Python (status.h).
#include <atomic>

#include "status.h"

namespace lars_cuda {

namespace {
// Written on the CUDA hot path, read by last_cuda_launch(): a pointer to a
// string literal, so an atomic store is the whole write (no lock, no race).
std::atomic<const char*>& last_launch() {
  static std::atomic<const char*> kind{"none"};
  return kind;
}
}  // namespace

void set_last_cuda_launch(const char* kind) { last_launch().store(kind, std::memory_order_relaxed); }
std::string last_cuda_launch() { return last_launch().load(std::memory_order_relaxed); }

CudaProbe& cuda_kernel_probe() {
  static CudaProbe probe = [](int64_t) { return false; };
  return probe;
}

}  // namespace lars_cuda
