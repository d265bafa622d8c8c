"""The compiled op lars_cuda::fused_lars_groups_ itself: schema and fake
(opcheck), torch.compile, AMP grad scaling, argument checks and the build."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import pytest
import torch

import lars_cuda
from lars_cuda import Lars, ops

from ..support.compiled import assert_compiled_step_matches_eager
from ..support.machine import expected_kernel
from ..support.reference import lars_step_f64


def op_args(n=3, momentum=0.9, dtype=torch.float32, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(5, 4), (7,), (3, 2, 2)][:n]
    params = [torch.randn(s, generator=gen).to(dtype).to(device) for s in shapes]
    grads = [torch.randn(s, generator=gen).to(dtype).to(device) for s in shapes]
    bufs = [torch.randn(s, generator=gen).to(dtype).to(device) for s in shapes] if momentum else []
    return params, grads, bufs


def one_group(params, grads, bufs, lr=0.1, lr_tensor=None, momentum=0.9, weight_decay=1e-4, eeta=0.02,
              epsilon=0.0, lars=True, nesterov=False, trust_clip=50.0, update_clip=10.0, grad_scale=None,
              found_inf=None):
    """fused_lars_groups_'s arguments for one group with the seed's switches (decay
    exactly where LARS adapts), packed by StepOptions."""
    from lars_cuda.options import StepOptions

    o = StepOptions.of(dict(lr=lr if lr_tensor is None else lr_tensor, momentum=momentum, weight_decay=weight_decay,
                            eeta=eeta, epsilon=epsilon, lars=lars, nesterov=nesterov, trust_clip=trust_clip,
                            update_clip=update_clip))
    return (params, grads, bufs, [len(params)], o.hyper_row(), [o.flags], [o.lr_tensor], grad_scale, found_inf)


@pytest.mark.parametrize("lars_flag", [True, False])
@pytest.mark.parametrize("with_scale", [False, True])
def test_opcheck_passes(lars_flag, with_scale):
    params, grads, bufs = op_args()
    extra = dict(grad_scale=torch.tensor(4.0), found_inf=torch.tensor(0.0)) if with_scale else {}
    torch.library.opcheck(torch.ops.lars_cuda.fused_lars_groups_.default,
                          one_group(params, grads, bufs, lars=lars_flag, lr_tensor=torch.tensor(0.1), **extra))


def test_torch_compile_traces_a_fused_step_without_graph_breaks():
    assert_compiled_step_matches_eager(
        lambda ps: Lars(ps, lr=torch.tensor(0.5), momentum=0.9, weight_decay=1e-4, eeta=0.02, fused=True))


def test_grad_scale_unscales_grads_and_their_norms():
    params, grads, bufs = op_args()
    want = [p.clone() for p in params]
    want_bufs = [b.clone() for b in bufs]
    torch.ops.lars_cuda.fused_lars_groups_(*one_group(want, grads, want_bufs))
    scaled = [g * 1024 for g in grads]
    torch.ops.lars_cuda.fused_lars_groups_(*one_group(params, scaled, bufs, grad_scale=torch.tensor(1024.0),
                                          found_inf=torch.tensor(0.0)))
    for a, b in zip(params + bufs, want + want_bufs):
        torch.testing.assert_close(a, b)


def test_found_inf_skips_the_step_entirely():
    params, grads, bufs = op_args()
    before = [t.clone() for t in params + bufs]
    torch.ops.lars_cuda.fused_lars_groups_(*one_group(params, grads, bufs, grad_scale=torch.tensor(2.0),
                                          found_inf=torch.tensor(1.0)))
    for a, b in zip(params + bufs, before):
        assert torch.equal(a, b)


def test_grad_scaler_drives_the_fused_optimizer_like_torch_fused_sgd():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = Lars(model.parameters(), lr=0.5, momentum=0.9, eeta=0.05, fused=True)
    assert opt._step_supports_amp_scaling
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(8, 4)
    scaler.scale(model(x).square().mean()).backward()
    grads = [p.grad.clone() / 256.0 for p in model.parameters()]
    scaler.step(opt)
    scaler.update()
    for p, b, g in zip(model.parameters(), before, grads):
        want, _ = lars_step_f64(b, g, None, lr=0.5, momentum=0.9, eeta=0.05)
        torch.testing.assert_close(p.detach(), want.float(), rtol=1e-5, atol=1e-6)

    # An inf in a gradient: the step is skipped and the scale shrinks.
    snapshot = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    scaler.scale(model(x).square().mean()).backward()
    model.weight.grad[0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()
    for p, s in zip(model.parameters(), snapshot):
        assert torch.equal(p.detach(), s)
    assert scaler.get_scale() == 128.0


def test_non_fused_paths_leave_unscaling_to_grad_scaler():
    opt = Lars([torch.nn.Parameter(torch.ones(2))], lr=0.1, foreach=True)
    assert not opt._step_supports_amp_scaling


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda p, g, b: g.pop(), ValueError, "grads"),
        (lambda p, g, b: b.pop(), ValueError, "momentum buffers"),
        (lambda p, g, b: g.__setitem__(0, g[0].t()), ValueError, "shape"),
        (lambda p, g, b: p.__setitem__(0, p[0].double()), TypeError, "float32, float16 or bfloat16"),
        (lambda p, g, b: g.__setitem__(1, g[1].to_sparse()), TypeError, "sparse"),
        (lambda p, g, b: b.__setitem__(0, b[0].half()), TypeError, "momentum buffer"),
    ],
)
def test_bad_arguments_raise_before_anything_is_written(mutate, error, match):
    params, grads, bufs = op_args()
    mutate(params, grads, bufs)
    before = [t.clone() for t in params]
    with pytest.raises(error, match=match):
        torch.ops.lars_cuda.fused_lars_groups_(*one_group(params, grads, bufs))
    for a, b in zip(params, before):
        assert torch.equal(a, b)


def test_a_grad_laid_out_unlike_its_param_is_handled():
    params, grads, bufs = op_args(n=1)
    want = [params[0].clone()]
    want_bufs = [bufs[0].clone()]
    torch.ops.lars_cuda.fused_lars_groups_(*one_group(want, grads, want_bufs))
    transposed = [grads[0].t().contiguous().t()]  # same values, column-major
    assert transposed[0].stride() != params[0].stride()
    torch.ops.lars_cuda.fused_lars_groups_(*one_group(params, transposed, bufs))
    torch.testing.assert_close(params[0], want[0])


def test_mixed_dtypes_in_one_call_are_bucketed():
    p32, g32, b32 = op_args(n=2)
    p16, g16, b16 = op_args(n=2, dtype=torch.bfloat16, seed=1)
    want = [t.clone() for t in p32 + p16]
    want_bufs = [t.clone() for t in b32 + b16]
    torch.ops.lars_cuda.fused_lars_groups_(*one_group(want[:2], g32, want_bufs[:2]))
    torch.ops.lars_cuda.fused_lars_groups_(*one_group(want[2:], g16, want_bufs[2:]))
    params, bufs = p32 + p16, b32 + b16
    torch.ops.lars_cuda.fused_lars_groups_(*one_group(params, g32 + g16, bufs))
    for a, b in zip(params + bufs, want + want_bufs):
        assert torch.equal(a, b)


def test_a_strided_view_param_is_stepped_like_its_contiguous_copy():
    base = torch.randn(6, 6, generator=torch.Generator().manual_seed(5))
    p = base[:, :3]  # every other half-row: not dense
    g = torch.randn(6, 3, generator=torch.Generator().manual_seed(6))
    buf = torch.randn(6, 3, generator=torch.Generator().manual_seed(7))
    want, want_buf = p.clone(), buf.clone()
    torch.ops.lars_cuda.fused_lars_groups_(*one_group([want], [g], [want_buf]))
    untouched = base[:, 3:].clone()
    torch.ops.lars_cuda.fused_lars_groups_(*one_group([p], [g], [buf]))
    assert torch.equal(p, want) and torch.equal(buf, want_buf)
    assert torch.equal(base[:, 3:], untouched)  # the gaps between the view's rows are not written


def test_a_buffer_laid_out_unlike_its_param_is_written_back_in_its_own_layout():
    params, grads, bufs = op_args(n=1)
    want, want_buf = [params[0].clone()], [bufs[0].clone()]
    torch.ops.lars_cuda.fused_lars_groups_(*one_group(want, grads, want_buf))
    column_major = [bufs[0].t().contiguous().t()]
    torch.ops.lars_cuda.fused_lars_groups_(*one_group(params, grads, column_major))
    assert torch.equal(params[0], want[0]) and torch.equal(column_major[0], want_buf[0])
    assert column_major[0].stride() == (1, 5)


def test_an_overlapping_param_is_refused():
    p = torch.randn(1, 4).expand(3, 4)  # three rows share one row of memory
    with pytest.raises(ValueError, match="overlapping"):
        torch.ops.lars_cuda.fused_lars_groups_(*one_group([p], [torch.randn(3, 4)], [torch.zeros(3, 4)]))


def test_a_param_given_twice_is_refused():
    params, grads, bufs = op_args(n=2)
    params[1] = params[0]
    grads[1] = grads[0]
    bufs[1] = bufs[0]
    before = params[0].clone()
    with pytest.raises(ValueError, match="appears twice"):
        torch.ops.lars_cuda.fused_lars_groups_(*one_group(params, grads, bufs))
    assert torch.equal(params[0], before)


def test_a_step_is_bit_reproducible():
    outs = []
    for _ in range(2):
        params, grads, bufs = op_args(seed=3)
        big = torch.randn(300_000, generator=torch.Generator().manual_seed(4))
        params.append(big.clone())
        grads.append(big.flip(0).clone())
        bufs.append(torch.zeros_like(big))
        torch.ops.lars_cuda.fused_lars_groups_(*one_group(params, grads, bufs))
        outs.append(params)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


@pytest.mark.skipif(os.environ.get("LARS_BIG_TEST") != "1",
                    reason="needs ~9 GB and minutes on 2 cores; LARS_BIG_TEST=1 runs it (gpu_check.sh does)")
def test_tensors_over_2_to_the_31_elements_are_indexed_with_64_bits():
    n = 2**31 + 1024
    p = torch.ones(n, dtype=torch.bfloat16)
    g = torch.zeros(n, dtype=torch.bfloat16)
    g[-1] = 1.0
    torch.ops.lars_cuda.fused_lars_groups_(*one_group([p], [g], [], momentum=0.0, lars=False, lr=0.5))
    assert p[-1].item() == 0.5 and p[0].item() == 1.0


def _extension_path():
    return glob.glob(os.path.join(os.path.dirname(lars_cuda.__file__), "_C*.so"))[0]


def _cuobjdump(flag: str) -> str:
    """cuobjdump's listing of the extension's device code, for a build made the way
    CI makes it (CUDA sources, no visible GPU, default architectures)."""
    if not ops.has_fused("cuda"):
        pytest.skip("the extension was built without CUDA (no nvcc or a CPU build of torch)")
    if torch.cuda.is_available() or os.environ.get("TORCH_CUDA_ARCH_LIST"):
        pytest.skip("a build with a visible GPU or TORCH_CUDA_ARCH_LIST targets those architectures only")
    cuobjdump = shutil.which("cuobjdump") or next(iter(glob.glob("/usr/local/cuda*/bin/cuobjdump")), None)
    if cuobjdump is None:
        import triton  # ships a cuobjdump

        cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return subprocess.run([cuobjdump, flag, _extension_path()], capture_output=True, text=True, check=True).stdout


def test_extension_built_with_cuda_holds_sm80_and_sm90_code():
    out = _cuobjdump("--list-elf")
    assert "sm_80" in out and "sm_90" in out, out


def test_extension_built_with_cuda_holds_ptx_for_newer_cards():
    """compute_90 PTX beside the SASS: a Blackwell (or any later) card JIT-compiles it
    instead of finding no kernel image."""
    out = _cuobjdump("--list-ptx")
    assert ".ptx" in out and "sm_90" in out, out


def test_has_fused_reports_the_cpu_kernel():
    assert ops.has_fused("cpu")
    assert ops.cpu_kernel() in ("avx512", "avx2", "default")


@pytest.mark.parametrize("capability", ["avx512", "avx2", "default"])
def test_cpu_kernel_follows_torchs_own_instruction_set_capped_by_the_cpu(capability):
    """ATEN_CPU_CAPABILITY moves torch's kernels and ours alike (a fresh process:
    torch reads it once); ours never asks for instructions this CPU lacks (torch
    reports AVX512 when told to, even on an AVX2-only CPU)."""
    env = {k: v for k, v in os.environ.items() if k != "LARS_CUDA_CPU_KERNEL"}
    env["ATEN_CPU_CAPABILITY"] = capability
    code = ("import torch, lars_cuda; from lars_cuda import ops; "
            "print(torch.backends.cpu.get_cpu_capability(), ops.cpu_kernel())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    torch_cap, ours = out.stdout.split()
    if torch_cap.lower() != capability:
        pytest.skip(f"torch runs {torch_cap} here, not {capability}")
    assert ours == expected_kernel(capability)


def test_make_tests_cpu_builds_pass_covers_every_build_this_cpu_runs_but_its_best():
    """make test-cpu-builds runs the kernel tests on tests.support.machine.builds_below_best(); the
    suite itself runs the best (what torch's own capability picks on this CPU)."""
    from ..support.machine import BUILDS_BEST_FIRST, builds_below_best, can_run, expected_kernel

    below = builds_below_best()
    assert expected_kernel("avx512") not in below
    assert sorted(below + [expected_kernel("avx512")]) == sorted(b for b in BUILDS_BEST_FIRST if can_run(b))


GROUP_OPTIONS = [
    dict(lr=0.1, momentum=0.9, weight_decay=1e-4, eeta=0.02, epsilon=0.0, trust_clip=50.0, update_clip=10.0,
         lars=True, nesterov=False, maximize=False),
    dict(lr=0.05, momentum=0.0, weight_decay=0.0, eeta=0.02, epsilon=0.0, trust_clip=None, update_clip=0.5,
         lars=False, nesterov=False, maximize=False),
    dict(lr=torch.tensor([0.3]), momentum=0.8, weight_decay=0.01, eeta=0.5, epsilon=1e-3, trust_clip=2.0,
         update_clip=None, lars=True, nesterov=True, maximize=True),
]


def pack(groups_of_tensors):
    """fused_lars_groups_'s flat arguments for GROUP_OPTIONS, packed by StepOptions
    (the layout's Python owner; tests/unit/test_layout.py holds it to csrc/group_args.h)."""
    from lars_cuda.options import StepOptions

    params, grads, bufs, sizes, hyper, flags, lrs = [], [], [], [], [], [], []
    for (p, g, b), o in zip(groups_of_tensors, GROUP_OPTIONS):
        options = StepOptions.of(o)  # the seed's switches: decay where lars, no dampening
        params += p
        grads += g
        bufs += b if o["momentum"] else []
        sizes.append(len(p))
        lrs.append(options.lr_tensor)
        hyper += options.hyper_row()
        flags.append(options.flags)
    return params, grads, bufs, sizes, hyper, flags, lrs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_groups_op_steps_each_group_as_the_float64_oracle(dtype):
    tensors = [op_args(n=3, dtype=dtype, seed=s) for s in range(3)]
    start = [([p.clone() for p in ps], [b.clone() for b in bs]) for ps, _, bs in tensors]
    torch.ops.lars_cuda.fused_lars_groups_(*pack(tensors))
    for (ps, gs, bs), (p0s, b0s), o in zip(tensors, start, GROUP_OPTIONS):
        kw = {k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in o.items()}
        for i, (p, g) in enumerate(zip(ps, gs)):
            want_p, want_b = lars_step_f64(p0s[i], g, b0s[i] if o["momentum"] else None, **kw)
            tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
            assert not torch.equal(p, p0s[i])
            torch.testing.assert_close(p.double(), want_p.to(dtype).double(), **tol)
            if o["momentum"]:
                torch.testing.assert_close(bs[i].double(), want_b.to(dtype).double(), **tol)


def test_a_bad_tensor_in_the_last_group_leaves_every_group_unwritten():
    tensors = [op_args(n=3, seed=s) for s in range(3)]
    tensors[2][0][1] = tensors[2][0][1].double()  # param 1 of group 2: a dtype the kernel refuses
    before = [t.clone() for ps, _, bs in tensors for t in ps + bs]
    with pytest.raises(TypeError, match="param 1 must be float32"):
        torch.ops.lars_cuda.fused_lars_groups_(*pack(tensors))
    after = [t for ps, _, bs in tensors for t in ps + bs]
    assert all(torch.equal(a, b) for a, b in zip(after, before))


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda a: a[3].__setitem__(0, 2), "group sizes add up to"),
        (lambda a: a[4].pop(), "hyper values"),
        (lambda a: a[2].pop(), "momentum buffers"),
        (lambda a: a[4].__setitem__(0, -1.0), "invalid lr"),
    ],
)
def test_the_groups_op_checks_its_layout(edit, match):
    args = list(pack([op_args(n=3, seed=s) for s in range(3)]))
    edit(args)
    with pytest.raises(ValueError, match=match):
        torch.ops.lars_cuda.fused_lars_groups_(*args)


def test_opcheck_passes_for_the_groups_op():
    torch.library.opcheck(torch.ops.lars_cuda.fused_lars_groups_.default,
                          (*pack([op_args(n=3, seed=s) for s in range(3)]), torch.tensor(2.0), torch.tensor(0.0)))


def _pretend_a_card_without_kernel_code(monkeypatch):
    from lars_cuda import plan

    monkeypatch.setattr(ops, "fused_runs_on", lambda device: False)
    monkeypatch.setattr(ops, "describe_cuda_device", lambda device: "NVIDIA B200 (sm_100)")
    monkeypatch.setattr(ops, "cuda_arch", lambda device: "10.0")
    plan._WARNED_UNAVAILABLE.clear()


def test_the_default_falls_back_to_foreach_with_one_warning_where_the_kernel_has_no_code(monkeypatch):
    _pretend_a_card_without_kernel_code(monkeypatch)
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    opt = Lars([p], lr=0.1)
    with pytest.warns(RuntimeWarning, match=r"no code for NVIDIA B200 \(sm_100\).*TORCH_CUDA_ARCH_LIST=10.0.*foreach"):
        opt.step()
    assert not torch.equal(p.detach(), torch.ones(3))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()  # warned once per device


def test_fused_true_warns_once_naming_the_card_and_the_rebuild_command_and_steps_by_foreach(monkeypatch):
    _pretend_a_card_without_kernel_code(monkeypatch)
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    q = torch.nn.Parameter(torch.ones(3))
    q.grad = torch.ones(3)
    opt = Lars([p], lr=0.1, fused=True)
    with pytest.warns(RuntimeWarning, match=r"fused=True was asked for, but the fused kernel has no code for "
                                            r"NVIDIA B200 \(sm_100\).*TORCH_CUDA_ARCH_LIST=10.0.*foreach"):
        opt.step()
    Lars([q], lr=0.1, foreach=True).step()
    assert torch.equal(p.detach(), q.detach())
    assert not opt._step_supports_amp_scaling  # GradScaler unscales for the foreach path
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()  # warned once per device


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_multi_chunk_tensors_anywhere_in_the_list_and_across_waves_match_the_oracle(dtype):
    """Tensors of several 16 Ki-element chunks before, between and after small ones, and
    enough bytes for several 16 MiB waves: every chunk of every tensor enters its norm."""
    shapes = [(70_001,), (3,), (40_000,), (5, 5), (1_500_000,), (2_500_000,), (16_385,), (7,)]
    gen = torch.Generator().manual_seed(11)
    params = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    # Grads whose last chunk dominates the norm, so a chunk left out changes the ratio a lot.
    grads = [torch.randn(s, generator=gen).mul_(torch.linspace(0.1, 3.0, s[0]).view(-1, *[1] * (len(s) - 1)))
             .to(dtype) for s in shapes]
    bufs = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    start_p, start_b = [p.clone() for p in params], [b.clone() for b in bufs]
    torch.ops.lars_cuda.fused_lars_groups_(*one_group(params, grads, bufs, eeta=0.5, lr=0.3))
    for p, g, p0, b0 in zip(params, grads, start_p, start_b):
        want, _ = lars_step_f64(p0, g, b0, lr=0.3, momentum=0.9, weight_decay=1e-4, eeta=0.5)
        step, want_step = (p0.double() - p.double()), (p0.double() - want)
        if dtype == torch.float32:
            torch.testing.assert_close(step, want_step, rtol=1e-4, atol=1e-6)
        else:  # compare the step's size: one bf16 rounding per element
            assert abs(step.norm() / want_step.norm() - 1) < 0.01


def test_each_op_s_errors_start_with_its_own_name_and_the_group():
    tensors = [op_args(n=3, seed=s) for s in range(3)]
    tensors[2][0][1] = tensors[2][0][1].double()
    with pytest.raises(TypeError, match=r"^fused_lars_groups_: group 2: param 1 must be float32"):
        torch.ops.lars_cuda.fused_lars_groups_(*pack(tensors))
    with pytest.raises(ValueError, match=r"^fused_lars_norms: 1 groups need as many flags, got 2"):
        torch.ops.lars_cuda.fused_lars_norms([torch.ones(2)], [torch.ones(2)], [1], [1, 1])
    nan = float("nan")
    with pytest.raises(TypeError, match=r"^fused_lars_apply_: sums must be float64"):
        torch.ops.lars_cuda.fused_lars_apply_([torch.ones(2)], [torch.ones(2)], [], [1],
                                              [0.1, 0, 0, 1e-3, 0, nan, nan, 0], [1], [None], torch.zeros(1, 3))
