"""Every path of Lars against the float64 restatement of the contract, step by step."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lars_cuda import Lars

from ..conftest import PATHS
from ..support.machine import can_run
from ..support.reference import lars_step_f64

PATHS_FUSED = PATHS["fused"]

TOL = {
    torch.float32: dict(rtol=2e-5, atol=2e-6),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
}


def assert_close_scaled(got, want, dtype, what):
    """assert_close whose absolute tolerance grows with the tensor's magnitude: a
    rounding of an operand of size M costs M * eps, however small the result."""
    tol = TOL[dtype]
    atol = tol["atol"] + tol["rtol"] * (want.abs().max().item() if want.numel() else 0.0)
    torch.testing.assert_close(got, want.to(dtype), rtol=tol["rtol"], atol=atol, msg=lambda m: f"{what}: {m}")


def check_steps(path, shapes, dtype, hyper, n_steps=3, grad_scale=1.0, zero=(), seed=0):
    """Runs n_steps of Lars(**path) and checks each one against the float64 oracle
    applied to the state the optimizer held just before that step."""
    gen = torch.Generator().manual_seed(seed)
    params = []
    for i, shape in enumerate(shapes):
        data = torch.zeros(shape) if i in zero else torch.randn(shape, generator=gen)
        params.append(torch.nn.Parameter(data.to(dtype)))
    opt = Lars(params, **hyper, **path)
    for step in range(n_steps):
        before = [p.detach().clone() for p in params]
        bufs = [opt.state[p].get("momentum_buffer") if p in opt.state else None for p in params]
        bufs = [None if b is None else b.clone() for b in bufs]
        for i, p in enumerate(params):
            g = torch.randn(p.shape, generator=gen) * grad_scale * (step + 1)
            if ("grad", i) in zero:
                g.zero_()
            p.grad = g.to(dtype)
        opt.step()
        for i, p in enumerate(params):
            # A param whose buffer is zero-initialised (foreach/fused) is the same as one without.
            want_p, want_buf = lars_step_f64(before[i], p.grad, bufs[i], **hyper)
            assert_close_scaled(p.detach(), want_p, dtype, f"param {i} step {step}")
            if hyper.get("momentum", 0):
                got_buf = opt.state[p]["momentum_buffer"]
                assert_close_scaled(got_buf, want_buf, dtype, f"buffer {i} step {step}")
            else:
                assert "momentum_buffer" not in opt.state.get(p, {})


SHAPES = st.lists(
    st.lists(st.integers(0, 33), min_size=0, max_size=3).map(tuple), min_size=1, max_size=5
)
HYPER = st.fixed_dictionaries(
    dict(
        lr=st.sampled_from([0.0, 0.1, 1.0, 4.0]),
        momentum=st.sampled_from([0.0, 0.5, 0.9]),
        weight_decay=st.sampled_from([0.0, 1e-4, 0.1]),
        eeta=st.sampled_from([1e-3, 0.02, 1.0]),
        epsilon=st.sampled_from([0.0, 1e-5]),
        trust_clip=st.sampled_from([None, 50.0, 0.5]),
        update_clip=st.sampled_from([None, 10.0, 0.05]),
    )
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shapes=SHAPES,
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    hyper=HYPER,
    lars=st.booleans(),
    nesterov=st.booleans(),
    grad_scale=st.sampled_from([1e-3, 1.0, 30.0]),
    zero=st.sampled_from([(), (0,), (("grad", 0),), (0, ("grad", 1))]),
    seed=st.integers(0, 2**16),
)
def test_every_path_matches_the_contract_on_random_inputs(path, shapes, dtype, hyper, lars, nesterov, grad_scale,
                                                          zero, seed):
    hyper = dict(hyper)
    hyper["nesterov"] = nesterov and hyper["momentum"] != 0
    if lars:
        check_steps(path, shapes, dtype, hyper, grad_scale=grad_scale, zero=zero, seed=seed)
    else:
        _check_lars_false(path, shapes, dtype, hyper, grad_scale, seed)


def _check_lars_false(path, shapes, dtype, hyper, grad_scale, seed):
    """Same as check_steps, in a group with lars=False (no ratio, no weight decay)."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in shapes]
    opt = Lars([dict(params=params, lars=False)], **hyper, **path)
    for step in range(3):
        before = [p.detach().clone() for p in params]
        bufs = [opt.state[p]["momentum_buffer"].clone() if "momentum_buffer" in opt.state.get(p, {}) else None
                for p in params]
        for p in params:
            p.grad = (torch.randn(p.shape, generator=gen) * grad_scale).to(dtype)
        opt.step()
        for i, p in enumerate(params):
            want, _ = lars_step_f64(before[i], p.grad, bufs[i], lars=False, **hyper)
            assert_close_scaled(p.detach(), want, dtype, f"param {i} step {step}")


def test_trust_ratio_is_capped_at_50(path):
    # eeta=1, ||p|| = 2, ||g|| = 2e-3: the raw ratio is 1000, so the step is lr * 50 * g.
    # Measured as a step (p - p') so that the tolerance is on the cap, not on p's magnitude:
    # a cap of 49 or 51 moves the step by 2 %, 10^4 times the float32 error allowed here.
    p = torch.nn.Parameter(torch.ones(4))
    opt = Lars([p], lr=1.0, eeta=1.0, **path)
    p.grad = torch.full((4,), 1e-3)
    opt.step()
    step = 1.0 - p.detach().double()
    torch.testing.assert_close(step, torch.full((4,), 50 * 1e-3, dtype=torch.float64), rtol=1e-5, atol=0)


def test_trust_clip_none_leaves_the_ratio_uncapped(path):
    p = torch.nn.Parameter(torch.ones(4))
    opt = Lars([p], lr=1.0, eeta=1.0, trust_clip=None, **path)
    p.grad = torch.full((4,), 1e-3)
    opt.step()
    # r = ||p|| / ||g|| = 2 / 2e-3 = 1000; u = 1e-3.
    torch.testing.assert_close(p.detach(), torch.zeros(4), atol=1e-5, rtol=0)


def test_update_is_clipped_elementwise_to_10(path):
    p = torch.nn.Parameter(torch.zeros(3))
    opt = Lars([dict(params=[p], lars=False)], lr=1.0, **path)
    p.grad = torch.tensor([100.0, -100.0, 3.0])
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([-10.0, 10.0, -3.0]))


def test_update_clip_none_disables_the_clip(path):
    p = torch.nn.Parameter(torch.zeros(2))
    opt = Lars([dict(params=[p], lars=False)], lr=1.0, update_clip=None, **path)
    p.grad = torch.tensor([100.0, -100.0])
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([-100.0, 100.0]))


@pytest.mark.parametrize("which", ["weight", "grad"])
def test_zero_norm_gives_ratio_one(path, which):
    # With weight decay the step is lr * r * (g + wd * p) != 0 whichever norm is zero, so
    # only r = 1 gives the expected value: an unguarded ||g|| = 0 would give
    # r = eeta * ||p|| / (wd * ||p||) = eeta / wd = 0.02 (and ||p|| = 0 gives r = 0).
    p = torch.nn.Parameter(torch.zeros(3) if which == "weight" else torch.full((3,), 2.0))
    opt = Lars([p], lr=0.5, eeta=1e-3, weight_decay=0.05, **path)
    p.grad = torch.full((3,), 3.0) if which == "weight" else torch.zeros(3)
    before = p.detach().clone()
    opt.step()
    want = before - 0.5 * 1.0 * (p.grad + 0.05 * before)
    assert not torch.equal(want, before)
    torch.testing.assert_close(p.detach(), want, rtol=1e-6, atol=0)


def test_lars_false_applies_no_weight_decay(path):
    p = torch.nn.Parameter(torch.ones(3))
    opt = Lars([dict(params=[p], lars=False)], lr=0.1, weight_decay=0.5, **path)
    p.grad = torch.full((3,), 2.0)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((3,), 1 - 0.1 * 2.0))


def test_first_step_sets_the_buffer_to_d_then_accumulates(path):
    p = torch.nn.Parameter(torch.zeros(2))
    opt = Lars([dict(params=[p], lars=False)], lr=1.0, momentum=0.9, **path)
    p.grad = torch.tensor([1.0, 2.0])
    opt.step()
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], torch.tensor([1.0, 2.0]))
    opt.step()
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], torch.tensor([1.9, 3.8]))
    torch.testing.assert_close(p.detach(), -torch.tensor([2.9, 5.8]))


def test_nesterov_uses_d_plus_momentum_times_buffer(path):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = Lars([dict(params=[p], lars=False)], lr=1.0, momentum=0.5, nesterov=True, **path)
    p.grad = torch.tensor([2.0])
    opt.step()  # buf = 2, u = 2 + 0.5 * 2 = 3
    torch.testing.assert_close(p.detach(), torch.tensor([-3.0]))


def test_no_momentum_keeps_no_state(path):
    p = torch.nn.Parameter(torch.ones(2))
    opt = Lars([p], lr=0.1, **path)
    p.grad = torch.ones(2)
    opt.step()
    assert "momentum_buffer" not in opt.state.get(p, {})


def test_params_without_grad_are_skipped_and_get_no_state(path):
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = Lars([a, b], lr=0.1, momentum=0.9, **path)
    a.grad = torch.ones(2)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(2))
    assert b not in opt.state
    assert "momentum_buffer" in opt.state[a]


def test_tensor_lr_gives_the_same_step_as_float_lr(path):
    def run(lr):
        p = torch.nn.Parameter(torch.arange(6.0).reshape(2, 3))
        opt = Lars([p], lr=lr, momentum=0.9, weight_decay=1e-3, eeta=0.05, **path)
        for _ in range(2):
            p.grad = torch.linspace(-1, 1, 6).reshape(2, 3)
            opt.step()
        return p.detach()

    torch.testing.assert_close(run(torch.tensor(0.3)), run(0.3))


def test_channels_last_params_are_stepped_like_contiguous_ones(path):
    torch.manual_seed(0)
    w = torch.randn(4, 3, 2, 2)
    g = torch.randn(4, 3, 2, 2)
    out = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        p = torch.nn.Parameter(w.clone().to(memory_format=fmt))
        opt = Lars([p], lr=1.0, momentum=0.9, eeta=0.1, **path)
        p.grad = g.clone().to(memory_format=fmt)
        opt.step()
        out.append(p.detach().contiguous())
    torch.testing.assert_close(out[0], out[1])


def test_mixed_dtypes_in_one_group(path):
    check_steps(path, [(5, 3), (7,), (2, 2)], torch.float32, dict(lr=0.5, momentum=0.9, eeta=0.02))
    params = [torch.nn.Parameter(torch.randn(8).to(dt)) for dt in (torch.float32, torch.float16, torch.bfloat16)]
    opt = Lars(params, lr=0.5, momentum=0.9, eeta=0.02, **path)
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.randn(8).to(p.dtype)
    opt.step()
    for b, p in zip(before, params):
        want, _ = lars_step_f64(b, p.grad, None, lr=0.5, momentum=0.9, eeta=0.02)
        torch.testing.assert_close(p.detach(), want.to(p.dtype), **TOL[p.dtype])


def test_all_paths_agree_over_many_steps_on_a_small_model():
    results = []
    for kwargs in (dict(foreach=False, fused=False), dict(foreach=True), dict(fused=True)):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        opt = Lars(model.parameters(), lr=1.0, momentum=0.9, weight_decay=5e-4, eeta=0.01, **kwargs)
        data = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
        target = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(2))
        for _ in range(20):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(data), target).backward()
            opt.step()
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(results[1], results[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(results[2], results[0], rtol=1e-4, atol=1e-5)


def test_trust_ratios_report_what_the_next_step_uses():
    p = torch.nn.Parameter(torch.full((4,), 3.0))  # ||p|| = 6
    q = torch.nn.Parameter(torch.ones(2))
    opt = Lars([dict(params=[p]), dict(params=[q], lars=False)], lr=1.0, eeta=0.1, weight_decay=0.5)
    p.grad = torch.full((4,), 1.0)  # ||g|| = 2
    q.grad = torch.ones(2)
    torch.testing.assert_close(opt.trust_ratios(), torch.tensor([0.1 * 6 / (2 + 0.5 * 6)]))


def test_trust_ratios_follow_the_flavours_views_in_group_order():
    # SSLLars's filters leave 1-D params unadapted: only the two matrices report,
    # in group order, each eta*||p|| / ||g + wd*p|| (no epsilon).
    from lars_cuda.compat import SSLLars

    gen = torch.Generator().manual_seed(3)
    a, bias, b = (torch.nn.Parameter(torch.randn(s, generator=gen)) for s in [(3, 4), (4,), (5, 2)])
    opt = SSLLars([a, bias, b], lr=0.2, weight_decay=0.1, eta=0.01)
    for p in (a, bias, b):
        p.grad = torch.randn(p.shape, generator=gen)
    expected = [0.01 * p.detach().norm() / (p.grad + 0.1 * p.detach()).norm() for p in (a, b)]
    torch.testing.assert_close(opt.trust_ratios(), torch.stack(expected), rtol=1e-6, atol=0)


def test_trust_ratios_divide_the_gradient_by_grad_scale():
    p = torch.nn.Parameter(torch.full((4,), 3.0))  # ||p|| = 6
    opt = Lars([p], lr=1.0, eeta=0.1)
    p.grad = torch.full((4,), 8.0)  # ||g|| = 16, i.e. 2 at scale 8
    torch.testing.assert_close(opt.trust_ratios(grad_scale=8.0), torch.tensor([0.1 * 6 / 2]))


def _use_cpu_kernel(monkeypatch, name):
    """Asks for one build of the CPU kernel; skips where this CPU lacks its instructions
    (read from the CPU, so a choice that wrongly falls back fails instead of skipping)."""
    from lars_cuda import ops

    if not can_run(name):
        pytest.skip(f"this CPU cannot run the {name} build of the kernel")
    monkeypatch.setenv("LARS_CUDA_CPU_KERNEL", name)
    assert ops.cpu_kernel() == name


@pytest.mark.parametrize("kernel", ["default", "avx2", "avx512"])
def test_every_cpu_kernel_build_matches_the_contract(monkeypatch, kernel):
    # The fused CPU op has AVX-512, AVX2 and portable builds; the default choice
    # (torch's own capability) runs in every other test, this runs each one.
    _use_cpu_kernel(monkeypatch, kernel)
    shapes = [(40, 33), (7,), (0,), (1000,), (16384 + 37,)]  # vector bodies, tails, a second chunk
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        check_steps(PATHS_FUSED, shapes, dtype,
                    dict(lr=0.5, momentum=0.9, weight_decay=1e-3, eeta=0.02, nesterov=True), zero=(1,))


@pytest.mark.parametrize("kernel", ["default", "avx2", "avx512"])
def test_every_cpu_kernel_build_gives_the_same_bits_on_every_run(monkeypatch, kernel):
    _use_cpu_kernel(monkeypatch, kernel)
    runs = []
    for _ in range(2):
        gen = torch.Generator().manual_seed(3)
        params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(torch.bfloat16))
                  for s in [(300, 70), (5,), (16384 * 3 + 1,)]]
        opt = Lars(params, lr=0.1, momentum=0.9, weight_decay=1e-4, **PATHS_FUSED)
        for _ in range(2):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen).to(torch.bfloat16)
            opt.step()
        runs.append([p.detach().clone() for p in params])
    for a, b in zip(*runs):
        assert torch.equal(a, b)
