"""The CUDA LAMB kernel's device code (csrc/cuda/lamb_kernel.cuh with csrc/lamb.h),
executed on the CPU by the emulator of tests/support/cuda_emulator, with the CUDA
build's own host-side layout, bucketing, clip and launch plan (csrc/cuda/lamb_launches.h,
csrc/lamb_buckets.cpp): against the CPU kernel and the float64 oracle, bit for bit over
grid sizes, launch modes and schedules, and Lamb(fused=True) stepping through it.
`pytest -k emulated` selects these tests too."""

from __future__ import annotations

import pytest
import torch

from lars_cuda import Lamb, ops
from lars_cuda.lamb_options import LambOptions

from ..unit.test_lamb import LR, STEPS, SWITCHES, oracle, tensors, train
from .test_emulated_cuda import CONFIGS, assert_bits_equal, configure, emulated_ops

pytestmark = pytest.mark.skipif(not ops.has_fused("cpu"), reason="the compiled extension is not built")

SHAPES = [(20001,), (5, 4), (21,), (16385,), (1,), (3, 7)]  # several chunks (8192), tails, one element
OPTIONS = {
    "defaults": {},
    "caution": dict(caution=True),
    "decay in the gradient": dict(decay_mode="grad", weight_decay=0.1),
    "corrected decoupled decay": dict(decay_mode="decoupled", weight_decay=0.1, max_lr=0.05),
    "not adapted": dict(weight_decay=0.0),
    "trust clip, maximize, no bias correction": dict(trust_clip=True, maximize=True, bias_correction=False),
}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def op_lists(dtype, seed=0, shapes=SHAPES, misaligned=()):
    gen = torch.Generator().manual_seed(seed)

    def make(shape, scale=1.0, positive=False, i=0):
        n = int(torch.tensor(shape).prod())
        x = torch.rand(n + 1, generator=gen) * 0.01 if positive else torch.randn(n + 1, generator=gen) * scale
        x = x.to(dtype)
        return (x[1:] if i in misaligned else x[:n].clone()).view(shape)  # misaligned: 2-4 bytes into its storage
    kinds = [dict(), dict(scale=3.0), dict(scale=0.1), dict(positive=True)]  # p, g, exp_avg, exp_avg_sq
    return [[make(s, i=i, **kind) for i, s in enumerate(shapes)] for kind in kinds] + [
        [torch.tensor(3.0) for _ in shapes]]


def call_args(lists, groups, max_grad_norm=1.0, grad_scale=None, found_inf=None):
    """fused_lamb_groups_'s arguments: `groups` = [(size, LambOptions)]."""
    hyper, flags, lrs = [], [], []
    for _, o in groups:
        hyper += o.hyper_row()
        flags.append(o.flags)
        lrs.append(o.lr_tensor)
    return (*lists, [n for n, _ in groups], hyper, flags, lrs, max_grad_norm, grad_scale, found_inf)


def step(op, dtype, groups, seed=0, **kw):
    lists = op_lists(dtype, seed, misaligned=kw.pop("misaligned", ()))
    op(*call_args(lists, groups, **kw))
    return written(lists)


def written(lists):
    """What a step writes: params, exp_avgs, exp_avg_sqs."""
    return [t for k in (0, 2, 3) for t in lists[k]]


def one_group(name, lr=LR):
    return [(len(SHAPES), LambOptions(lr=lr, **OPTIONS[name]))]


def assert_like_the_cpu_kernel(emulated, cpu):
    for i, (a, b) in enumerate(zip(emulated, cpu)):
        ulp = torch.finfo(a.dtype).eps
        torch.testing.assert_close(a.double(), b.double(), rtol=4 * ulp, atol=1e-6, msg=f"tensor {i}")


def on_every_launch(run, configs=CONFIGS):
    out = {}
    for grid, cooperative, seed in configs:
        configure(grid, cooperative, seed)
        out[(grid, cooperative, seed)] = run()
    configure()
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("options", OPTIONS)
def test_emulated_lamb_kernel_steps_as_the_cpu_kernel_with_the_same_bits_on_every_launch(options, dtype):
    E = emulated_ops()
    cpu = step(torch.ops.lars_cuda.fused_lamb_groups_, dtype, one_group(options))
    results = on_every_launch(lambda: step(E.fused_lamb_groups_, dtype, one_group(options)))
    assert_bits_equal(results)
    assert_like_the_cpu_kernel(next(iter(results.values())), cpu)


def test_emulated_lamb_kernel_steps_nine_groups_in_two_launches_with_one_global_clip():
    E = emulated_ops()
    names = list(OPTIONS) + ["defaults", "caution", "not adapted"]  # 9 groups of one tensor: 8 in a launch, 1 more
    shapes = SHAPES + SHAPES[:3]
    groups = [(1, LambOptions(lr=LR, **OPTIONS[n])) for n in names]

    def run(op):
        lists = op_lists(torch.float32, shapes=shapes)
        op(*call_args(lists, groups, max_grad_norm=0.5))
        return written(lists)
    cpu = run(torch.ops.lars_cuda.fused_lamb_groups_)
    results = on_every_launch(lambda: run(E.fused_lamb_groups_), configs=[(3, True, 0), (2, False, 0)])
    assert_bits_equal(results)
    assert_like_the_cpu_kernel(results[(3, True, 0)], cpu)
    configure(3, True)
    run(E.fused_lamb_groups_)
    assert E.launches() == 2 and E.last_launch() == "single"  # the ninth group needs no sum: one plain launch
    configure()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_emulated_lamb_kernel_takes_the_tail_path_for_tensors_not_16_byte_aligned(dtype):
    E = emulated_ops()
    cpu = step(torch.ops.lars_cuda.fused_lamb_groups_, dtype, one_group("caution"), misaligned=(0, 3))
    results = on_every_launch(lambda: step(E.fused_lamb_groups_, dtype, one_group("caution"), misaligned=(0, 3)),
                              configs=[(2, True, 0), (3, False, 0), (5, True, 31)])
    assert_bits_equal(results)
    assert_like_the_cpu_kernel(results[(2, True, 0)], cpu)


@pytest.mark.parametrize("grid,cooperative,seed", CONFIGS[::3])
def test_emulated_lamb_tensor_lr_read_by_the_kernel_or_on_the_host_gives_the_float_lrs_bits(grid, cooperative, seed):
    E = emulated_ops()
    results = {}
    for host_lr in (False, True):
        configure(grid, cooperative, seed, host_lr=host_lr)
        results[f"host_lr={host_lr}"] = step(E.fused_lamb_groups_, torch.float32,
                                             one_group("caution", torch.tensor(LR)))
    configure(grid, cooperative, seed)
    results["float lr"] = step(E.fused_lamb_groups_, torch.float32, one_group("caution"))
    configure()
    assert_bits_equal(results)


def test_emulated_lamb_grad_scale_divides_the_gradient_and_its_clip():
    E = emulated_ops()
    configure(3, True)
    plain = step(E.fused_lamb_groups_, torch.float32, one_group("defaults"), max_grad_norm=0.5)
    lists = op_lists(torch.float32)
    lists[1] = [g * 1024.0 for g in lists[1]]
    E.fused_lamb_groups_(*call_args(lists, one_group("defaults"), max_grad_norm=0.5, grad_scale=torch.tensor(1024.0),
                                    found_inf=torch.tensor(0.0)))
    configure()
    for a, b in zip(written(lists), plain):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("grid,cooperative,seed", CONFIGS)
def test_emulated_lamb_found_inf_leaves_every_tensor_unwritten(grid, cooperative, seed):
    E = emulated_ops()
    configure(grid, cooperative, seed)
    lists = op_lists(torch.float32)
    before = [t.clone() for t in written(lists)]
    E.fused_lamb_groups_(*call_args(lists, one_group("caution"), grad_scale=torch.tensor(2.0),
                                    found_inf=torch.tensor(1.0)))
    configure()
    assert all(torch.equal(a, b) for a, b in zip(written(lists), before))


@pytest.fixture
def lamb_through_the_emulator(monkeypatch):
    """Lamb(fused=True) steps through the emulated CUDA kernel (CPU tensors)."""
    E = emulated_ops()
    configure(3, True, 7)
    monkeypatch.setattr(ops, "fused_lamb_groups_", lambda *a: E.fused_lamb_groups_(*a))
    yield E
    configure()


@pytest.mark.parametrize("switch", SWITCHES)
def test_emulated_lamb_optimizer_steps_as_the_float64_oracle(switch, lamb_through_the_emulator):
    kw, oracle_kw = SWITCHES[switch]
    params, grads = tensors(dtype=torch.float32)
    want, moments = oracle(params, grads, oracle_kw, max_grad_norm=kw.get("max_grad_norm", 1.0))
    got, opt = train(lambda ps: Lamb(ps, lr=LR, **kw, fused=True), params, grads)
    assert lamb_through_the_emulator.launches() >= STEPS
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a.detach().double(), b, rtol=2e-5, atol=2e-6, msg=f"param {i}")
        torch.testing.assert_close(opt.state[a]["exp_avg_sq"].double(), moments[i][1], rtol=2e-5, atol=2e-6)


# ---- the sharded step's halves: fused_lamb_norms, then fused_lamb_apply_ ----------------------

def halves_args(lists, groups, grad_scale=None):
    """fused_lamb_norms' arguments (fused_lamb_apply_ takes the sums before grad_scale)."""
    return call_args(lists, groups)[:9] + (grad_scale,)


def run_halves(E, lists, groups, grad_scale=None):
    """The two halves with the call's own rows in between (one rank's all-reduce); the rows."""
    args = halves_args(lists, groups, grad_scale)
    rows = E.fused_lamb_norms(*args)
    E.fused_lamb_apply_(*args[:9], rows, grad_scale)
    return rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("options", ["defaults", "caution", "not adapted", "corrected decoupled decay"])
def test_emulated_lamb_norms_are_the_cpu_kernels_rows_and_write_nothing(options, dtype):
    E = emulated_ops()
    lists = op_lists(dtype)
    before = [t.clone() for t in written(lists)]
    cpu = torch.ops.lars_cuda.fused_lamb_norms(*halves_args(lists, one_group(options)))
    results = on_every_launch(lambda: [E.fused_lamb_norms(*halves_args(lists, one_group(options)))],
                              configs=CONFIGS[::2])
    assert_bits_equal(results)
    assert all(torch.equal(a, b) for a, b in zip(written(lists), before))
    rows = next(iter(results.values()))[0]
    assert rows.shape == (len(SHAPES), 5) and rows.dtype == torch.float64
    torch.testing.assert_close(rows, cpu, rtol=1e-5, atol=1e-9)
    if options == "not adapted":
        assert not rows.any()  # no tensor needs a sum
    if options == "caution":
        assert rows[:, 4].tolist() == [float(torch.Size(s).numel()) for s in SHAPES]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("options", OPTIONS)
def test_emulated_lamb_halves_with_their_own_rows_are_the_one_call_step_bit_for_bit(options, dtype):
    E = emulated_ops()
    configure(3, True, 5)
    whole = step(E.fused_lamb_groups_, dtype, one_group(options), max_grad_norm=None)
    lists = op_lists(dtype)
    run_halves(E, lists, one_group(options))
    configure()
    assert_bits_equal({"one call": whole, "halves": written(lists)})


def test_emulated_lamb_apply_takes_each_tensors_ratio_from_the_given_rows():
    E = emulated_ops()
    lists, twice = op_lists(torch.float32), op_lists(torch.float32)
    args = halves_args(lists, one_group("defaults"))
    rows = E.fused_lamb_norms(*args)
    E.fused_lamb_apply_(*args[:9], rows, None)
    rows4 = rows.clone()
    rows4[:, 0] *= 4  # ||p|| twice as large: r doubles
    E.fused_lamb_apply_(*halves_args(twice, one_group("defaults"))[:9], rows4, None)
    start = op_lists(torch.float32)[0]
    for p0, a, b in zip(start, lists[0], twice[0]):
        torch.testing.assert_close(b - p0, 2 * (a - p0), rtol=1e-4, atol=1e-6)  # (p - p0: rounding of p)


def test_emulated_lamb_halves_divide_the_grads_by_grad_scale():
    E = emulated_ops()
    plain = op_lists(torch.float32)
    run_halves(E, plain, one_group("caution"))
    scaled = op_lists(torch.float32)
    scaled[1] = [g * 4.0 for g in scaled[1]]
    run_halves(E, scaled, one_group("caution"), grad_scale=torch.tensor(4.0))
    for a, b in zip(written(scaled), written(plain)):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-7)
