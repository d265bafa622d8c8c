"""The CUDA kernel's device code (csrc/cuda/kernel.cuh, traversal.cuh, device_table.cuh
and csrc/lars.h), executed on the CPU by the emulator of tests/support/cuda_emulator (threads
as fibers, warps, block and grid barriers), with the CUDA build's own host-side
layout, bucketing and launch plan. No GPU is needed: these run in every `make test`.

The emulated backend is torch.ops.lars_cuda_emulated.*, the ops of torch.ops.lars_cuda
on CPU tensors; `emulated_kernel` routes lars_cuda.ops through it, so Lars(fused=True)
and the functional API step through the CUDA kernel's code. Checked: the emulator
itself (what it computes and what it refuses), every flavour and switch against the
CPU kernel, bits identical over grid sizes {1, 2, 3, 5}, both launch modes, random
schedules and wave sizes, the CPU kernel's own tests re-run on the emulated kernel,
and the sanitizers. `pytest -k emulated` selects exactly these tests."""

from __future__ import annotations

import functools
import inspect
import os
import subprocess
import sys

import pytest
import torch

from lars_cuda import functional, ops

from ..unit import test_compat, test_functional_api, test_lars_math, test_sharded_in_process
from ..support.cuda_emulator.build import load, sanitizer_env
from ..unit.test_lars_math import assert_close_scaled
from ..support.paths import ROOT

pytestmark = pytest.mark.skipif(not ops.has_fused("cpu"), reason="the compiled extension is not built")

VARIANT = os.environ.get("LARS_CUDA_EMULATOR_VARIANT", "plain")  # scripts/emulator_coverage.sh: coverage
GRIDS = [1, 2, 3, 5]
# (grid, cooperative, seed): every grid size in both launch modes in a fixed order,
# and two random schedules (fibers, blocks and hand-overs between blocks shuffled).
CONFIGS = [(g, coop, 0) for g in GRIDS for coop in (True, False)] + [(3, True, 12345), (5, False, 777)]


@functools.cache
def emulated_ops():
    load(VARIANT)
    return torch.ops.lars_cuda_emulated


def configure(grid=2, cooperative=True, seed=0, wave_mb=0.0, fault="", host_lr=False):
    emulated_ops().configure(grid, cooperative, wave_mb, seed, fault, host_lr)


def route_through_the_emulator(monkeypatch):
    """lars_cuda.ops' three kernel ops -> the emulated CUDA kernel (CPU tensors)."""
    E = emulated_ops()
    monkeypatch.setattr(ops, "fused_lars_groups_", lambda *a: E.fused_lars_groups_(*a))
    monkeypatch.setattr(ops, "fused_lars_norms", lambda *a: E.fused_lars_norms(*a))
    monkeypatch.setattr(ops, "fused_lars_apply_", lambda *a: E.fused_lars_apply_(*a))


@pytest.fixture(params=[(3, True), (2, False)], ids=["grid3-cooperative", "grid2-three-kernel"])
def emulated_kernel(request, monkeypatch):
    """Every fused step of the test runs the emulated CUDA kernel."""
    grid, cooperative = request.param
    configure(grid, cooperative)
    route_through_the_emulator(monkeypatch)
    yield
    configure()


# ---- the emulator itself ---------------------------------------------------------------

def selftest(name, grid=3, cooperative=True, seed=0):
    return emulated_ops().selftest(name, grid, cooperative, seed)


@pytest.mark.parametrize("grid,cooperative,seed", CONFIGS)
def test_emulated_shuffle_down_gives_each_lane_the_value_delta_lanes_up_or_its_own(grid, cooperative, seed):
    out = selftest("shuffle_down_values", grid, cooperative, seed)[:grid * 256].view(grid, 8, 32)
    lane = torch.arange(32.0)
    assert torch.equal(out, torch.where(lane < 28, lane + 4, lane).expand(grid, 8, 32))


@pytest.mark.parametrize("grid,cooperative,seed", CONFIGS)
def test_emulated_block_sum_adds_every_thread_of_its_block_twice_in_a_row(grid, cooperative, seed):
    out = selftest("block_sums", grid, cooperative, seed)[:4 * grid].view(grid, 4)
    for b in range(grid):
        v = torch.arange(1, 257, dtype=torch.float64) + 1000 * b
        assert out[b].tolist() == [v.sum(), 2 * v.sum(), -v.sum(), 256.0]


@pytest.mark.parametrize("grid,cooperative,seed", CONFIGS)
def test_emulated_shared_memory_is_per_block(grid, cooperative, seed):
    out = selftest("shared_is_per_block", grid, cooperative, seed)[:grid * 256].view(grid, 256)
    assert torch.equal(out, torch.arange(grid, dtype=torch.float32).view(grid, 1).expand(grid, 256))


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("seed", [0, 99])
def test_emulated_grid_sync_makes_every_blocks_writes_visible_to_every_block(grid, seed):
    out = selftest("grid_barrier_sums", grid, True, seed)[:grid]
    assert out.tolist() == [grid * (grid + 1) / 2] * grid


@pytest.mark.parametrize("cooperative", [True, False])
@pytest.mark.parametrize("kernel, match", [
    ("divergent_shuffle", r"warp 0: lanes of one shuffle diverged: thread 0 waits at __shfl_down_sync "
                          r"\(selftest_kernels.cpp:\d+\), thread 16 waits at __syncthreads"),
    ("syncthreads_in_half_the_block", r"threads diverged at a barrier: thread 0 waits at __syncthreads "
                                      r"\(selftest_kernels.cpp:\d+\), thread 128 has returned"),
    ("two_syncthreads_sites", r"thread 0 waits at __syncthreads \(selftest_kernels.cpp:(\d+)\), thread 128 waits "
                              r"at __syncthreads \(selftest_kernels.cpp:(?!\1)\d+\)"),
    ("misaligned_pack_load", r"selftest_kernels.cpp:\d+: __ldcg: a load of 16 bytes from an address that is not "
                             r"16-byte aligned"),
])
def test_emulated_launch_refuses_what_a_gpu_would_hang_or_fault_on_naming_the_line(kernel, match, cooperative):
    with pytest.raises(RuntimeError, match=match):
        selftest(kernel, 3, cooperative)


def test_emulated_grid_sync_outside_a_cooperative_launch_is_refused():
    with pytest.raises(RuntimeError, match=r"grid.sync\(\) at selftest_kernels.cpp:\d+ in an ordinary launch"):
        selftest("grid_sync", 2, False)


def test_emulated_block_that_returns_while_others_wait_at_grid_sync_is_refused():
    with pytest.raises(RuntimeError, match=r"block 1 returned while block 0 waits at grid.sync\(\)"):
        selftest("block_returns_before_grid_sync", 3, True)


# ---- every flavour and switch, against the CPU kernel, bits equal over launches --------

SEED = dict(lr=0.1, momentum=0.9, weight_decay=1e-4, eeta=0.02)
OPTION_SETS = {
    "seed": SEED,
    "nesterov": dict(SEED, nesterov=True, epsilon=1e-5),
    "no_momentum": dict(SEED, momentum=0.0, update_clip=0.05),
    "maximize": dict(SEED, maximize=True, trust_clip=None),
    "lars_off": dict(SEED, lars=False, weight_decay=0.01),
    "lr_tensor": dict(SEED, lr=torch.tensor(0.3), trust_clip=2.0),
    "timm": dict(lr=0.5, momentum=0.9, dampening=0.1, weight_decay=1e-3, eeta=1e-3, epsilon=1e-8, trust_clip=None,
                 update_clip=None, ratio_on_grad=True, larc_clip=True),
    "larc": dict(lr=0.5, momentum=0.9, weight_decay=1e-3, eeta=0.02, epsilon=1e-8, trust_clip=None,
                 update_clip=None, ratio_on_grad=True, larc_clip=True, zero_norm_skip=True),
    "ssl": dict(lr=0.5, momentum=0.9, weight_decay=1.5e-2, eeta=1e-3, trust_clip=None, update_clip=None,
                ratio_on_grad=True, norm_of_update=True),
    "zero_norm_skip_with_a_trust_clip": dict(SEED, zero_norm_skip=True, trust_clip=0.5),
    "decay_without_lars": dict(SEED, lars=False, decay=True, weight_decay=0.05, dampening=0.2),
}
# (param dtype, grad dtype)
DTYPES = {"f32": (torch.float32, torch.float32), "bf16": (torch.bfloat16, torch.bfloat16),
          "f16": (torch.float16, torch.float16), "f16-params-f32-grads": (torch.float16, torch.float32)}
# Several chunks of 8192 elements (the last one short), one-element and empty tensors;
# tensor 1's weight and tensor 3's gradient are zero (the ratio's guards).
SHAPES = [(20_001,), (5, 4), (3,), (16_385,), (1,), (0,), (8192,), (7, 3)]


def tensors(seed, dtypes, shapes=SHAPES, misaligned=()):
    """Fresh (params, grads) for one group; tensor i in `misaligned` is a view 4 bytes
    into its storage (not 16-byte aligned: the kernel's element-wise tail path)."""
    gen = torch.Generator().manual_seed(seed)
    p_type, g_type = dtypes
    params, grads = [], []
    for i, s in enumerate(shapes):
        p = torch.randn(s, generator=gen)
        g = torch.randn(s, generator=gen) * torch.linspace(0.1, 3.0, max(p.numel(), 1))[:p.numel()].view(s)
        if i == 1:
            p.zero_()
        if i == 3:
            g.zero_()
        if i in misaligned:
            p = torch.cat([torch.zeros(1), p.flatten()])[1:].view(s)
            g = torch.cat([torch.zeros(1), g.flatten()])[1:].view(s)
        params.append(p.to(p_type) if p.dtype != p_type else p)
        grads.append(g.to(g_type) if g.dtype != g_type else g)
    return params, grads


def step_groups(option_names, dtypes, seed=0, steps=2, grad_scale=None, found_inf=None, misaligned=()):
    """Two steps of functional.fused_lars_groups over one group per option set (fresh
    buffers on the first step, old ones on the second); returns every tensor after."""
    groups = []
    for k, name in enumerate(option_names):
        params, _ = tensors(seed + k, dtypes, misaligned=misaligned)
        groups.append((params, [None] * len(params), dict(OPTION_SETS[name])))
    for step in range(steps):
        call = [(params, tensors(100 * (step + 1) + seed + k, dtypes, misaligned=misaligned)[1], bufs, options)
                for k, (params, bufs, options) in enumerate(groups)]
        functional.fused_lars_groups(call, grad_scale=grad_scale, found_inf=found_inf)
    return [t for params, bufs, _ in groups for t in params + [b for b in bufs if b is not None]]


def on_every_emulated_launch(monkeypatch, run, configs=CONFIGS, wave_mb=0.0):
    """run() on the emulated kernel in each configuration: {config: result}."""
    route_through_the_emulator(monkeypatch)
    out = {}
    for grid, cooperative, seed in configs:
        configure(grid, cooperative, seed, wave_mb)
        out[(grid, cooperative, seed)] = run()
    return out


def assert_bits_equal(results):
    (first_config, first), *rest = results.items()
    for config, result in rest:
        for i, (a, b) in enumerate(zip(result, first)):
            assert torch.equal(a, b), f"tensor {i}: {config} differs from {first_config}"


def assert_like_the_cpu_kernel(emulated, cpu, dtypes):
    for i, (a, b) in enumerate(zip(emulated, cpu)):
        assert_close_scaled(a, b.double(), a.dtype, f"tensor {i}")


@pytest.mark.parametrize("dtypes", DTYPES)
@pytest.mark.parametrize("options", OPTION_SETS)
def test_emulated_kernel_steps_each_flavour_as_the_cpu_kernel_with_the_same_bits_on_every_launch(
        options, dtypes, monkeypatch):
    cpu = step_groups([options], DTYPES[dtypes])
    results = on_every_emulated_launch(monkeypatch, lambda: step_groups([options], DTYPES[dtypes]))
    assert_bits_equal(results)
    assert_like_the_cpu_kernel(next(iter(results.values())), cpu, DTYPES[dtypes])
    assert emulated_ops().last_launch() in ("three-kernel", "single")  # the last config: an ordinary launch


@pytest.mark.parametrize("dtypes", ["f32", "bf16"])
def test_emulated_kernel_steps_every_flavour_in_one_call_of_two_launches_as_the_cpu_kernel(dtypes, monkeypatch):
    names = list(OPTION_SETS)  # 11 groups: 8 in the first launch, 3 in the second
    cpu = step_groups(names, DTYPES[dtypes])
    results = on_every_emulated_launch(monkeypatch, lambda: step_groups(names, DTYPES[dtypes]),
                                       configs=[(3, True, 0), (2, False, 0), (5, True, 4242)])
    assert_bits_equal(results)
    assert_like_the_cpu_kernel(results[(3, True, 0)], cpu, DTYPES[dtypes])
    configure(3, True)
    step_groups(names, DTYPES[dtypes], steps=1)
    assert emulated_ops().launches() == 2  # one cooperative launch per 8 groups


@pytest.mark.parametrize("dtypes", DTYPES)
def test_emulated_kernel_takes_the_tail_path_for_tensors_not_16_byte_aligned(dtypes, monkeypatch):
    misaligned = (0, 3, 7)
    cpu = step_groups(["seed", "ssl"], DTYPES[dtypes], misaligned=misaligned)
    results = on_every_emulated_launch(
        monkeypatch, lambda: step_groups(["seed", "ssl"], DTYPES[dtypes], misaligned=misaligned),
        configs=[(2, True, 0), (3, False, 0), (5, True, 31)])
    assert_bits_equal(results)
    assert_like_the_cpu_kernel(results[(2, True, 0)], cpu, DTYPES[dtypes])


@pytest.mark.parametrize("wave_mb", [0.02, 0.1, 1.0])
def test_emulated_kernel_gives_the_same_bits_in_waves_as_in_one(wave_mb, monkeypatch):
    names = ["seed", "timm", "ssl"]
    one_wave = on_every_emulated_launch(monkeypatch, lambda: step_groups(names, DTYPES["f32"]),
                                        configs=[(3, True, 0)])
    in_waves = on_every_emulated_launch(monkeypatch, lambda: step_groups(names, DTYPES["f32"]),
                                        configs=[(3, True, 0), (2, False, 0)], wave_mb=wave_mb)
    assert_bits_equal({"one wave": one_wave[(3, True, 0)], **{f"waves {k}": v for k, v in in_waves.items()}})


@pytest.mark.parametrize("grid,cooperative,seed", CONFIGS[::3])
def test_emulated_tensor_lr_read_by_the_kernel_or_on_the_host_gives_the_same_bits(grid, cooperative, seed,
                                                                                  monkeypatch):
    route_through_the_emulator(monkeypatch)
    results = {}
    for host_lr in (False, True):
        configure(grid, cooperative, seed, host_lr=host_lr)
        results[f"host_lr={host_lr}"] = step_groups(["lr_tensor", "seed"], DTYPES["f32"])
    assert_bits_equal(results)


@pytest.mark.parametrize("options", ["seed", "timm", "larc", "ssl"])
def test_emulated_grad_scale_divides_the_gradient_exactly(options, monkeypatch):
    route_through_the_emulator(monkeypatch)
    for grid, cooperative, seed in CONFIGS[::3]:
        configure(grid, cooperative, seed)
        plain = step_groups([options], DTYPES["f32"], steps=1)
        params, grads = tensors(0, DTYPES["f32"])
        bufs = [None] * len(params)
        scaled = [g * 1024.0 for g in tensors(100, DTYPES["f32"])[1]]
        functional.fused_lars_groups([(params, scaled, bufs, dict(OPTION_SETS[options]))],
                                     grad_scale=torch.tensor(1024.0), found_inf=torch.tensor(0.0))
        assert_bits_equal({"unscaled": plain, "scaled": params + [b for b in bufs if b is not None]})


@pytest.mark.parametrize("grid,cooperative,seed", CONFIGS)
def test_emulated_found_inf_leaves_every_tensor_unwritten(grid, cooperative, seed, monkeypatch):
    route_through_the_emulator(monkeypatch)
    configure(grid, cooperative, seed)
    params, grads = tensors(0, DTYPES["f32"])
    bufs = [torch.randn_like(p) for p in params]
    before = [t.clone() for t in params + bufs]
    functional.fused_lars_groups([(params, grads, bufs, dict(SEED))], grad_scale=torch.tensor(2.0),
                                 found_inf=torch.tensor(1.0))
    assert all(torch.equal(a, b) for a, b in zip(params + bufs, before))


# ---- the sharded step's halves ---------------------------------------------------------

@pytest.mark.parametrize("dtypes", ["f32", "bf16", "f16-params-f32-grads"])
def test_emulated_norms_are_the_cpu_kernels_with_the_same_bits_on_every_launch(dtypes, monkeypatch):
    def norms():
        groups = []
        for k, name in enumerate(["seed", "lars_off", "ssl"]):
            params, grads = tensors(k, DTYPES[dtypes])
            groups.append((params, grads, dict(OPTION_SETS[name])))
        return [functional.fused_lars_norms(groups)]

    cpu = norms()[0]
    results = on_every_emulated_launch(monkeypatch, norms)
    assert_bits_equal(results)
    got = next(iter(results.values()))[0]
    assert got.dtype == torch.float64 and got.shape == cpu.shape
    torch.testing.assert_close(got, cpu, rtol=1e-5, atol=1e-6)
    n = len(SHAPES)
    assert torch.equal(got[n:2 * n], torch.zeros(n, 3))  # lars=False: no norms
    assert torch.equal(got[:n, 2], torch.zeros(n))  # <g, p> only where the SSL flavour needs it
    assert bool((got[2 * n:, 2] != 0).any())


@pytest.mark.parametrize("grid,cooperative,seed", CONFIGS[::2])
@pytest.mark.parametrize("options", ["seed", "timm", "larc", "ssl", "zero_norm_skip_with_a_trust_clip"])
def test_emulated_apply_with_its_own_norms_is_the_one_call_step_bit_for_bit(options, grid, cooperative, seed,
                                                                            monkeypatch):
    route_through_the_emulator(monkeypatch)
    configure(grid, cooperative, seed)
    one_call = step_groups([options], DTYPES["f32"], steps=1)
    params, grads = tensors(0, DTYPES["f32"])
    grads = tensors(100, DTYPES["f32"])[1]
    bufs = [None] * len(params)
    sums = functional.fused_lars_norms([(params, grads, dict(OPTION_SETS[options]))])
    functional.fused_lars_groups([(params, grads, bufs, dict(OPTION_SETS[options]))], sums=sums)
    assert_bits_equal({"one call": one_call, "norms then apply": params + [b for b in bufs if b is not None]})
    assert emulated_ops().last_launch() == "single"  # apply: the update alone


# ---- the CPU kernel's own tests, on the emulated CUDA kernel ----------------------------

@pytest.fixture
def path():
    """test_lars_math's `path` fixture, the fused path only."""
    return test_lars_math.PATHS_FUSED


def fused_only(test):
    """A test of the CPU kernel, run on the emulated CUDA kernel (fixture
    emulated_kernel): its fused-path cases only, where it is parametrized by path."""
    marks = getattr(test, "pytestmark", [])
    takes_path = any(m.name == "parametrize" and m.args[0] == "path" for m in marks)
    signature = inspect.signature(test)

    @functools.wraps(test)
    def run(*args, emulated_kernel, **kwargs):
        if takes_path:
            kwargs["path"] = "fused"
        test(*args, **kwargs)
        assert emulated_ops().launches() > 0, "the test never stepped through the emulated kernel"

    params = [p for name, p in signature.parameters.items() if not (takes_path and name == "path")]
    run.__signature__ = signature.replace(
        parameters=params + [inspect.Parameter("emulated_kernel", inspect.Parameter.KEYWORD_ONLY)])
    run.pytestmark = [m for m in marks if not (m.name == "parametrize" and m.args[0] == "path")]
    return run


def _takes_path(test):
    return "path" in inspect.signature(test).parameters


for _module, _names in [
    (test_lars_math, [n for n in dir(test_lars_math)
                      if n.startswith("test_") and _takes_path(getattr(test_lars_math, n))]),
    (test_compat, ["test_timm_lars_steps_exactly_like_timm", "test_larc_steps_exactly_like_apex_larc_around_sgd",
                   "test_ssl_lars_steps_exactly_like_the_barlow_twins_lars", "test_every_path_of_a_flavour_agrees",
                   "test_a_flavour_takes_grad_scale_and_found_inf_on_the_fused_path",
                   "test_a_flavours_half_precision_fused_step_is_its_float32_step_rounded",
                   "test_larc_keeps_the_sgds_maximize_as_torch_defines_it",
                   "test_the_ssl_fused_step_keeps_its_ratio_where_g_nearly_cancels_weight_decay"]),
    (test_functional_api, ["test_functional_lars_steps_as_the_optimizer_with_the_same_options",
                           "test_functional_lars_matches_the_float64_contract",
                           "test_functional_lars_with_dampening_copies_d_into_a_fresh_buffer_and_damps_an_old_one",
                           "test_functional_lars_takes_norms_from_given_sums",
                           "test_functional_lars_with_sums_and_dampening_keeps_each_tensor_s_row",
                           "test_fused_lars_groups_with_sums_keeps_each_tensor_s_row_across_groups_and_views",
                           "test_fused_lars_groups_steps_several_groups_as_one_call_each",
                           "test_a_zero_norm_tensor_under_zero_norm_skip_steps_by_its_gradient_whatever_the_trust_clip"]),
    (test_sharded_in_process, ["test_a_sharded_step_equals_the_unsharded_step",
                               "test_grad_scale_is_divided_in_the_sharded_fused_step",
                               "test_an_inf_on_one_rank_skips_the_step_on_every_rank",
                               "test_a_sharded_group_with_dampening_steps_fresh_and_old_buffers_as_sgd"]),
]:
    for _name in _names:
        globals()["test_emulated_" + _name[len("test_"):]] = fused_only(getattr(_module, _name))


# ---- sanitizers --------------------------------------------------------------------------

SANITIZED_RUN = """
import sys, torch
from tests.support.cuda_emulator.build import load
load("sanitized")
E = torch.ops.lars_cuda_emulated
E.configure(3, sys.argv[2] == "cooperative", 0.0, 0, sys.argv[1])
shapes = [(20001,), (5, 4), (21,), (16385,), (1,)]
# tensor 2: 4 bytes into its storage (the tail path; "misaligned" marks it 16-byte aligned)
p, g, b = ([torch.randn(s) if i != 2 else torch.randn(22)[1:] for i, s in enumerate(shapes)] for _ in range(3))
hyper = [0.1, 0.9, 1e-4, 0.02, 0.0, 50.0, 10.0, 0.0]
ssl = [0.5, 0.9, 1e-3, 1e-3, 0.0, float("nan"), float("nan"), 0.0]
E.fused_lars_groups_(p + p[:0], g, b, [3, 2], hyper + ssl, [1 | 8, 1 | 8 | 16 | 32], [None, torch.tensor(0.5)])
sums = E.fused_lars_norms(p, g, [5], [1 | 32])
E.fused_lars_apply_(p, g, b, [5], hyper, [1 | 8], [None], sums)
# LAMB (csrc/cuda/lamb_kernel.cuh): a default group and a cautious, decoupled one with a tensor lr, clipped
p, g, m, v = ([torch.randn(s) if i != 2 else torch.randn(22)[1:] for i, s in enumerate(shapes)] for _ in range(4))
for t in v:
    t.abs_()
lamb = [0.01, 0.9, 0.999, 1e-6, 0.01, 0.0]
cautious = [0.0, 0.9, 0.999, 1e-6, 0.1, 0.05]
E.fused_lamb_groups_(p, g, m, v, [torch.tensor(2.0) for _ in shapes], [3, 2], lamb + cautious,
                     [1 | 2 | 8, 1 | 2 | 8 | 16 | 128], [None, torch.tensor(0.01)], 1.0)
print("clean", flush=True)
"""


def run_sanitized(fault, mode):
    return subprocess.run([sys.executable, "-c", SANITIZED_RUN, fault, mode], env=sanitizer_env(),
                          capture_output=True, text=True, timeout=600,
                          cwd=ROOT)


@pytest.fixture(scope="module")
def sanitized_build():
    """The ASan+UBSan build, made in a process of its own (it must be loaded under LD_PRELOAD)."""
    if VARIANT != "plain":
        pytest.skip("the sanitized build is checked in the plain run")
    done = run_sanitized("", "cooperative")
    assert done.returncode == 0 and "clean" in done.stdout, done.stderr[-3000:]


@pytest.mark.parametrize("mode", ["cooperative", "three-kernel"])
def test_emulated_kernel_runs_clean_under_address_and_undefined_behaviour_sanitizers(mode, sanitized_build):
    done = run_sanitized("", mode)
    assert done.returncode == 0 and "clean" in done.stdout, done.stderr[-3000:]
    assert "runtime error" not in done.stderr and "AddressSanitizer" not in done.stderr


@pytest.mark.parametrize("fault, report", [
    ("read_past", r"AddressSanitizer: heap-buffer-overflow.*\n.*READ of size 4"),
    ("partials_short", r"AddressSanitizer: heap-buffer-overflow.*\n.*WRITE of size \d+"),
    ("misaligned", r"__ldcg: a load of 16 bytes from an address that is not 16-byte aligned"),
])
def test_emulated_sanitized_run_fails_on_an_access_out_of_range_or_misaligned(fault, report, sanitized_build):
    done = run_sanitized(fault, "cooperative")
    assert done.returncode != 0 and "clean" not in done.stdout
    import re

    assert re.search(report, done.stderr), done.stderr[-3000:]
