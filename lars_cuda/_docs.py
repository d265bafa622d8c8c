"""Doc snippets shared by the optimizer class and the functional API (as
torch/optim/_docs): the math is stated once, here."""

MATH = r"""Per parameter ``p`` with gradient ``g`` (all arithmetic in float32 for
float32/float16/bfloat16 tensors, float64 for float64 ones, rounded once;
``g = -g`` first when ``maximize``)::

    if lars:  w = ||p||, n = ||g||
              r = eeta*w / (n + wd*w + eps)   if w > 0 and n > 0 else 1
              r = clamp(r, 0, trust_clip)
              d = g + wd*p
    else:     r = 1, d = g                     (no weight decay: the seed)
    d = clamp(d, -update_clip, update_clip)
    if momentum: buf = d (first step) | momentum*buf + d;  u = buf  (nesterov: d + momentum*buf)
    else:        u = d
    p = p - (lr*r) * u

The other flavours (``docs/semantics.md``; :mod:`lars_cuda.compat`) are switches
of the same step, all off by default: ``decay`` (weight decay in d; default:
exactly when ``lars``), ``ratio_on_grad`` (d = r*d before momentum, then
p -= lr*u: timm, LARC, SSL), ``norm_of_update`` (r = eeta*||p|| / ||g + wd*p||,
no eps: SSL), ``larc_clip`` (r = min(r/lr, 1)), ``zero_norm_skip`` (a zero norm
means no decay and no scaling: apex LARC), ``dampening`` (buf = momentum*buf +
(1-dampening)*d after a first step that copies d, as torch.optim.SGD), and per
group ``always_adapt=False`` (timm: no adaptation where weight_decay == 0),
``decay_filter`` / ``adaptation_filter`` (SSL: 1-D params without decay /
adaptation)."""
