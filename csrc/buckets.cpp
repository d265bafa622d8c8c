// Splitting one op call's tensors into dtype buckets (buckets.h).
#include <algorithm>

#include "buckets.h"

namespace lars_cuda {

void add_to_buckets(std::vector<Bucket>& buckets, at::TensorList params, at::TensorList grads, at::TensorList bufs,
                    int64_t group, int64_t first_index) {
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    if (p.numel() == 0) continue;
    const at::ScalarType pt = p.scalar_type(), gt = grads[i].scalar_type();
    auto it = std::find_if(buckets.begin(), buckets.end(),
                           [&](const Bucket& b) { return b.p_type == pt && b.g_type == gt; });
    if (it == buckets.end()) {
      buckets.push_back(Bucket{pt, gt, {}, {}, {}, {}, {}, {}});
      it = buckets.end() - 1;
    }
    // The kernels walk flat memory. A param that is not dense (a strided view)
    // is stepped in a contiguous copy, written back after the kernel; dense
    // params are used in place.
    const bool dense = p.is_non_overlapping_and_dense();
    const at::Tensor pk = dense ? p : p.contiguous();
    if (!dense) it->write_back.emplace_back(p, pk);
    it->params.push_back(pk);
    it->group.push_back(group);
    it->index.push_back(first_index + static_cast<int64_t>(i));
    // A grad laid out unlike its param (say a contiguous grad for a
    // channels_last param) is copied into the param's layout.
    it->grads.push_back(grads[i].strides() == pk.strides() ? grads[i] : at::empty_like(pk, gt).copy_(grads[i]));
    if (bufs.empty()) {
      it->bufs.emplace_back();  // undefined: no momentum in this group
    } else if (bufs[i].strides() == pk.strides()) {
      it->bufs.push_back(bufs[i]);
    } else {  // a buffer laid out unlike its param: stepped in the param's layout, written back
      at::Tensor mk = at::empty_like(pk).copy_(bufs[i]);
      it->write_back.emplace_back(bufs[i], mk);
      it->bufs.push_back(mk);
    }
  }
}

void finish_bucket(Bucket& bucket) {
  for (auto& [dst, src] : bucket.write_back) dst.copy_(src);
  bucket.write_back.clear();
}

}  // namespace lars_cuda
