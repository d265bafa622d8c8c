"""Lamb's fused path: the compiled op ``lars_cuda::fused_lamb_groups_`` (the CPU
kernel; csrc/lamb.h, csrc/cpu/lamb_cpu_kernel.h) against the float64 oracle on
every switch, every group of a step in one call, its argument checks (before any
write), GradScaler's scale and inf flag, strided tensors, and the op's schema."""

from __future__ import annotations

import copy

import pytest
import torch

from lars_cuda import Lamb, compat, ops
from lars_cuda.lamb_functional import fused_lamb, lamb, multi_tensor_lamb
from lars_cuda.lamb_options import LambOptions

from .test_lamb import LR, STEPS, SWITCHES, oracle, tensors, train

pytestmark = pytest.mark.skipif(not ops.has_fused("cpu"), reason="lars_cuda's compiled extension is not built")

FUSED = dict(fused=True)


def op_lists(dtype=torch.float32, seed=0, shapes=((5, 4), (7,), (3, 2, 2)), step=3.0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    grads = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    exp_avgs = [(torch.randn(s, generator=gen) * 0.1).to(dtype) for s in shapes]
    exp_avg_sqs = [(torch.rand(s, generator=gen) * 0.01).to(dtype) for s in shapes]
    steps = [torch.tensor(step) for _ in shapes]
    return [params, grads, exp_avgs, exp_avg_sqs, steps]


def op_args(lists, options=None, max_grad_norm=1.0, grad_scale=None, found_inf=None):
    """fused_lamb_groups_'s positional arguments for one group, packed by LambOptions."""
    o = options or LambOptions(lr=LR)
    return (*lists, [len(lists[0])], o.hyper_row(), [o.flags], [o.lr_tensor], max_grad_norm, grad_scale, found_inf)


def clones(lists):
    return [[t.clone() for t in ts] for ts in lists]


# ---- the math ------------------------------------------------------------------------------

@pytest.mark.parametrize("switch", SWITCHES)
def test_the_kernel_steps_float32_as_the_float64_oracle(switch):
    kw, oracle_kw = SWITCHES[switch]
    params, grads = tensors(dtype=torch.float32)
    want, moments = oracle(params, grads, oracle_kw, max_grad_norm=kw.get("max_grad_norm", 1.0))
    got, opt = train(lambda ps: Lamb(ps, lr=LR, **kw, **FUSED), params, grads)
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a.detach().double(), b, rtol=2e-5, atol=2e-6, msg=f"param {i}")
        torch.testing.assert_close(opt.state[a]["exp_avg"].double(), moments[i][0], rtol=2e-5, atol=2e-6)
        torch.testing.assert_close(opt.state[a]["exp_avg_sq"].double(), moments[i][1], rtol=2e-5, atol=2e-6)
        assert opt.state[a]["step"] == STEPS


@pytest.mark.parametrize("switch", ["defaults", "caution", "decoupled decay", "decay in the gradient"])
def test_the_kernel_steps_long_tensors_as_foreach(switch):
    """Tensors of several chunks (16384 elements) and a vector-width tail: the vector
    loops, the chunked sums and the scalar tail all take part."""
    kw, _ = SWITCHES[switch]
    gen = torch.Generator().manual_seed(1)
    params = [torch.randn(s, generator=gen) for s in [(40000,), (129, 257), (3,)]]
    grads = [[torch.randn(p.shape, generator=gen) for p in params] for _ in range(2)]
    want, _ = train(lambda ps: Lamb(ps, lr=LR, **kw, foreach=True), params, grads, steps=2)
    got, _ = train(lambda ps: Lamb(ps, lr=LR, **kw, **FUSED), params, grads, steps=2)
    for a, b in zip(got, want):
        # atol: where g + wd*p nearly cancels, u = m/(sqrt(v) + eps) turns a rounding of g
        # into a relative change of u; the step moves p by at most lr*r*|u| ~ 1e-2.
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_kernel_step_is_the_float32_step_rounded(dtype):
    """Moments in the param dtype, arithmetic in float32: the half-precision step is
    the float32 step rounded (to one unit in the last place: the norms' vector lanes
    may add in another order)."""
    params, grads = tensors(dtype=torch.float32)
    params = [p.to(dtype).float() for p in params]
    grads = [[g.to(dtype).float() for g in gs] for gs in grads]
    want, want_opt = train(lambda ps: Lamb(ps, lr=LR, **FUSED), params, grads, steps=1)
    got, opt = train(lambda ps: Lamb(ps, lr=LR, **FUSED), [p.to(dtype) for p in params],
                     [[g.to(dtype) for g in gs] for gs in grads], steps=1)
    ulp = torch.finfo(dtype).eps
    for a, b in zip(got, want):
        assert a.dtype == dtype and opt.state[a]["exp_avg"].dtype == dtype
        torch.testing.assert_close(a.detach().float(), b.detach().to(dtype).float(), rtol=ulp, atol=1e-6)
        torch.testing.assert_close(opt.state[a]["exp_avg"].float(),
                                   want_opt.state[b]["exp_avg"].to(dtype).float(), rtol=0, atol=0)


def test_maximize_in_the_kernel_steps_as_minimising_the_negated_gradient():
    params, grads = tensors(dtype=torch.float32)
    want, _ = train(lambda ps: Lamb(ps, lr=LR, **FUSED), params, [[-g for g in gs] for gs in grads])
    got, _ = train(lambda ps: Lamb(ps, lr=LR, maximize=True, **FUSED), params, grads)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=0)


def test_every_group_of_a_step_is_one_kernel_call_with_one_global_clip(monkeypatch):
    calls = []
    real = ops.fused_lamb_groups_
    monkeypatch.setattr(ops, "fused_lamb_groups_", lambda *a: calls.append(a[5]) or real(*a))
    params, grads = tensors(dtype=torch.float32)
    groups = lambda ps: [dict(params=ps[:2], weight_decay=0.0), dict(params=ps[2:3], caution=True),  # noqa: E731
                         dict(params=ps[3:], lr=2 * LR, decay_mode="grad")]
    got, _ = train(lambda ps: Lamb(groups(ps), lr=LR, max_grad_norm=0.5, **FUSED), params, grads)
    want, _ = train(lambda ps: Lamb(groups(ps), lr=LR, max_grad_norm=0.5, foreach=True), params, grads)
    assert calls == [[2, 1, 1]] * STEPS  # one call per step, every group in it
    for a, b in zip(got, want):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)


def test_a_group_off_the_kernel_shares_the_global_clip_with_the_kernels_groups():
    """A float64 group runs foreach; the clip is computed once over every grad of the
    step and handed to the kernel, which divides the grads by it."""
    params, grads = tensors(dtype=torch.float32)
    params[2:] = [p.double() for p in params[2:]]
    grads = [gs[:2] + [g.double() for g in gs[2:]] for gs in grads]
    got, _ = train(lambda ps: Lamb([dict(params=ps[:2], fused=True), dict(params=ps[2:])], lr=LR,
                                   max_grad_norm=0.5), params, grads)
    want, _ = train(lambda ps: Lamb([dict(params=ps[:2]), dict(params=ps[2:])], lr=LR, max_grad_norm=0.5,
                                    foreach=True), params, grads)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)


def test_a_tensor_lr_in_the_kernel_steps_like_the_float():
    params, grads = tensors(dtype=torch.float32)
    want, _ = train(lambda ps: Lamb(ps, lr=LR, **FUSED), params, grads)
    got, _ = train(lambda ps: Lamb(ps, lr=torch.tensor(LR), **FUSED), params, grads)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=0)


def test_a_param_added_later_counts_its_own_steps_in_the_kernel():
    params, grads = tensors(dtype=torch.float32)
    results = []
    for path in (FUSED, dict(foreach=True)):
        ps = [torch.nn.Parameter(p.clone()) for p in params]
        opt = Lamb(ps[:2], lr=LR, **path)
        for t in range(STEPS):
            if t == 2:
                opt.add_param_group(dict(params=ps[2:]))
            for p, g in zip(ps, grads[t]):
                p.grad = g.clone()
            opt.step()
        assert [float(opt.state[p]["step"]) for p in ps] == [4, 4, 2, 2]
        results.append([p.detach() for p in ps])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_strided_params_and_channels_last_grads_step_as_contiguous_ones():
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(6, 8, generator=gen)
    conv = torch.randn(4, 3, 5, 5, generator=gen).to(memory_format=torch.channels_last)
    g_view, g_conv = torch.randn(6, 4, generator=gen), torch.randn(4, 3, 5, 5, generator=gen)  # contiguous grads

    def run(path):
        p_conv = torch.nn.Parameter(conv.clone())
        leaf = torch.nn.Parameter(base.clone()[:, ::2])  # a strided param
        opt = Lamb([p_conv, leaf], lr=LR, **path)
        p_conv.grad, leaf.grad = g_conv.clone(), g_view.clone()
        opt.step()
        assert p_conv.is_contiguous(memory_format=torch.channels_last)
        return p_conv.detach(), leaf.detach()
    for a, b in zip(run(FUSED), run(dict(foreach=True))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_strided_view_stepped_in_place_by_the_op_is_written_back():
    holder = torch.randn(6, 8)
    view = holder[:, ::2]
    lists = op_lists(shapes=((6, 4),))
    lists[0] = [view]
    want = clones(lists)
    want[0] = [view.clone()]
    torch.ops.lars_cuda.fused_lamb_groups_(*op_args(want))
    torch.ops.lars_cuda.fused_lamb_groups_(*op_args(lists))
    torch.testing.assert_close(holder[:, ::2], want[0][0], rtol=0, atol=0)


def test_the_same_inputs_give_the_same_bits_on_any_thread_count():
    lists = op_lists(shapes=((70000,), (300, 7)))
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            run = clones(lists)
            torch.ops.lars_cuda.fused_lamb_groups_(*op_args(run))
            results.append(run)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


# ---- GradScaler ----------------------------------------------------------------------------

def test_gradscaler_hands_its_scale_to_the_kernel_and_leaves_the_grads_scaled():
    # (no clipping and a large eps: the step would change with the scale left in the grads)
    kw = dict(max_grad_norm=None, eps=0.1, **FUSED)
    params, grads = tensors(dtype=torch.float32)
    want, _ = train(lambda ps: Lamb(ps, lr=LR, **kw), params, grads, steps=1)
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = Lamb(ps, lr=LR, **kw)
    assert opt._step_supports_amp_scaling
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    scaler.scale(sum((p * g).sum() for p, g in zip(ps, grads[0]))).backward()
    scaler.step(opt)
    scaler.update()
    torch.testing.assert_close(ps[0].grad, grads[0][0] * 256.0)  # not unscaled on the host
    assert float(opt.last_grad_scale) == 256.0
    for a, b in zip(ps, want):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-7)


def test_an_inf_found_by_gradscaler_skips_the_kernel_step_and_its_count():
    params, grads = tensors(dtype=torch.float32)
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = Lamb(ps, lr=LR, **FUSED)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    scaler.scale(sum((p * g).sum() for p, g in zip(ps, grads[0]))).backward()
    ps[0].grad[0, 0] = float("inf")
    before = [p.detach().clone() for p in ps]
    scaler.step(opt)
    assert all(torch.equal(a, p.detach()) for a, p in zip(before, ps))
    assert all(float(opt.state[p]["step"]) == 0 for p in ps)
    assert all(torch.count_nonzero(opt.state[p]["exp_avg"]) == 0 for p in ps)


def test_a_group_off_the_kernel_makes_gradscaler_unscale_on_the_host():
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    q = torch.nn.Parameter(torch.ones(3))
    p.grad, q.grad = torch.ones(3, dtype=torch.float64), torch.ones(3)
    assert Lamb([q])._step_supports_amp_scaling
    assert not Lamb([dict(params=[p]), dict(params=[q])])._step_supports_amp_scaling
    assert not Lamb([q], foreach=True)._step_supports_amp_scaling


# ---- the functional API and the drop-in classes --------------------------------------------

def test_the_functional_lamb_runs_the_kernel_when_fused():
    lists = op_lists()
    want = clones(lists)
    o = LambOptions(lr=LR, caution=True)
    multi_tensor_lamb(*want, o, clip=None)
    lamb(*lists, lr=LR, caution=True, fused=True)
    for a, b in zip(lists[:4], want[:4]):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_fused_lamb_hands_found_inf_to_the_kernel():
    lists = op_lists()
    untouched = clones(lists)
    fused_lamb([(lists, LambOptions(lr=LR))], found_inf=torch.tensor(1.0))
    assert all(torch.equal(a, b) for x, y in zip(lists, untouched) for a, b in zip(x, y))


def test_fused_lamb_takes_step_counts_as_numbers():
    lists = op_lists(step=3.0)
    want = clones(lists)
    fused_lamb([(want, LambOptions(lr=LR))])
    lists[4] = [3, 3.0, 3]
    fused_lamb([(lists, LambOptions(lr=LR))])
    for a, b in zip(lists[0], want[0]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_fused_lamb_refuses_a_precomputed_clip_beside_a_scale():
    with pytest.raises(ValueError, match="^fused_lamb: a precomputed clip comes without grad_scale and max_grad_norm$"):
        fused_lamb([(op_lists(), LambOptions(lr=LR))], clip=torch.tensor(2.0), grad_scale=torch.tensor(4.0))


@pytest.mark.parametrize("cls", [compat.TimmLamb, compat.FusedLAMB])
def test_the_drop_in_classes_run_the_kernel_by_default(cls, monkeypatch):
    calls = []
    real = ops.fused_lamb_groups_
    monkeypatch.setattr(ops, "fused_lamb_groups_", lambda *a: calls.append(1) or real(*a))
    params, grads = tensors(dtype=torch.float32)
    got, _ = train(lambda ps: cls(ps, lr=LR), params, grads)
    want, _ = train(lambda ps: cls(ps, lr=LR, foreach=True), params, grads)
    assert len(calls) == STEPS
    for a, b in zip(got, want):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)


# ---- choosing the path, and refusals ------------------------------------------------------

def test_fused_and_foreach_together_are_refused():
    with pytest.raises(ValueError, match="foreach and fused cannot both be True"):
        Lamb([torch.nn.Parameter(torch.ones(2))], foreach=True, fused=True)


def test_fused_float64_params_are_refused_naming_the_dtype():
    p = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    p.grad = torch.ones(2, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"fused Lamb steps float32, float16 and bfloat16 params, got "
                                        r"\['torch.float64'\]"):
        Lamb([p], fused=True).step()
    assert torch.equal(p.detach(), torch.ones(2, dtype=torch.float64))


def test_fused_must_be_a_bool_or_none():
    with pytest.raises(TypeError, match="fused"):
        Lamb([torch.nn.Parameter(torch.ones(2))], fused="yes")


# ---- the op: schema, fake, checks before any write -----------------------------------------

@pytest.mark.parametrize("with_scale", [False, True])
@pytest.mark.parametrize("max_grad_norm", [None, 0.5])
def test_opcheck_passes_for_the_lamb_op(with_scale, max_grad_norm):
    extra = dict(grad_scale=torch.tensor(4.0), found_inf=torch.tensor(0.0)) if with_scale else {}
    o = LambOptions(lr=torch.tensor(LR), caution=True)
    torch.library.opcheck(torch.ops.lars_cuda.fused_lamb_groups_.default,
                          op_args(op_lists(), o, max_grad_norm=max_grad_norm, **extra))


def _same_param_twice(lists):
    for k in range(4):
        lists[k][2] = lists[k][0] if k < 2 else lists[k][0].clone()


# A bad tensor past the first: the first (a good one) must be left unwritten.
BAD_CALLS = {
    "a step count of 0 with bias correction": (lambda l: l[4].__setitem__(1, torch.tensor(0.0)), ValueError,
                                               r"group 0: state_steps 1 holds 0"),
    "an exp_avg of another dtype": (lambda l: l[2].__setitem__(2, l[2][2].double()), TypeError,
                                    r"group 0: exp_avg 2 is Double but its param is Float"),
    "an exp_avg_sq of another shape": (lambda l: l[3].__setitem__(1, torch.zeros(3)), ValueError,
                                       r"group 0: exp_avg_sq 1 must match its param's device and shape"),
    "a grad of another dtype": (lambda l: l[1].__setitem__(1, l[1][1].half()), TypeError,
                                r"group 0: grad 1 is Half but its param is Float"),
    "a float64 param": (lambda l: [l[k].__setitem__(2, l[k][2].double()) for k in range(4)], TypeError,
                        r"group 0: param 2 must be float32, float16 or bfloat16"),
    "a param twice": (_same_param_twice, ValueError, r"group 0: param 2 appears twice in one call"),
    "a missing step count": (lambda l: l[4].pop(), ValueError, r"got 3 params, .* and 2 state_steps"),
}


@pytest.mark.parametrize("case", BAD_CALLS)
def test_a_bad_tensor_is_refused_before_any_write(case):
    change, error, message = BAD_CALLS[case]
    lists = op_lists(shapes=((5, 4), (7,), (5, 4)))
    change(lists)
    before = clones(lists)
    with pytest.raises(error, match=message):
        torch.ops.lars_cuda.fused_lamb_groups_(*op_args(lists))
    assert all(torch.equal(a, b) for x, y in zip(lists[:4], before[:4]) for a, b in zip(x[:1], y[:1]))


BAD_OPTIONS = {
    "beta1 of 1": (dict(beta1=1.0), r"beta1 must be in \[0, 1\)"),
    "a negative eps": (dict(eps=-1.0), r"invalid eps"),
    "a negative weight decay": (dict(weight_decay=-0.1), r"invalid weight_decay"),
    "an infinite lr": (dict(lr=float("inf")), r"invalid lr"),
    "a negative max_lr": (dict(max_lr=-1.0), r"invalid max_lr"),
}


@pytest.mark.parametrize("case", BAD_OPTIONS)
def test_a_bad_group_row_is_refused_naming_the_op_and_group(case):
    from lars_cuda.lamb_options import LAMB_HYPER_FIELDS

    change, message = BAD_OPTIONS[case]
    lists = op_lists()
    args = list(op_args(lists))
    row = dict(zip(LAMB_HYPER_FIELDS, args[6]))
    row.update(change)
    args[6] = [row[f] for f in LAMB_HYPER_FIELDS]
    before = clones(lists)
    with pytest.raises(ValueError, match=rf"fused_lamb_groups_: group 0.*{message}|fused_lamb_groups_: group 0 "
                                         rf"has an {message}"):
        torch.ops.lars_cuda.fused_lamb_groups_(*args)
    assert all(torch.equal(a, b) for a, b in zip(lists[0], before[0]))


def test_both_decay_bits_are_refused():
    from lars_cuda.lamb_options import LAMB_FLAG_BITS

    args = list(op_args(op_lists()))
    args[7] = [LAMB_FLAG_BITS["decay_grad"] | LAMB_FLAG_BITS["decay_decoupled"]]
    with pytest.raises(ValueError, match="enters the gradient or is decoupled, not both"):
        torch.ops.lars_cuda.fused_lamb_groups_(*args)


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan")])
def test_a_max_grad_norm_that_is_not_positive_is_refused(value):
    with pytest.raises(ValueError, match="max_grad_norm must be a positive number or None"):
        torch.ops.lars_cuda.fused_lamb_groups_(*op_args(op_lists(), max_grad_norm=value))


def test_sparse_tensors_are_refused_by_the_lamb_op():
    lists = op_lists()
    lists[0][0] = lists[0][0].to_sparse()
    with pytest.raises(TypeError, match="fused_lamb_groups_: sparse tensors are not supported"):
        torch.ops.lars_cuda.fused_lamb_groups_(*op_args(lists))


def test_found_inf_skips_the_op_and_grad_scale_divides_the_grads():
    lists = op_lists()
    untouched = clones(lists)
    torch.ops.lars_cuda.fused_lamb_groups_(*op_args(lists, found_inf=torch.tensor(1.0)))
    assert all(torch.equal(a, b) for x, y in zip(lists, untouched) for a, b in zip(x, y))
    want = clones(lists)
    torch.ops.lars_cuda.fused_lamb_groups_(*op_args(want, max_grad_norm=None))
    lists[1] = [g * 8 for g in lists[1]]
    torch.ops.lars_cuda.fused_lamb_groups_(*op_args(lists, max_grad_norm=None, grad_scale=torch.tensor(8.0)))
    for a, b in zip(lists[0], want[0]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---- an inf step (GradScaler's found_inf) -------------------------------------------------

def _inf_step(opt, found_inf, monkeypatch=None):
    """One step with GradScaler's attributes set, as GradScaler sets them on the fused
    path; with ``monkeypatch``, reading ``found_inf`` on the host fails the test."""
    opt.grad_scale, opt.found_inf = torch.tensor(1.0), found_inf
    if monkeypatch is not None:
        real_item = torch.Tensor.item

        def item(t):
            assert t is not found_inf, "found_inf was read on the host"
            return real_item(t)
        monkeypatch.setattr(torch.Tensor, "item", item)
    try:
        opt.step()
    finally:
        del opt.grad_scale, opt.found_inf
        if monkeypatch is not None:
            monkeypatch.undo()


def test_an_inf_step_on_the_kernel_path_is_skipped_on_the_device_and_its_counts_put_back(monkeypatch):
    params, grads = tensors(dtype=torch.float32)
    ps, opt = train(lambda q: Lamb(q, lr=LR, **FUSED), params, grads, steps=1)
    before = copy.deepcopy(opt.state_dict())
    values = [p.detach().clone() for p in ps]
    for p, g in zip(ps, grads[1]):
        p.grad = g.clone()
    _inf_step(opt, torch.tensor(1.0), monkeypatch)  # the host never reads found_inf here
    assert all(torch.equal(a, p.detach()) for a, p in zip(values, ps))
    after = opt.state_dict()["state"]
    for k, s in before["state"].items():
        assert all(torch.equal(s[key], after[k][key]) for key in ("step", "exp_avg", "exp_avg_sq"))
    _inf_step(opt, torch.tensor(0.0))  # the skipped step's grads again: the second step
    want, _ = train(lambda q: Lamb(q, lr=LR, **FUSED), params, grads, steps=2)
    for a, b in zip(ps, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_compat_class_skips_an_inf_step_and_keeps_its_group_count():
    # (timm's and apex's counts are per group, on the host: found_inf is read there.)
    params, grads = tensors(dtype=torch.float32)
    ps, opt = train(lambda q: compat.FusedLAMB(q, lr=LR, **FUSED), params, grads, steps=1)
    values = [p.detach().clone() for p in ps]
    for p, g in zip(ps, grads[1]):
        p.grad = g.clone()
    _inf_step(opt, torch.tensor(1.0))
    assert opt.param_groups[0]["step"] == 1
    assert all(torch.equal(a, p.detach()) for a, p in zip(values, ps))


def test_an_inf_step_with_a_group_off_the_kernel_path_is_skipped_on_the_host():
    params, grads = tensors(dtype=torch.float32)
    ps, opt = train(lambda q: Lamb([{"params": q[:2], "fused": True}, {"params": q[2:], "foreach": True}], lr=LR),
                    params, grads, steps=1)
    values = [p.detach().clone() for p in ps]
    for p, g in zip(ps, grads[1]):
        p.grad = g.clone()
    _inf_step(opt, torch.tensor(1.0))
    assert all(torch.equal(a, p.detach()) for a, p in zip(values, ps))
    assert all(float(opt.state[p]["step"]) == 1.0 for p in ps)


# ---- the sharded step's halves: fused_lamb_norms, fused_lamb_apply_ ---------------------------

def halves_args(lists, options=None, grad_scale=None):
    """fused_lamb_norms' arguments for one group (fused_lamb_apply_: the sums before grad_scale)."""
    return op_args(lists, options)[:9] + (grad_scale,)


def apply_args(lists, sums, options=None, grad_scale=None):
    return op_args(lists, options)[:9] + (sums, grad_scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("switch", SWITCHES)
def test_the_halves_with_their_own_rows_are_the_one_call_step(switch, dtype):
    # (Within an ulp, not bit for bit: the one-call kernel applies u from its scratch,
    # the apply half recomputes it, and g++ may contract a*b + c into an FMA in one
    # and not in the other; measured: 128 of 9000 caution float32 elements, 1 ulp.)
    kw = {k: v for k, v in SWITCHES[switch][0].items() if k != "max_grad_norm"}
    o = LambOptions(lr=LR, **kw)
    shapes = ((5, 4), (7,), (3, 2, 2), (9000,))  # (9000: two chunks)
    whole, lists = op_lists(dtype, shapes=shapes), op_lists(dtype, shapes=shapes)
    torch.ops.lars_cuda.fused_lamb_groups_(*op_args(whole, o, max_grad_norm=None))
    sums = torch.ops.lars_cuda.fused_lamb_norms(*halves_args(lists, o))
    torch.ops.lars_cuda.fused_lamb_apply_(*apply_args(lists, sums, o))
    ulp = torch.finfo(dtype).eps
    for k in (0, 2, 3):
        for a, b in zip(lists[k], whole[k]):
            torch.testing.assert_close(a, b, rtol=ulp, atol=1e-7 if k == 0 else 0)


def test_the_norms_are_the_rows_of_the_foreach_halves_and_write_nothing():
    from lars_cuda.lamb_functional import lamb_halves

    o = LambOptions(lr=LR, caution=True)
    lists = op_lists()
    before = clones(lists)
    sums = torch.ops.lars_cuda.fused_lamb_norms(*halves_args(lists, o))
    assert all(torch.equal(a, b) for x, y in zip(lists, before) for a, b in zip(x, y))
    rows = next(lamb_halves("foreach", *clones(lists), o, clip=None, sharded=True))
    torch.testing.assert_close(sums, rows, rtol=1e-5, atol=1e-5)  # (Σu·p: terms of both signs cancel)


def test_the_apply_takes_each_tensors_ratio_from_the_rows_it_is_given():
    o = LambOptions(lr=LR)
    start = op_lists()
    a, b = op_lists(), op_lists()
    sums = torch.ops.lars_cuda.fused_lamb_norms(*halves_args(a, o))
    torch.ops.lars_cuda.fused_lamb_apply_(*apply_args(a, sums, o))
    quadrupled = sums.clone()
    quadrupled[:, 0] *= 4  # ||p|| doubled: r doubled
    torch.ops.lars_cuda.fused_lamb_apply_(*apply_args(b, quadrupled, o))
    for p0, x, y in zip(start[0], a[0], b[0]):
        torch.testing.assert_close(y - p0, 2 * (x - p0), rtol=1e-4, atol=1e-6)


def test_the_halves_divide_the_grads_by_grad_scale():
    o = LambOptions(lr=LR, caution=True)
    plain, scaled = op_lists(), op_lists()
    scaled[1] = [g * 8 for g in scaled[1]]
    for lists, scale in ((plain, None), (scaled, torch.tensor(8.0))):
        sums = torch.ops.lars_cuda.fused_lamb_norms(*halves_args(lists, o, scale))
        torch.ops.lars_cuda.fused_lamb_apply_(*apply_args(lists, sums, o, scale))
    for a, b in zip(scaled[0], plain[0]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


BAD_SUMS = {
    "float32 sums": (lambda s: s.float(), TypeError, r"fused_lamb_apply_: sums must be float64, got Float"),
    "a row short": (lambda s: s[:-1], ValueError, r"fused_lamb_apply_: sums must have shape \[3, 5\]"),
    "four columns": (lambda s: s[:, :4], ValueError, r"fused_lamb_apply_: sums must have shape \[3, 5\]"),
}


@pytest.mark.parametrize("case", BAD_SUMS)
def test_bad_sums_are_refused_by_the_apply_before_any_write(case):
    change, error, message = BAD_SUMS[case]
    lists = op_lists()
    sums = torch.ops.lars_cuda.fused_lamb_norms(*halves_args(lists))
    before = clones(lists)
    with pytest.raises(error, match=message):
        torch.ops.lars_cuda.fused_lamb_apply_(*apply_args(lists, change(sums)))
    assert all(torch.equal(a, b) for x, y in zip(lists, before) for a, b in zip(x, y))


@pytest.mark.parametrize("op", ["fused_lamb_norms", "fused_lamb_apply_"])
def test_the_halves_refuse_a_bad_tensor_naming_themselves(op):
    lists = op_lists()
    lists[4][1] = torch.tensor(0.0)
    args = halves_args(lists) if op == "fused_lamb_norms" else apply_args(lists, torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match=rf"^{op}: group 0: state_steps 1 holds 0"):
        getattr(torch.ops.lars_cuda, op)(*args)


@pytest.mark.parametrize("op", ["fused_lamb_norms", "fused_lamb_apply_"])
def test_the_halves_refuse_sparse_tensors(op):
    lists = op_lists()
    lists[0][0] = lists[0][0].to_sparse()
    args = halves_args(lists) if op == "fused_lamb_norms" else apply_args(lists, torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match=f"{op}: sparse tensors are not supported"):
        getattr(torch.ops.lars_cuda, op)(*args)


@pytest.mark.parametrize("caution", [False, True])
def test_opcheck_passes_for_the_halves(caution):
    o = LambOptions(lr=torch.tensor(LR), caution=caution)
    torch.library.opcheck(torch.ops.lars_cuda.fused_lamb_norms.default,
                          halves_args(op_lists(), o, torch.tensor(2.0)))
    sums = torch.ops.lars_cuda.fused_lamb_norms(*halves_args(op_lists(), o))
    torch.library.opcheck(torch.ops.lars_cuda.fused_lamb_apply_.default,
                          apply_args(op_lists(), sums, o, torch.tensor(2.0)))


# ---- what a CUDA graph capture of a step needs (checked here on CPU tensors) ------------------

def _planned_after_one_step(make):
    params, grads = tensors(dtype=torch.float32)
    ps, opt = train(make, params, grads, steps=1)
    for p, g in zip(ps, grads[1]):
        p.grad = g.clone()
    planned = opt._plan()
    all_fused = all(path == "fused" for _, _, _, path in planned)
    return opt, planned, all_fused


def test_a_step_of_lamb_on_the_kernel_path_can_be_captured():
    opt, planned, all_fused = _planned_after_one_step(lambda q: Lamb(q, lr=LR, **FUSED))
    assert all_fused and opt._why_not_capturable(planned, all_fused) is None


def test_a_first_step_of_lamb_on_the_kernel_path_can_be_captured_too():
    # (as far as the optimizer goes: the kernel's table must be built before, by a step outside)
    params, grads = tensors(dtype=torch.float32)
    ps = [torch.nn.Parameter(p) for p in params]
    for p, g in zip(ps, grads[0]):
        p.grad = g
    opt = Lamb(ps, lr=LR, **FUSED)
    assert opt._why_not_capturable(opt._plan(), True) is None


NOT_CAPTURABLE = ("{}: a CUDA graph can capture a step only where every param group runs the fused kernel on one "
                  "device, unsharded, with its step counts in the state (lars_cuda.Lamb with fused=True; the compat "
                  "classes count steps per group on the host)")


def test_a_capture_is_refused_for_a_group_off_the_kernel_path():
    opt, planned, all_fused = _planned_after_one_step(lambda q: Lamb(q, lr=LR, foreach=True))
    assert opt._why_not_capturable(planned, all_fused) == NOT_CAPTURABLE.format("Lamb")


def test_a_capture_is_refused_for_a_compat_class_counting_per_group():
    opt, planned, all_fused = _planned_after_one_step(lambda q: compat.FusedLAMB(q, lr=LR, **FUSED))
    assert all_fused
    assert opt._why_not_capturable(planned, all_fused) == NOT_CAPTURABLE.format("FusedLAMB")


def test_a_capture_is_refused_for_a_step_count_off_the_params_device():
    opt, planned, all_fused = _planned_after_one_step(lambda q: Lamb(q, lr=LR, **FUSED))
    p = planned[0][2][1]
    opt.state[p]["step"] = torch.zeros((), device="meta")  # (a count on another device than its param's)
    assert opt._why_not_capturable(planned, all_fused) == (
        "Lamb: a CUDA graph can capture a step only with the step counts on the params' device; a count is on "
        "meta (a state loaded into a group without fused=True keeps them on the CPU): load it with fused=True, "
        "which places them on the device, before capturing")


@pytest.mark.parametrize("path,where", [("fused", "meta"), ("foreach", "cpu"), ("single", "cpu")])
def test_fresh_step_counts_live_on_the_params_device_on_the_kernel_path_and_on_the_cpu_elsewhere(path, where):
    # (a meta-device param stands in for a second device: the kernel path puts its count beside it)
    p = torch.nn.Parameter(torch.zeros(3, device="meta"))
    state = Lamb([p], lr=LR)._init_state([p], path)[0]
    assert state["step"].device.type == where and state["step"].dtype == torch.float32
    assert state["exp_avg"].device.type == "meta"


# ---- the kernel checks the layouts: a refused step puts back what it wrote before the call ----

def _stepped_and_fresh(make):
    """An optimizer over a stepped param and a fresh one (no state), with grads."""
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = make([a, b])
    a.grad = torch.ones(3)
    opt.step()
    a.grad, b.grad = torch.ones(3), torch.ones(2)
    return opt, a, b


def test_the_kernel_path_leaves_the_layout_checks_to_the_kernel(monkeypatch):
    from lars_cuda import lamb
    checked: list = []
    monkeypatch.setattr(lamb, "check_lamb_layouts", lambda *a: checked.append(a))
    opt, _, _ = _stepped_and_fresh(lambda q: Lamb(q, lr=LR, **FUSED))
    opt.step()
    assert checked == []


@pytest.mark.parametrize("make", [lambda q: Lamb(q, lr=LR, foreach=True), lambda q: compat.TimmLamb(q, lr=LR)],
                         ids=["foreach", "compat"])
def test_off_the_kernel_path_or_with_per_group_counts_the_step_checks_the_layouts_first(monkeypatch, make):
    from lars_cuda import lamb
    checked: list = []
    monkeypatch.setattr(lamb, "check_lamb_layouts", lambda *a: checked.append(a))
    opt, _, _ = _stepped_and_fresh(make)
    checked.clear()
    opt.step()
    assert len(checked) == 1


def test_a_refused_kernel_step_puts_back_the_counts_and_drops_the_states_it_created():
    opt, a, b = _stepped_and_fresh(lambda q: Lamb(q, lr=LR, **FUSED))
    c = torch.nn.Parameter(torch.ones(4))
    opt.add_param_group({"params": [c]})
    c.grad = torch.ones(4)
    opt.state[a]["exp_avg_sq"] = torch.zeros(3, dtype=torch.float64)  # refused by the kernel, named as elsewhere
    before = (a.detach().clone(), opt.state[a]["exp_avg"].clone(), opt.state[a]["step"].clone())
    with pytest.raises(ValueError, match=r"Lamb: exp_avg_sq of param 0 \(\(3,\), torch.float64, cpu\) does not "
                                         r"match it \(\(3,\), torch.float32, cpu\)"):
        opt.step()
    assert torch.equal(a.detach(), before[0]) and torch.equal(opt.state[a]["exp_avg"], before[1])
    assert torch.equal(opt.state[a]["step"], before[2]) and opt.state[a]["step"].item() == 1.0
    assert b not in opt.state and c not in opt.state


def test_a_kernel_refusal_that_is_no_layout_mismatch_is_raised_as_the_kernel_words_it():
    opt, a, _ = _stepped_and_fresh(lambda q: Lamb(q, lr=LR, **FUSED))
    opt.state[a]["step"] = torch.tensor([1.0, 1.0])  # (two counts: the kernel refuses it)
    with pytest.raises(ValueError, match="state_steps 0 must hold one element"):
        opt.step()
    assert torch.equal(opt.state[a]["step"], torch.tensor([1.0, 1.0]))
