"""The CUDA kernel against the float64 oracle and the CPU kernel. Skipped without
a GPU; benchmarks/gpu_check.sh runs them on the GPU machine."""

from __future__ import annotations

import os

import pytest
import torch

from lars_cuda import Lars, ops

from ..conftest import requires_fused_cuda
from ..support.reference import lars_step_f64
from ..unit.test_fused_op import one_group
from ..support.paths import BENCHMARKS

pytestmark = [pytest.mark.cuda, requires_fused_cuda]

HYPER = dict(lr=0.7, momentum=0.9, weight_decay=1e-4, eeta=0.02, epsilon=1e-5)
SEED = dict(lr=0.1, momentum=0.9, weight_decay=1e-4, eeta=1e-3)  # (the seed's clips 50 and 10: one_group's defaults)
SHAPES = [(64, 3, 7, 7), (64,), (256, 64, 1, 1), (1000, 2048), (0,), (3,), (70_001,)]


def _set_knob(monkeypatch, name, value):
    """A CUDA launch knob for this test: the extension reads them once
    (csrc/launch_config.h), so it re-reads them here and after the test."""
    if value is None:
        monkeypatch.delenv(name, raising=False)
    else:
        monkeypatch.setenv(name, value)
    torch.ops.lars_cuda.reload_launch_config()


@pytest.fixture(autouse=True)
def _knobs_reread_after_each_test():
    yield  # (torn down after monkeypatch has restored the environment)
    if ops.has_fused("cpu"):
        torch.ops.lars_cuda.reload_launch_config()


def guarded(shape, dtype, fill, offset=1024):
    """A view `offset` elements into a bigger buffer whose margins hold NaN: a
    write out of bounds shows (an odd offset also breaks 16-byte alignment)."""
    n = int(torch.tensor(shape).prod().item()) if len(shape) else 1
    buf = torch.full((n + offset + 1024,), float("nan"), dtype=dtype, device="cuda")
    view = buf[offset:offset + n].view(shape)
    view.copy_(fill)
    return buf, view


def margins_untouched(buf, n, offset=1024):
    return bool(torch.isnan(buf[:offset]).all() and torch.isnan(buf[offset + n:]).all())


def check_against_oracle(dtype, nesterov, offset=1024):
    """One fused step on fresh random tensors (views `offset` elements into
    NaN-filled buffers) against the float64 oracle; the margins must stay NaN."""
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))  # fresh inputs each run
    ps, gs, bs, bufs = [], [], [], []
    for shape in SHAPES:
        p0 = torch.randn(shape, generator=gen).to(dtype)
        g0 = (torch.randn(shape, generator=gen) * 30).to(dtype)  # some elements hit the clip
        b0 = torch.randn(shape, generator=gen).to(dtype)
        pb, p = guarded(shape, dtype, p0, offset)
        bb, b = guarded(shape, dtype, b0, offset)
        ps.append(p)
        gs.append(g0.cuda())
        bs.append(b)
        bufs.append((pb, bb, p0, g0, b0))
    torch.ops.lars_cuda.fused_lars_groups_(*one_group(ps, gs, bs, nesterov=nesterov, **HYPER))
    torch.cuda.synchronize()
    for (pb, bb, p0, g0, b0), p, b in zip(bufs, ps, bs):
        n = p.numel()
        assert margins_untouched(pb, n, offset) and margins_untouched(bb, n, offset)
        want_p, want_b = lars_step_f64(p0, g0, b0, nesterov=nesterov, **HYPER)
        if dtype == torch.float32:
            scale = max(want_p.abs().max().item(), 1.0) if n else 1.0
            assert ((p.double().cpu() - want_p).abs().max().item() if n else 0.0) <= 1e-6 * scale
        else:
            tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.bfloat16 else dict(rtol=2e-3, atol=2e-3)
            torch.testing.assert_close(p.cpu(), want_p.to(dtype), **tol)
            torch.testing.assert_close(b.cpu(), want_b.to(dtype), **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("launch", ["cooperative", "three-kernel"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_cuda_op_matches_the_float64_oracle(dtype, launch, nesterov, monkeypatch):
    if launch == "three-kernel":
        _set_knob(monkeypatch, "LARS_CUDA_LAUNCH", "three-kernel")
    check_against_oracle(dtype, nesterov)
    assert ops.last_cuda_launch() == launch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("wave_mb", ["0", "0.25", "4"])
def test_every_wave_size_matches_the_float64_oracle(dtype, wave_mb, monkeypatch):
    _set_knob(monkeypatch, "LARS_CUDA_WAVE_MB", wave_mb)  # 0: one wave; 0.25: about one tensor per wave
    check_against_oracle(dtype, nesterov=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_tensors_not_16_byte_aligned_take_the_scalar_path_and_match_the_oracle(dtype):
    check_against_oracle(dtype, nesterov=False, offset=1)


def test_grid_size_wave_size_and_launch_path_give_the_same_bits(monkeypatch):
    torch.manual_seed(3)
    shapes = [(2048, 1000), (64, 3, 7, 7), (77,), (513, 129), (4096,)]
    p0 = [torch.randn(s, device="cuda") for s in shapes]
    g = [torch.randn(s, device="cuda") for s in shapes]
    b0 = [torch.randn(s, device="cuda") for s in shapes]
    results = {}
    for name, env in [("default", {}), ("one wave", {"LARS_CUDA_WAVE_MB": "0"}),
                      ("small waves", {"LARS_CUDA_WAVE_MB": "0.1"}), ("1 block/SM", {"LARS_CUDA_BLOCKS_PER_SM": "1"}),
                      ("three kernels", {"LARS_CUDA_LAUNCH": "three-kernel"})]:
        for k in ("LARS_CUDA_WAVE_MB", "LARS_CUDA_BLOCKS_PER_SM", "LARS_CUDA_LAUNCH"):
            _set_knob(monkeypatch, k, None)
        for k, v in env.items():
            _set_knob(monkeypatch, k, v)
        ps, bs = [t.clone() for t in p0], [t.clone() for t in b0]
        torch.ops.lars_cuda.fused_lars_groups_(*one_group(ps, g, bs, nesterov=True, **SEED))
        results[name] = ps + bs
    for name, out in results.items():
        assert all(torch.equal(a, b) for a, b in zip(out, results["default"])), name


def test_cuda_and_cpu_kernels_agree_over_steps():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 6 * 6, 10))
    cuda_model = __import__("copy").deepcopy(model).cuda()
    from lars_cuda import create_optimizer_lars

    kw = dict(lr=1.0, momentum=0.9, weight_decay=5e-4, bn_bias_separately=True, eeta=0.01, fused=True)
    opt_cpu, opt_gpu = create_optimizer_lars(model, **kw), create_optimizer_lars(cuda_model, **kw)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    for _ in range(5):
        for m, opt, dev in ((model, opt_cpu, "cpu"), (cuda_model, opt_gpu, "cuda")):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x.to(dev)), y.to(dev)).backward()
            opt.step()
    for a, b in zip(model.parameters(), cuda_model.parameters()):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-4, atol=1e-5)


def test_cuda_step_is_bit_reproducible():
    outs = []
    for _ in range(2):
        torch.manual_seed(1)
        ps = [torch.randn(s, device="cuda") for s in [(4096, 1024), (77,), (3, 3)]]
        gs = [torch.randn_like(p) for p in ps]
        bs = [torch.zeros_like(p) for p in ps]
        torch.ops.lars_cuda.fused_lars_groups_(*one_group(ps, gs, bs, **SEED))
        outs.append(ps)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_found_inf_on_the_device_skips_the_step_and_grad_scale_unscales():
    ps = [torch.randn(1000, device="cuda")]
    gs = [torch.randn(1000, device="cuda")]
    bs = [torch.randn(1000, device="cuda")]
    before = [ps[0].clone(), bs[0].clone()]
    torch.ops.lars_cuda.fused_lars_groups_(*one_group(ps, gs, bs, **SEED, grad_scale=torch.tensor(8.0, device="cuda"),
                                                      found_inf=torch.tensor(1.0, device="cuda")))
    assert torch.equal(ps[0], before[0]) and torch.equal(bs[0], before[1])
    want_p, want_b = [before[0].clone()], [before[1].clone()]
    torch.ops.lars_cuda.fused_lars_groups_(*one_group(want_p, gs, want_b, **SEED))
    torch.ops.lars_cuda.fused_lars_groups_(*one_group(ps, [gs[0] * 8], bs, **SEED,
                                                      grad_scale=torch.tensor(8.0, device="cuda"),
                                                      found_inf=torch.tensor(0.0, device="cuda")))
    torch.testing.assert_close(ps[0], want_p[0])


def test_tensor_lr_step_is_captured_and_replayed_in_a_cuda_graph():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4096, 64, device="cuda"))
    p.grad = torch.randn_like(p)
    lr = torch.tensor(0.1, device="cuda")
    opt = Lars([p], lr=lr, momentum=0.9, weight_decay=1e-4, fused=True)
    opt.step()  # warm-up: state and the device tensor table exist before capture
    ref = Lars([torch.nn.Parameter(p.detach().clone())], lr=0.1, momentum=0.9, weight_decay=1e-4, fused=True)
    ref.param_groups[0]["params"][0].grad = p.grad.clone()
    ref.state[ref.param_groups[0]["params"][0]]["momentum_buffer"] = opt.state[p]["momentum_buffer"].clone()

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph):
        opt.step()
    torch.cuda.current_stream().wait_stream(stream)
    for value in (0.1, 0.05):
        lr.fill_(value)
        ref.param_groups[0]["lr"] = value
        graph.replay()
        ref.step()
    torch.cuda.synchronize()
    torch.testing.assert_close(p.detach(), ref.param_groups[0]["params"][0].detach())


@pytest.mark.parametrize("launch", ["cooperative", "three-kernel"])
def test_one_kernel_launch_per_step_with_the_seeds_grouping(launch, monkeypatch):
    """create_optimizer_lars(bn_bias_separately=True): two param groups (LARS + decay,
    and BN/bias without either), ONE launch per step (three on the fallback path)."""
    from torch.profiler import ProfilerActivity, profile

    from lars_cuda import create_optimizer_lars

    if launch == "three-kernel":
        _set_knob(monkeypatch, "LARS_CUDA_LAUNCH", "three-kernel")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3), torch.nn.BatchNorm2d(64), torch.nn.Flatten(),
                                torch.nn.LazyLinear(10)).cuda()
    model(torch.randn(2, 3, 8, 8, device="cuda")).sum().backward()
    opt = create_optimizer_lars(model, lr=0.1, momentum=0.9, weight_decay=1e-4, bn_bias_separately=True, fused=True)
    assert len(opt.param_groups) == 2 and all(g["params"] for g in opt.param_groups)
    opt.step()
    opt.step()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            opt.step()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    names = [e.name for e in kernels]
    assert len(kernels) == (3 if launch == "cooperative" else 9), names
    assert all("lars_kernel" in n for n in names), names
    assert ops.last_cuda_launch() == launch


@pytest.mark.skipif(os.environ.get("LARS_BIG_TEST") != "1", reason="LARS_BIG_TEST=1 (gpu_check.sh) runs it")
def test_a_tensor_over_2_to_the_31_elements_is_stepped_to_its_last_element():
    n = 2**31 + 4096
    free, _ = torch.cuda.mem_get_info()
    if free < 3 * n * 2 + 2**30:
        pytest.skip("not enough GPU memory")
    p = torch.ones(n, dtype=torch.bfloat16, device="cuda")
    g = torch.ones(n, dtype=torch.bfloat16, device="cuda")
    torch.ops.lars_cuda.fused_lars_groups_(*one_group([p], [g], [], lr=100.0, momentum=0.0, weight_decay=0.0,
                                                      eeta=1e-3, trust_clip=None, update_clip=None))
    # ||p|| = ||g||, so r = eeta = 1e-3 and every element moves by 100 * 1e-3
    # (large enough to show in bfloat16: 0.9 rounds to 0.8984375, not to 1).
    want = torch.tensor(0.9, dtype=torch.bfloat16).item()
    assert want != 1.0
    for i in (0, 2**31 - 1, 2**31, n - 1):
        assert p[i].item() == want, i


def test_the_kernel_has_code_for_this_card():
    assert ops.fused_runs_on("cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_groups_op_steps_three_groups_as_the_float64_oracle_on_cuda(dtype):
    """fused_lars_groups_ (what Lars calls): per-group options incl. maximize, a
    disabled clip and a CUDA lr tensor, one op call."""
    from ..unit.test_fused_op import GROUP_OPTIONS, op_args, pack

    tensors = [op_args(n=3, dtype=dtype, device="cuda", seed=s) for s in range(3)]
    start = [([p.clone() for p in ps], [b.clone() for b in bs]) for ps, _, bs in tensors]
    args = list(pack(tensors))
    args[6] = [t.cuda() if t is not None else None for t in args[6]]
    torch.ops.lars_cuda.fused_lars_groups_(*args)
    for (ps, gs, bs), (p0s, b0s), o in zip(tensors, start, GROUP_OPTIONS):
        kw = {k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in o.items()}
        for i, (p, g) in enumerate(zip(ps, gs)):
            want_p, want_b = lars_step_f64(p0s[i].cpu(), g.cpu(), b0s[i].cpu() if o["momentum"] else None, **kw)
            tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
            torch.testing.assert_close(p.cpu().double(), want_p.to(dtype).double(), **tol)
            if o["momentum"]:
                torch.testing.assert_close(bs[i].cpu().double(), want_b.to(dtype).double(), **tol)


def test_a_strided_view_param_is_stepped_on_cuda_like_its_contiguous_copy():
    view = torch.nn.Parameter(torch.randn(10, 5, 2, device="cuda")[..., 0])
    dense = torch.nn.Parameter(view.detach().clone())
    out = []
    for p in (view, dense):
        opt = Lars([p], lr=0.3, eeta=0.05, momentum=0.9, weight_decay=0.01, fused=True)
        for i in range(3):
            p.grad = torch.ones_like(p) * (i + 1) + p.detach()
            opt.step()
        out.append(p.detach().clone())
    assert torch.equal(out[0], out[1])


def test_maximize_on_cuda_equals_minimising_the_negated_gradient():
    res = []
    for maximize, sign in ((True, 1.0), (False, -1.0)):
        a = torch.nn.Parameter(torch.linspace(-1, 2, 70_001, device="cuda"))
        opt = Lars([a], lr=0.3, eeta=0.05, momentum=0.9, weight_decay=0.01, maximize=maximize, fused=True)
        for i in range(3):
            a.grad = sign * torch.linspace(0.5, -1.5, 70_001, device="cuda") * (i + 1)
            opt.step()
        res.append(a.detach().clone())
    assert torch.equal(res[0], res[1])


# ---- the sharded step's halves and DTensor params on CUDA ------------------------------

@pytest.mark.parametrize("launch", ["cooperative", "three-kernel"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_apply_with_own_norms_is_bit_identical_to_the_one_call_step_on_cuda(dtype, launch, monkeypatch):
    from lars_cuda.functional import fused_lars_groups

    if launch == "three-kernel":
        _set_knob(monkeypatch, "LARS_CUDA_LAUNCH", "three-kernel")
    gen = torch.Generator().manual_seed(0)
    shapes = [(33, 17), (70_001,), (0,), (5, 3, 3), (7,)]
    made = [[torch.randn(s, generator=gen).to(dtype).cuda() for s in shapes] for _ in range(3)]
    opts = dict(lr=0.1, momentum=0.9, weight_decay=1e-3, eeta=1e-3, epsilon=1e-5, trust_clip=50.0, update_clip=10.0,
                maximize=False)

    def groups():
        ps, gs, bs = ([t.clone() for t in ts] for ts in made)
        return [(ps[:4], gs[:4], bs[:4], dict(opts, lars=True, nesterov=True)),
                (ps[4:], gs[4:], bs[4:], dict(opts, lars=False, nesterov=False, weight_decay=0.0))]

    a, b = groups(), groups()
    fused_lars_groups(a)
    sums = ops.fused_lars_norms([p for g in b for p in g[0]], [t for g in b for t in g[1]], [4, 1], [1, 0])
    assert sums.device.type == "cuda" and sums.dtype == torch.float64
    torch.testing.assert_close(sums[1, :2], torch.stack([made[0][1].double().square().sum(),
                                                         made[1][1].double().square().sum()]), rtol=1e-5, atol=0)
    assert sums[4].tolist() == [0.0, 0.0, 0.0]
    fused_lars_groups(b, sums=sums)
    torch.cuda.synchronize()
    for (pa, _, ba, _), (pb, _, bb, _) in zip(a, b):
        for x, y in zip(pa + ba, pb + bb):
            assert torch.equal(x, y)


@pytest.fixture
def one_rank_nccl(tmp_path):
    """A one-rank NCCL process group and mesh: the sharded step's CUDA path end to end."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("nccl", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        yield init_device_mesh("cuda", (1,))
    finally:
        dist.destroy_process_group()


def _dtensor_pair(mesh, fused_kw):
    from torch.distributed.tensor import Shard, distribute_tensor

    from lars_cuda import create_optimizer_lars

    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3), torch.nn.BatchNorm2d(64), torch.nn.Flatten(),
                                torch.nn.Linear(64 * 6 * 6, 10)).cuda()
    sharded = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3), torch.nn.BatchNorm2d(64), torch.nn.Flatten(),
                                  torch.nn.Linear(64 * 6 * 6, 10)).cuda()
    sharded.load_state_dict(plain.state_dict())
    for module in sharded.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            setattr(module, name, torch.nn.Parameter(distribute_tensor(p.detach(), mesh, [Shard(0)])))
    for a, b in zip(plain.parameters(), sharded.parameters()):
        a.grad = torch.randn_like(a)
        b.grad = distribute_tensor(a.grad.clone(), mesh, [Shard(0)])
    kw = dict(lr=torch.tensor(0.1, device="cuda"), momentum=0.9, weight_decay=1e-4, bn_bias_separately=True)
    return (plain, create_optimizer_lars(plain, **kw, **fused_kw),
            sharded, create_optimizer_lars(sharded, **{**kw, "lr": torch.tensor(0.1, device="cuda")}, **fused_kw))


def test_sharded_step_on_a_one_rank_cuda_mesh_is_bit_identical_to_the_unsharded_step(one_rank_nccl):
    plain, opt_plain, sharded, opt_sharded = _dtensor_pair(one_rank_nccl, dict(fused=True))
    for _ in range(3):
        opt_plain.step()
        opt_sharded.step()
    torch.cuda.synchronize()
    for a, b in zip(plain.parameters(), sharded.parameters()):
        assert torch.equal(a.detach(), b.to_local().detach())


def test_sharded_step_is_captured_in_a_cuda_graph_with_its_collective(one_rank_nccl):
    plain, opt_plain, sharded, opt_sharded = _dtensor_pair(one_rank_nccl, dict(fused=True))
    opt_plain.step()
    opt_sharded.step()  # warm-up: state, tensor tables and the communicator exist before capture
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph):
        opt_sharded.step()
    torch.cuda.current_stream().wait_stream(stream)
    for _ in range(2):
        graph.replay()
        opt_plain.step()
    torch.cuda.synchronize()
    for a, b in zip(plain.parameters(), sharded.parameters()):
        torch.testing.assert_close(a.detach(), b.to_local().detach(), rtol=1e-6, atol=1e-7)


# ---- the other LARS flavours (lars_cuda.compat) on CUDA ----------------------------------

@pytest.mark.parametrize("launch", ["cooperative", "three-kernel"])
@pytest.mark.parametrize("flavour", ["timm", "larc", "ssl"])
def test_each_flavours_fused_cuda_step_matches_its_original(flavour, launch, monkeypatch):
    import sys

    from timm.optim import Lars as Timm

    from lars_cuda import compat

    sys.path.insert(0, BENCHMARKS)
    from originals import SSLLARS, ApexLARC

    if launch == "three-kernel":
        _set_knob(monkeypatch, "LARS_CUDA_LAUNCH", "three-kernel")
    make = {
        "timm": (lambda ps: Timm(ps, lr=0.5, momentum=0.9, dampening=0.1, weight_decay=1e-3, trust_clip=True),
                 lambda ps: compat.TimmLars(ps, lr=0.5, momentum=0.9, dampening=0.1, weight_decay=1e-3,
                                            trust_clip=True, fused=True)),
        "larc": (lambda ps: ApexLARC(torch.optim.SGD(ps, lr=0.5, momentum=0.9, weight_decay=1e-3)),
                 lambda ps: compat.LARC(torch.optim.SGD(ps, lr=0.5, momentum=0.9, weight_decay=1e-3), fused=True)),
        "ssl": (lambda ps: SSLLARS(ps, lr=0.5, weight_decay=1e-3, weight_decay_filter=True,
                                   lars_adaptation_filter=True),
                lambda ps: compat.SSLLars(ps, lr=0.5, weight_decay=1e-3, fused=True)),
    }[flavour]
    gen = torch.Generator().manual_seed(0)
    shapes = [(64, 3, 7, 7), (64,), (1000, 2048), (70_001,), (7, 5)]
    base = [torch.randn(s, generator=gen).cuda() for s in shapes]
    grads = [[torch.randn(s, generator=gen).cuda() * 0.1 for s in shapes] for _ in range(3)]
    theirs = [torch.nn.Parameter(b.clone()) for b in base]
    mine = [torch.nn.Parameter(b.clone()) for b in base]
    opt_theirs, opt_mine = make[0](theirs), make[1](mine)
    for step in range(3):
        for a, b, g in zip(theirs, mine, grads[step]):
            a.grad, b.grad = g.clone(), g.clone()
        opt_theirs.step()
        opt_mine.step()
    torch.cuda.synchronize()
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=2e-6, atol=1e-7)
