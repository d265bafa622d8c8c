// One fused_lamb_groups_ call's tensors by dtype (lamb_buckets.h).
#include "lamb_buckets.h"

#include <algorithm>

namespace lars_cuda {

namespace {

// t itself where it is dense in pk's layout, else a copy in that layout (written
// back after the step where `written`).
at::Tensor in_layout_of(const at::Tensor& t, const at::Tensor& pk, bool written, LambBucket& b) {
  if (t.strides() == pk.strides() && t.is_non_overlapping_and_dense()) return t;
  at::Tensor copy = at::empty_like(pk).copy_(t);
  if (written) b.write_back.emplace_back(t, copy);
  return copy;
}

}  // namespace

void add_to_lamb_buckets(std::vector<LambBucket>& buckets, const LambGroupCall& g, size_t i, int64_t group,
                         int64_t index) {
  const at::Tensor& p = g.params[i];
  if (p.numel() == 0) return;
  auto it = std::find_if(buckets.begin(), buckets.end(), [&](const LambBucket& b) { return b.dtype == p.scalar_type(); });
  if (it == buckets.end()) {
    buckets.push_back(LambBucket{p.scalar_type(), {}, {}, {}, {}, {}, {}, {}, {}});
    it = buckets.end() - 1;
  }
  const bool dense = p.is_non_overlapping_and_dense();
  const at::Tensor pk = dense ? p : p.contiguous();
  if (!dense) it->write_back.emplace_back(p, pk);
  it->params.push_back(pk);
  it->grads.push_back(in_layout_of(g.grads[i], pk, false, *it));
  it->exp_avgs.push_back(in_layout_of(g.exp_avgs[i], pk, true, *it));
  it->exp_avg_sqs.push_back(in_layout_of(g.exp_avg_sqs[i], pk, true, *it));
  it->steps.push_back(g.steps[i]);
  it->group.push_back(group);
  it->index.push_back(index);
}

void finish_lamb_bucket(LambBucket& bucket) {
  for (auto& [dst, src] : bucket.write_back) dst.copy_(src);
  bucket.write_back.clear();
}

double lamb_lr(const LambGroupCall& g) { return g.lr_tensor.has_value() ? g.lr_tensor->item<double>() : g.lr; }

std::optional<at::Tensor> lamb_clip_factor(const LambCall& call, const std::optional<at::Tensor>& grad_scale) {
  if (!call.max_grad_norm.has_value()) return std::nullopt;
  std::vector<at::Tensor> grads;
  for (const LambGroupCall& g : call.groups)
    for (const at::Tensor& grad : g.grads)
      if (grad.numel() > 0) grads.push_back(grad);
  if (grads.empty()) return std::nullopt;
  at::Tensor total = at::linalg_vector_norm(at::stack(at::_foreach_norm(grads, 2, at::kFloat)), 2);
  if (grad_scale.has_value()) total = total / grad_scale->to(total.device(), at::kFloat);
  return (total / *call.max_grad_norm).clamp_min(1.0);
}

}  // namespace lars_cuda
