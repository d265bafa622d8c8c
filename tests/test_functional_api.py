"""``lars_cuda.functional``: the keyword API ``lars()`` steps exactly as ``Lars``
with the same options on each of its paths (every switch of every flavour), and
``create_buffers`` makes momentum buffers in the one way the contract says."""

from __future__ import annotations

import pytest
import torch

import lars_cuda
from lars_cuda import functional, ops
from lars_cuda.options import StepOptions

from .reference import lars_step_f64

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
    "tensor_lr": dict(lr=torch.tensor(0.1)),
}
PATHS = {"single": dict(), "foreach": dict(foreach=True), "fused": dict(fused=True)}


def _tensors(seed, dtype=torch.float32, zero_first=False):
    gen = torch.Generator().manual_seed(seed)
    ts = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in SHAPES]
    if zero_first:
        ts[0].zero_()  # a zero norm: the ratio's guards and LARC's skip
    return ts


def _functional_steps(options, path, dtype, steps=3, zero_first=False):
    params = _tensors(0, dtype, zero_first)
    bufs = [None] * len(params)
    for step in range(steps):
        functional.lars(params, _tensors(10 + step, dtype), bufs, **options, **PATHS[path])
    return params, bufs


def _optimizer_steps(options, path, dtype, steps=3, zero_first=False):
    params = [torch.nn.Parameter(t) for t in _tensors(0, dtype, zero_first)]
    group_only = {k: options[k] for k in ("lars",) if k in options}
    opt = lars_cuda.Lars([dict(params=params, **group_only)], **{k: v for k, v in options.items() if k != "lars"},
                         **({"foreach": False, "fused": False} if path == "single" else PATHS[path]))
    for step in range(steps):
        for p, g in zip(params, _tensors(10 + step, dtype)):
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
    got_p, got_b = _functional_steps(options, path, dtype, zero_first=config.startswith("larc"))
    want_p, want_b = _optimizer_steps(options, path, dtype, zero_first=config.startswith("larc"))
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


@pytest.mark.parametrize("path", ["single", "foreach"])
def test_functional_lars_takes_norms_from_given_sums(path):
    # sums (p², g², g·p): a step from sums equals a step from the tensors when they agree,
    # and follows the sums when they do not (the sharded step's global norms)
    options = {**SEED, "momentum": 0.0, "update_clip": None}
    p, g = _tensors(0)[:2], _tensors(1)[:2]
    own = torch.tensor([[x.double().square().sum(), y.double().square().sum(), (x.double() * y.double()).sum()]
                        for x, y in zip(p, g)])
    a, b = [t.clone() for t in p], [t.clone() for t in p]
    functional.lars(a, g, [], **options, **PATHS[path])
    functional.lars(b, g, [], **options, **PATHS[path], sums=own)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
    c = [t.clone() for t in p]
    functional.lars(c, g, [], **options, **PATHS[path], sums=own * torch.tensor([[4.0, 1.0, 1.0]]).double())
    ratio = [0.05 * 2 * x.double().norm() / (y.double().norm() + 0.01 * 2 * x.double().norm()) for x, y in zip(p, g)]
    for x, y, r, gg in zip(p, c, ratio, g):
        torch.testing.assert_close(y.double(), x.double() - 0.1 * r * (gg.double() + 0.01 * x.double()),
                                   rtol=1e-5, atol=1e-6)


def test_functional_lars_with_sums_and_dampening_keeps_each_tensor_s_row():
    # fresh and old buffers step apart (first_step): the rows must follow their tensors
    options = {**SEED, "dampening": 0.5, "update_clip": None}
    p, g = _tensors(0), _tensors(1)
    sums = torch.tensor([[x.double().square().sum(), y.double().square().sum(), 0.0] for x, y in zip(p, g)])
    bufs = [None, torch.ones(5), None, torch.ones(1)]
    a, b = [t.clone() for t in p], [t.clone() for t in p]
    bufs_a, bufs_b = list(bufs), [None if x is None else x.clone() for x in bufs]
    functional.lars(a, g, bufs_a, **options)
    functional.lars(b, g, bufs_b, **options, sums=sums)
    for x, y in zip(a + bufs_a, b + bufs_b):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(not ops.has_fused(torch.device("cpu")), reason="the compiled kernel is not built")
def test_fused_lars_groups_with_sums_and_dampening_keeps_each_tensor_s_row():
    options = dict(**SEED, dampening=0.5)
    p, g = _tensors(0), _tensors(1)
    sums = torch.tensor([[x.double().square().sum(), y.double().square().sum(), 0.0] for x, y in zip(p, g)])
    bufs = [None, torch.ones(5), None, torch.ones(1)]
    a, b = [t.clone() for t in p], [t.clone() for t in p]
    bufs_a, bufs_b = list(bufs), [None if x is None else x.clone() for x in bufs]
    functional.fused_lars_groups([(a, g, bufs_a, options)])
    functional.fused_lars_groups([(b, g, bufs_b, options)], sums=sums)
    for x, y in zip(a + bufs_a, b + bufs_b):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


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
