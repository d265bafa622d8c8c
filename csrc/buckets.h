// Buckets: one op call's tensors split by (param dtype, grad dtype), so each
// kernel instantiation walks one bucket; the dense stand-ins of strided tensors.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace lars_cuda {

// The tensors of one group, split by (param dtype, grad dtype): each kernel
// instantiation walks one bucket. Zero-size tensors are left out; a grad whose
// strides differ from its param's is copied into the param's layout. A param
// that is not dense (a strided view), or whose buffer is laid out unlike it,
// is stepped in dense copies that finish_bucket() writes back.
struct Bucket {
  at::ScalarType p_type;
  at::ScalarType g_type;
  // bufs[i] is undefined for a param whose group has no momentum; group[i] is
  // the index of the param's group in the caller's list.
  std::vector<at::Tensor> params, grads, bufs;
  std::vector<int64_t> group;
  // index[i]: the tensor's position in the op call's flat list (its row of the
  // sharded step's sums tensor).
  std::vector<int64_t> index;
  std::vector<std::pair<at::Tensor, at::Tensor>> write_back;  // (destination, dense copy)
};
// Adds one group's tensors (bufs empty: no momentum) to the buckets, as group
// `group`, the first of them at position `first_index` of the call's list.
void add_to_buckets(std::vector<Bucket>& buckets, at::TensorList params, at::TensorList grads, at::TensorList bufs,
                    int64_t group, int64_t first_index = 0);
// Copies the dense stand-ins of non-dense params and buffers back (stream-ordered on CUDA).
void finish_bucket(Bucket& bucket);

}  // namespace lars_cuda
