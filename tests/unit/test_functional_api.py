"""``lars_cuda.functional``: the keyword API ``lars()`` steps exactly as ``Lars``
with the same options on each of its paths (every switch of every flavour), and
``create_buffers`` makes momentum buffers in the one way the contract says."""

from __future__ import annotations

import pytest
import torch

import lars_cuda
from lars_cuda import functional, ops
from lars_cuda.options import StepOptions

from ..support.reference import lars_step_f64

SHAPES = [(4, 3), (5,), (2, 2, 2), (1,)]
SEED = dict(lr=0.1, momentum=0.9, weight_decay=1e-2, eeta=0.05, epsilon=0.0, lars=True, nesterov=False,
            trust_clip=50.0, update_clip=10.0)
# One config per switch of the math (the flavours' settings), each off the seed's.
CONFIGS = {
    "seed": {},
    "no_momentum": dict(momentum=0.0),
    "nesterov": dict(nesterov=True),
    "maximize": dict(maximize=True),
    "epsilon": dict(epsilon=0.5),
    "lars_off": dict(lars=False),
    "no_clips": dict(trust_clip=None, update_clip=None),
    "tight_clips": dict(trust_clip=0.02, update_clip=0.05),
    "decay_off": dict(decay=False),
    "decay_without_lars": dict(lars=False, decay=True),
    "dampening": dict(dampening=0.3),
    "timm": dict(ratio_on_grad=True, dampening=0.1, trust_clip=1.0, update_clip=None),
    "ssl": dict(norm_of_update=True, trust_clip=None, update_clip=None),
    "larc": dict(larc_clip=True, zero_norm_skip=True, trust_clip=None, update_clip=None),
    "larc_clip_only": dict(larc_clip=True, trust_clip=None, update_clip=None),
    "larc_clip_lr_above_one": dict(larc_clip=True, lr=2.0, trust_clip=None, update_clip=None),
    "larc_lr_above_one": dict(larc_clip=True, zero_norm_skip=True, lr=2.0, trust_clip=None, update_clip=None),
    "tensor_lr": dict(lr=torch.tensor(0.1)),
}
PATHS = {"single": dict(), "foreach": dict(foreach=True), "fused": dict(fused=True)}


def _tensors(seed, dtype=torch.float32, zero=None):
    gen = torch.Generator().manual_seed(seed)
    ts = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in SHAPES]
    if zero is not None:
        ts[zero].zero_()  # a zero norm: the ratio's guards and LARC's skip
    return ts


def _params(dtype):
    return _tensors(0, dtype, zero=0)  # a zero weight ...


def _grads(step, dtype):
    return _tensors(10 + step, dtype, zero=1)  # ... and a zero gradient


def _functional_steps(options, path, dtype, steps=3):
    params = _params(dtype)
    bufs = [None] * len(params)
    for step in range(steps):
        functional.lars(params, _grads(step, dtype), bufs, **options, **PATHS[path])
    return params, bufs


def _optimizer_steps(options, path, dtype, steps=3):
    params = [torch.nn.Parameter(t) for t in _params(dtype)]
    group_only = {k: options[k] for k in ("lars",) if k in options}
    opt = lars_cuda.Lars([dict(params=params, **group_only)], **{k: v for k, v in options.items() if k != "lars"},
                         **({"foreach": False, "fused": False} if path == "single" else PATHS[path]))
    for step in range(steps):
        for p, g in zip(params, _grads(step, dtype)):
            p.grad = g
        opt.step()
    return [p.detach() for p in params], [opt.state[p].get("momentum_buffer") for p in params]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("config", CONFIGS)
def test_functional_lars_steps_as_the_optimizer_with_the_same_options(config, path, dtype):
    if path == "fused" and not ops.has_fused(torch.device("cpu")):
        pytest.skip("the compiled kernel is not built")
    if path == "fused" and dtype == torch.float64:
        pytest.skip("the kernel steps float32/16-bit tensors (Lars runs float64 on foreach)")
    options = {**SEED, **CONFIGS[config]}
    got_p, got_b = _functional_steps(options, path, dtype)
    want_p, want_b = _optimizer_steps(options, path, dtype)
    for g, w in zip(got_p, want_p):
        assert torch.equal(g, w)
    if options["momentum"] == 0:
        assert got_b == [None] * len(SHAPES) and want_b == [None] * len(SHAPES)
    else:
        for g, w in zip(got_b, want_b):
            assert torch.equal(g, w)


@pytest.mark.parametrize("path", PATHS)
def test_functional_lars_matches_the_float64_contract(path):
    p, g = torch.linspace(-1, 1, 6), torch.linspace(0.3, -0.7, 6)
    bufs = [None]
    for _ in range(2):
        functional.lars([p], [g], bufs, **SEED, **PATHS[path])
    want, want_b = torch.linspace(-1, 1, 6).double(), None
    for _ in range(2):
        want, want_b = lars_step_f64(want, g, want_b, **{k: v for k, v in SEED.items()})
    torch.testing.assert_close(p.double(), want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(bufs[0].double(), want_b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("path", PATHS)
def test_functional_lars_fills_missing_buffers_in_the_callers_list(path):
    params = _tensors(0)
    existing = torch.full_like(params[1], 0.5)
    bufs = [None, existing, None, None]
    functional.lars(params, _tensors(1), bufs, **SEED, **PATHS[path])
    assert bufs[1] is existing
    assert all(isinstance(b, torch.Tensor) and b.shape == p.shape for b, p in zip(bufs, params))


@pytest.mark.parametrize("path", PATHS)
def test_functional_lars_with_dampening_copies_d_into_a_fresh_buffer_and_damps_an_old_one(path):
    # torch.optim.SGD: buf = d on the first step, then buf = m*buf + (1-dampening)*d
    options = {**SEED, "lars": False, "weight_decay": 0.0, "update_clip": None, "dampening": 0.25}
    params = [torch.zeros(3), torch.zeros(3)]
    bufs = [None, torch.ones(3)]
    g = torch.tensor([1.0, 2.0, 4.0])
    functional.lars(params, [g.clone(), g.clone()], bufs, **options, **PATHS[path])
    torch.testing.assert_close(bufs[0], g)
    torch.testing.assert_close(bufs[1], 0.9 * torch.ones(3) + 0.75 * g)
    torch.testing.assert_close(params[0], -0.1 * g)
    torch.testing.assert_close(params[1], -0.1 * bufs[1])


def _sums(params, grads, scale_p2=1.0):
    """(p², g², g·p) rows as the sharded step's all-reduce gives them; ``scale_p2`` makes
    them differ from the tensors' own (as the global sums of a shard do)."""
    return torch.tensor([[scale_p2 * x.double().square().sum(), y.double().square().sum(),
                          (x.double() * y.double()).sum()] for x, y in zip(params, grads)])


def _mixed_dtypes(ts):
    return [t.double() if i % 2 else t for i, t in enumerate(ts)]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtypes", ["float32", "mixed"])
def test_functional_lars_takes_norms_from_given_sums(path, dtypes):
    # sums equal to the tensors' own give the step from the tensors; other sums are followed
    if path == "fused" and not ops.has_fused(torch.device("cpu")):
        pytest.skip("the compiled kernel is not built")
    if path == "fused" and dtypes == "mixed":
        pytest.skip("the kernel steps float32/16-bit tensors")
    convert = _mixed_dtypes if dtypes == "mixed" else list
    options = {**SEED, "momentum": 0.0, "update_clip": None}
    p, g = convert(_tensors(0)), convert(_tensors(1))
    a, b, c = ([t.clone() for t in p] for _ in range(3))
    functional.lars(a, g, [], **options, **PATHS[path])
    functional.lars(b, g, [], **options, **PATHS[path], sums=_sums(p, g))
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
    functional.lars(c, g, [], **options, **PATHS[path], sums=_sums(p, g, scale_p2=4.0))
    for x, y, gg in zip(p, c, g):
        w, n = 2 * x.double().norm(), gg.double().norm()
        r = 0.05 * w / (n + 0.01 * w)
        torch.testing.assert_close(y.double(), x.double() - 0.1 * r * (gg.double() + 0.01 * x.double()),
                                   rtol=1e-5, atol=1e-6)


_OLD_AND_FRESH = [None, torch.ones(5), None, torch.ones(1)]  # fresh and old buffers: two views under dampening


def _split_and_per_tensor(step_all, step_one, sums):
    """The same step in one call and tensor by tensor: the rows of ``sums`` must
    follow their tensors through every split of the one call."""
    p, g = _tensors(0), _tensors(1)
    a, b = [t.clone() for t in p], [t.clone() for t in p]
    bufs_a = [None if x is None else x.clone() for x in _OLD_AND_FRESH]
    bufs_b = [None if x is None else x.clone() for x in _OLD_AND_FRESH]
    step_all(a, g, bufs_a, sums)
    for i in range(len(p)):
        one = [bufs_b[i]]
        step_one(i, b[i:i + 1], g[i:i + 1], one, sums[i:i + 1])
        bufs_b[i] = one[0]
    for x, y in zip(a + bufs_a, b + bufs_b):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("path", PATHS)
def test_functional_lars_with_sums_and_dampening_keeps_each_tensor_s_row(path):
    if path == "fused" and not ops.has_fused(torch.device("cpu")):
        pytest.skip("the compiled kernel is not built")
    options = {**SEED, "dampening": 0.5, "update_clip": None}

    def step_all(params, grads, bufs, sums):
        functional.lars(params, grads, bufs, **options, **PATHS[path], sums=sums)
    _split_and_per_tensor(step_all, lambda i, *args: step_all(*args), _sums(_tensors(0), _tensors(1), 4.0))


@pytest.mark.skipif(not ops.has_fused(torch.device("cpu")), reason="the compiled kernel is not built")
def test_fused_lars_groups_with_sums_keeps_each_tensor_s_row_across_groups_and_views():
    # three groups (1, 2 and 1 tensors), each eeta its own, fresh and old buffers under dampening
    cuts, eetas = [(0, 1), (1, 3), (3, 4)], [0.05, 0.1, 0.15]
    group_of = [0, 1, 1, 2]
    options = dict(SEED, dampening=0.5)

    def step_all(params, grads, bufs, sums):
        groups = [(params[a:b], grads[a:b], bufs[a:b], dict(options, eeta=e)) for (a, b), e in zip(cuts, eetas)]
        functional.fused_lars_groups(groups, sums=sums)
        for (a, b), (_, _, part, _) in zip(cuts, groups):
            bufs[a:b] = part

    def step_one(i, params, grads, bufs, sums):
        functional.fused_lars_groups([(params, grads, bufs, dict(options, eeta=eetas[group_of[i]]))], sums=sums)
    _split_and_per_tensor(step_all, step_one, _sums(_tensors(0), _tensors(1), 4.0))


@pytest.mark.parametrize("path", ["single", "foreach"])
def test_functional_lars_runs_the_implementation_its_switches_name(path):
    from unittest import mock

    name = {"single": "single_tensor_lars", "foreach": "multi_tensor_lars"}
    with mock.patch.object(functional, name[path], wraps=getattr(functional, name[path])) as spy:
        functional.lars(_tensors(0), _tensors(1), [None] * 4, **SEED, **PATHS[path])
    assert spy.called


def test_functional_lars_takes_tuples_of_params_and_grads():
    p, g = _tensors(0), _tensors(1)
    a = [t.clone() for t in p]
    functional.lars(tuple(p), tuple(g), [None] * 4, **SEED, foreach=True)
    functional.lars(a, g, [None] * 4, **SEED, foreach=True)
    assert all(torch.equal(x, y) for x, y in zip(p, a))


@pytest.mark.skipif(not ops.has_fused(torch.device("cpu")), reason="the compiled kernel is not built")
def test_fused_lars_groups_steps_several_groups_as_one_call_each():
    opts = [dict(SEED), dict(SEED, lars=False, weight_decay=0.0), dict(SEED, momentum=0.0)]
    p, g = _tensors(0), _tensors(1)
    together = [t.clone() for t in p]
    apart = [t.clone() for t in p]
    bufs_t, bufs_a = [None] * 4, [None] * 4
    cuts = [(0, 2), (2, 3), (3, 4)]
    functional.fused_lars_groups([(together[a:b], g[a:b], bufs_t[a:b], o) for (a, b), o in zip(cuts, opts)])
    for (a, b), o in zip(cuts, opts):
        part = bufs_a[a:b]
        functional.fused_lars_groups([(apart[a:b], g[a:b], part, o)])
        bufs_a[a:b] = part
    for x, y in zip(together, apart):
        assert torch.equal(x, y)


@pytest.mark.skipif(not ops.has_fused(torch.device("cpu")), reason="the compiled kernel is not built")
def test_fused_lars_norms_take_options_without_an_lr():
    p, g = _tensors(0), _tensors(1)
    assert torch.equal(functional.fused_lars_norms([(p, g, {"lars": True})]),
                       functional.fused_lars_norms([(p, g, dict(SEED))]))


def test_fused_lars_groups_of_no_tensors_does_nothing():
    functional.fused_lars_groups([([], [], [], dict(SEED))])


@pytest.mark.skipif(not ops.has_fused(torch.device("cpu")), reason="the compiled kernel is not built")
def test_fused_lars_norms_are_float64_sums_of_squares_per_group_switch():
    p, g = _tensors(0), _tensors(1)
    sums = functional.fused_lars_norms([(p[:2], g[:2], dict(SEED)), (p[2:3], g[2:3], dict(SEED, lars=False)),
                                        (p[3:], g[3:], StepOptions(lr=0.1, norm_of_update=True))])
    assert sums.dtype == torch.float64 and sums.shape == (4, 3)
    for i in (0, 1, 3):
        torch.testing.assert_close(sums[i, 0], p[i].double().square().sum(), rtol=1e-6, atol=0)
        torch.testing.assert_close(sums[i, 1], g[i].double().square().sum(), rtol=1e-6, atol=0)
    assert torch.equal(sums[2], torch.zeros(3, dtype=torch.float64))  # lars=False: no norms
    assert torch.equal(sums[:2, 2], torch.zeros(2, dtype=torch.float64))  # <g, p> only where the ratio needs it
    torch.testing.assert_close(sums[3, 2], (p[3].double() * g[3].double()).sum(), rtol=1e-6, atol=1e-12)


# ---- create_buffers ------------------------------------------------------------------------------------------


def test_create_buffers_without_momentum_makes_none_and_steps_everything_once():
    o = StepOptions(lr=0.1)
    bufs = [None, None]
    assert functional.create_buffers(o, [torch.ones(2), torch.ones(3)], bufs) == [(o, [0, 1])]
    assert bufs == [None, None]


def test_create_buffers_fills_zeros_like_each_param_keeping_its_layout():
    o = StepOptions(lr=0.1, momentum=0.9)
    p = [torch.ones(2, 3, 4, 5).to(memory_format=torch.channels_last), torch.ones(3, dtype=torch.bfloat16)]
    old = torch.ones(3)
    bufs = [None, None]
    assert functional.create_buffers(o, p, bufs) == [(o, [0, 1])]
    assert bufs[0].is_contiguous(memory_format=torch.channels_last) and bufs[1].dtype == torch.bfloat16
    assert all(torch.equal(b, torch.zeros_like(x)) for b, x in zip(bufs, p))
    bufs = [old, None]
    functional.create_buffers(o, [torch.ones(3), torch.ones(3)], bufs)
    assert bufs[0] is old


@pytest.mark.parametrize("fresh, expected", [
    ([0, 2], [("first", [0, 2]), ("own", [1])]),
    ([0, 1, 2], [("first", [0, 1, 2])]),
    ([], [("own", [0, 1, 2])]),
])
def test_create_buffers_with_dampening_steps_fresh_buffers_undamped(fresh, expected):
    o = StepOptions(lr=0.1, momentum=0.9, dampening=0.5)
    bufs = [None if i in fresh else torch.ones(2) for i in range(3)]
    got = functional.create_buffers(o, [torch.ones(2)] * 3, bufs)
    assert [(("first" if v.dampening == 0 else "own"), idx) for v, idx in got] == expected
    for v, _ in got:
        assert v == (o.first_step() if v.dampening == 0 else o)


@pytest.mark.parametrize("path", PATHS)
def test_a_zero_norm_tensor_under_zero_norm_skip_steps_by_its_gradient_whatever_the_trust_clip(path):
    """docs/semantics.md: with zero_norm_skip a zero norm means u = g (no decay, no
    scaling), so a numeric trust_clip below 1 must not scale that step."""
    weight = torch.zeros(4)
    grad = torch.tensor([1.0, -2.0, 3.0, -4.0])
    zero_grad_weight = torch.ones(4)
    options = dict(lr=1.0, momentum=0.0, weight_decay=0.1, eeta=0.02, epsilon=0.0, lars=True, nesterov=False,
                   trust_clip=0.5, update_clip=None, zero_norm_skip=True)
    functional.lars([weight, zero_grad_weight], [grad, torch.zeros(4)], [None, None], **options, **PATHS[path])
    assert torch.equal(weight, -grad)
    assert torch.equal(zero_grad_weight, torch.ones(4))
