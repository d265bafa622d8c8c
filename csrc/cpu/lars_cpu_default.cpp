// The CPU kernel for any x86-64 (or other) CPU: ATen's portable Vectorized<float>.
#define LARS_CPU_NS cpu_default
#include "lars_cpu_kernel.h"
#include "lamb_cpu_kernel.h"
