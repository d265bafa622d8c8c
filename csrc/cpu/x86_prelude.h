// What the x86 builds of the CPU kernel (lars_cpu_avx2.cpp, lars_cpu_avx512.cpp)
// parse BEFORE their target pragma: the C++ standard library and ATen's
// non-vector headers. libstdc++ 13 marks std::allocator's members
// always_inline, and GCC 13 refuses to inline one parsed under the pragma into
// an implicitly defined destructor parsed without it ("target specific option
// mismatch"). Our headers (lars.h's element math) and ATen's vector headers come
// after the pragma, so they are compiled for the wider instruction set — parsing
// lars.h before it made the kernel 2x slower (measured).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Optional.h>

#include <algorithm>
#include <array>
#include <bitset>
#include <climits>
#include <cmath>
#include <complex>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <ostream>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>
