"""The CUDA LAMB kernel (csrc/cuda/lamb_kernel.cuh) on a GPU against the CPU kernel and
the foreach path, its sharded halves (fused_lamb_norms / fused_lamb_apply_), and a
step that never syncs with the host and replays in a CUDA graph. Skipped without a
GPU; benchmarks/gpu_check.sh runs them there (the emulator runs the same device code on the CPU in every make test:
tests/integration/test_emulated_cuda_lamb.py)."""

from __future__ import annotations

import pytest
import torch

from lars_cuda import Lamb, ops

from ..conftest import requires_fused_cuda
from ..unit.test_lamb import LR, SWITCHES, oracle, tensors, train

pytestmark = [pytest.mark.cuda, requires_fused_cuda]


def on_cuda(lists):
    return [t.cuda() for t in lists]


@pytest.mark.parametrize("switch", SWITCHES)
def test_the_cuda_lamb_kernel_steps_as_the_float64_oracle(switch):
    kw, oracle_kw = SWITCHES[switch]
    params, grads = tensors(dtype=torch.float32)
    want, _ = oracle(params, grads, oracle_kw, max_grad_norm=kw.get("max_grad_norm", 1.0))
    got, _ = train(lambda ps: Lamb(ps, lr=LR, **kw, fused=True), on_cuda(params), [on_cuda(g) for g in grads])
    assert ops.last_cuda_launch() in ("cooperative", "single")
    for a, b in zip(got, want):
        torch.testing.assert_close(a.detach().double().cpu(), b, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_the_cuda_lamb_kernel_steps_as_the_cpu_kernel(dtype):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).to(dtype) for s in [(70_001,), (64, 3, 7, 7), (3,), (1000, 33)]]
    grads = [[torch.randn(p.shape, generator=gen).to(dtype) for p in params] for _ in range(3)]
    cpu, _ = train(lambda ps: Lamb(ps, lr=LR, caution=True, fused=True), params, grads, steps=3)
    gpu, _ = train(lambda ps: Lamb(ps, lr=LR, caution=True, fused=True), on_cuda(params),
                   [on_cuda(g) for g in grads], steps=3)
    ulp = torch.finfo(dtype).eps
    for a, b in zip(gpu, cpu):
        torch.testing.assert_close(a.detach().cpu().double(), b.detach().double(), rtol=4 * ulp, atol=1e-5)


def test_gradscaler_hands_its_scale_to_the_cuda_lamb_kernel():
    params, grads = tensors(dtype=torch.float32)
    ps = [torch.nn.Parameter(p.cuda()) for p in params]
    opt = Lamb(ps, lr=LR, fused=True)
    assert opt._step_supports_amp_scaling
    scaler = torch.amp.GradScaler("cuda", init_scale=256.0)
    scaler.scale(sum((p * g.cuda()).sum() for p, g in zip(ps, grads[0]))).backward()
    scaler.step(opt)
    scaler.update()
    want, _ = train(lambda q: Lamb(q, lr=LR, fused=True), params, grads, steps=1)
    for a, b in zip(ps, want):
        torch.testing.assert_close(a.detach().cpu(), b.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("caution", [False, True])
def test_the_cuda_lamb_halves_give_the_cpu_kernels_rows_and_step(caution):
    from lars_cuda.lamb_options import LambOptions

    from ..unit.test_lamb_fused import apply_args, halves_args, op_lists

    o = LambOptions(lr=LR, caution=caution)
    shapes = ((70_001,), (64, 3, 7, 7), (3,), (1000, 33))
    cpu = op_lists(shapes=shapes)
    gpu = [[t.cuda() for t in ts] for ts in op_lists(shapes=shapes)]
    cpu_rows = torch.ops.lars_cuda.fused_lamb_norms(*halves_args(cpu, o))
    gpu_rows = torch.ops.lars_cuda.fused_lamb_norms(*halves_args(gpu, o))
    assert gpu_rows.device.type == "cuda"
    torch.testing.assert_close(gpu_rows.cpu(), cpu_rows, rtol=1e-5, atol=1e-5)
    torch.ops.lars_cuda.fused_lamb_apply_(*apply_args(cpu, cpu_rows, o))
    torch.ops.lars_cuda.fused_lamb_apply_(*apply_args(gpu, cpu_rows.cuda(), o))
    for k in (0, 2, 3):
        for a, b in zip(gpu[k], cpu[k]):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-6)


# ---- step counts on the device, no host sync, CUDA graphs ----------------------------------

def _cuda_params(dtype=torch.float32):
    params, grads = tensors(dtype=dtype)
    return [torch.nn.Parameter(p.cuda()) for p in params], [[g.cuda() for g in gs] for gs in grads]


def _stepped_once(make):
    """CUDA params and an optimizer ``make(params)`` after one step."""
    ps, grads = _cuda_params()
    opt = make(ps)
    for p, g in zip(ps, grads[0]):
        p.grad = g.clone()
    opt.step()
    return ps, opt


def test_fresh_step_counts_live_on_the_params_device_on_the_kernel_path():
    ps, opt = _stepped_once(lambda q: Lamb(q, lr=LR, fused=True))
    assert all(opt.state[p]["step"].device == p.device and float(opt.state[p]["step"]) == 1.0 for p in ps)


def test_a_fused_cuda_step_never_synchronizes_with_the_host():
    ps, grads = _cuda_params()
    opt = Lamb(ps, lr=torch.tensor(LR, device="cuda"), fused=True)
    for p, g in zip(ps, grads[0]):
        p.grad = g.clone()
    opt.step()  # (the first step builds the tensor table)
    for p, g in zip(ps, grads[1]):
        p.grad.copy_(g)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.grad_scale, opt.found_inf = torch.ones((), device="cuda"), torch.zeros((), device="cuda")
        opt.step()
        opt.found_inf = torch.ones((), device="cuda")
        opt.step()  # an inf step: skipped on the device, counts put back there
    finally:
        torch.cuda.set_sync_debug_mode(0)
        del opt.grad_scale, opt.found_inf
    assert all(float(opt.state[p]["step"]) == 2.0 for p in ps)
    params, cpu_grads = tensors(dtype=torch.float32)
    want, _ = train(lambda q: Lamb(q, lr=LR, fused=True), params, cpu_grads, steps=2)
    for a, b in zip(ps, want):
        torch.testing.assert_close(a.detach().cpu().double(), b.detach().double(), rtol=2e-5, atol=2e-6)


def test_a_captured_cuda_graph_replays_the_lamb_step():
    ps, grads = _cuda_params()
    opt = Lamb(ps, lr=torch.tensor(LR, device="cuda"), fused=True, caution=True)
    for p in ps:
        p.grad = torch.zeros_like(p)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for p, g in zip(ps, grads[0]):
            p.grad.copy_(g)
        opt.step()  # step 1, outside the capture (builds the table)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    # The capture ran nothing: replay steps 2 and 3 from the grads copied in.
    for t in (1, 2):
        for p, g in zip(ps, grads[t]):
            p.grad.copy_(g)
        graph.replay()
    torch.cuda.synchronize()
    params, cpu_grads = tensors(dtype=torch.float32)
    want, _ = train(lambda q: Lamb(q, lr=LR, fused=True, caution=True), params, cpu_grads, steps=3)
    assert all(float(opt.state[p]["step"]) == 3.0 for p in ps)
    for a, b in zip(ps, want):
        torch.testing.assert_close(a.detach().cpu().double(), b.detach().double(), rtol=2e-5, atol=2e-6)


def test_capturing_a_step_off_the_kernel_path_is_refused():
    _, opt = _stepped_once(lambda q: Lamb(q, lr=LR, foreach=True))
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="CUDA graph can capture a step only"):
        with torch.cuda.graph(graph):
            opt.step()
