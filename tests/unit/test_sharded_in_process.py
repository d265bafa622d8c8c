"""The sharded step (DTensor params) on two ranks that are threads of this process
(tests/support/threaded_ranks.py): each case steps sharded params and the same plain
params and compares the full tensors. The real two-process launch (gloo,
fully_shard, DCP) is tests/integration/test_sharded.py; these run in-process, so mutation
testing reaches lars_cuda/sharded.py and the sharded planner and executor."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lars_cuda
from lars_cuda import ops

from ..support import threaded_ranks

pytestmark = pytest.mark.skipif(not threaded_ranks.available(), reason="torch without its threaded process group")

PATHS = {
    "fused": dict(fused=True),
    "foreach": dict(foreach=True, fused=False),
    "single": dict(foreach=False, fused=False),
}
# Rows 7, 5, 3 and 1: uneven shards on two ranks, and one rank with an empty shard.
SHAPES = [(7, 4), (5,), (3, 2, 2), (1, 3)]
TOL = 1e-6  # relative: the sharded norms add the same squares in another order


def _mesh(shape=(2,)):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", shape, mesh_dim_names=("a", "b")[:len(shape)])


def _tensors(seed, shapes=SHAPES, dtype=torch.float32):
    """The same full tensors on every rank (a generator per call: the threads share torch's global one)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]


def _pair(mesh, placements_of, *, dtype=torch.float32, plain=()):
    """(reference params, sharded params) with equal full values; indices in ``plain`` stay plain tensors."""
    from torch.distributed.tensor import distribute_tensor

    ref = [nn.Parameter(t) for t in _tensors(0, dtype=dtype)]
    mine = [nn.Parameter(r.detach().clone()) if i in plain else
            nn.Parameter(distribute_tensor(r.detach().clone(), mesh, placements_of(i, r)))
            for i, r in enumerate(ref)]
    return ref, mine


def _set_grads(ref, mine, step, scale=1.0):
    from torch.distributed.tensor import DTensor, distribute_tensor

    for r, m, g in zip(ref, mine, _tensors(100 + step, dtype=ref[0].dtype)):
        r.grad = g.clone()
        m.grad = distribute_tensor(g * scale, m.device_mesh, m.placements) if isinstance(m, DTensor) else g * scale


def _full(t):
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def _worst(errors) -> float:
    """The largest error; NaN (a step gone wrong) counts as infinite, which max() would not do."""
    return max((math.inf if math.isnan(e) else e) for e in errors)


def _err(ref, mine, opt_ref=None, opt=None) -> float:
    pairs = [(r.detach(), _full(m.detach())) for r, m in zip(ref, mine)]
    if opt is not None:
        for r, m in zip(ref, mine):
            key = opt_ref._buffer_key if hasattr(opt_ref, "_buffer_key") else "momentum_buffer"
            if key in opt_ref.state[r]:
                pairs.append((opt_ref.state[r][key], _full(opt.state[m][key])))
    return _worst(((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item() for a, b in pairs)


def _shard0(i, p):
    from torch.distributed.tensor import Shard

    return [Shard(0)]


def _steps(make, placements_of=_shard0, mesh_shape=(2,), steps=2, plain=(), dtype=torch.float32):
    """Every rank: ``steps`` steps of make(params) on sharded and on plain params; the error."""
    def rank_main(rank):
        ref, mine = _pair(_mesh(mesh_shape), placements_of, dtype=dtype, plain=plain)
        opt_ref, opt = make(ref), make(mine)
        for step in range(steps):
            _set_grads(ref, mine, step)
            opt_ref.step()
            opt.step()
        return _err(ref, mine, opt_ref, opt)
    return _worst(threaded_ranks.run_on_ranks(rank_main))


def _lars(**kw):
    return lambda ps: lars_cuda.Lars(ps, lr=0.1, momentum=0.9, weight_decay=1e-3, **kw)


FLAVOURS = {
    "seed": lambda **kw: _lars(**kw),
    "nesterov": lambda **kw: _lars(nesterov=True, **kw),
    "no_momentum": lambda **kw: lambda ps: lars_cuda.Lars(ps, lr=0.1, weight_decay=1e-3, **kw),
    "lars_off": lambda **kw: lambda ps: lars_cuda.Lars([dict(params=ps, lars=False)], lr=0.1, momentum=0.9,
                                                       weight_decay=1e-3, **kw),
    "timm": lambda **kw: lambda ps: lars_cuda.compat.TimmLars(ps, lr=0.5, momentum=0.9, dampening=0.1,
                                                                weight_decay=1e-3, trust_clip=True, **kw),
    "larc": lambda **kw: lambda ps: lars_cuda.compat.LARC(
        torch.optim.SGD(ps, lr=0.5, momentum=0.9, weight_decay=1e-3), **kw),
    "ssl": lambda **kw: lambda ps: lars_cuda.compat.SSLLars(ps, lr=0.5, weight_decay=1e-3, **kw),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_sharded_step_equals_the_unsharded_step(flavour, path):
    import lars_cuda.compat  # noqa: F401

    assert _steps(FLAVOURS[flavour](**PATHS[path]), steps=3) < TOL


@pytest.mark.parametrize("path", PATHS)
def test_the_default_path_and_float64_params_step_sharded(path):
    # float64 under fused=True runs foreach beside the kernel; the sums keep their rows
    assert _steps(_lars(**PATHS[path]), dtype=torch.float64) < 1e-12


@pytest.mark.parametrize("path", PATHS)
def test_a_replica_counts_once_next_to_shards(path):
    from torch.distributed.tensor import Replicate, Shard

    # epsilon > 0: a ratio is then not invariant to scaling both norms alike, so a replica counted twice shows
    make = _lars(epsilon=1.0, **PATHS[path])
    assert _steps(make, lambda i, p: [Replicate() if i % 2 else Shard(0)]) < TOL


@pytest.mark.parametrize("mesh_shape", [(1, 2), (2, 1)])
@pytest.mark.parametrize("path", PATHS)
def test_hsdp_reduces_over_the_shard_dim_only(path, mesh_shape):
    from torch.distributed.tensor import Replicate, Shard

    make = _lars(epsilon=1.0, **PATHS[path])
    assert _steps(make, lambda i, p: [Replicate(), Shard(0)], mesh_shape=mesh_shape) < TOL


@pytest.mark.parametrize("path", PATHS)
def test_sharding_along_two_mesh_dims_reduces_along_each(path):
    from torch.distributed.tensor import Shard

    make = _lars(epsilon=1.0, **PATHS[path])
    assert _steps(make, lambda i, p: [Shard(0), Shard(p.dim() - 1)], mesh_shape=(2, 1)) < TOL
    assert _steps(make, lambda i, p: [Shard(p.dim() - 1), Shard(0)], mesh_shape=(1, 2)) < TOL


@pytest.mark.parametrize("path", PATHS)
def test_a_group_of_sharded_and_plain_params_equals_the_unsharded_step(path):
    assert _steps(_lars(**PATHS[path]), plain=(1, 3)) < TOL


@pytest.mark.parametrize("path", PATHS)
def test_sharded_groups_with_and_without_lars_keep_their_rows(path):
    def make(ps):  # three groups of 1, 2 and 1 tensors: each plan's rows start where the last one's ended
        return lars_cuda.Lars([dict(params=ps[:1]), dict(params=ps[1:3], lars=False, weight_decay=0.0),
                               dict(params=ps[3:], eeta=0.01)], lr=0.1, momentum=0.9, weight_decay=1e-3,
                              **PATHS[path])
    assert _steps(make) < TOL


def test_a_fused_sharded_group_with_float64_params_runs_them_beside_the_kernel():
    def rank_main(rank):
        from torch.distributed.tensor import distribute_tensor

        mesh = _mesh()
        full = _tensors(0)
        full[1], full[3] = full[1].double(), full[3].double()
        ref = [nn.Parameter(t.clone()) for t in full]
        mine = [nn.Parameter(distribute_tensor(t.clone(), mesh, _shard0(i, t))) for i, t in enumerate(full)]
        opt_ref, opt = _lars(fused=True)(ref), _lars(fused=True)(mine)
        for step in range(2):
            for r, m, g in zip(ref, mine, _tensors(100 + step)):
                g = g.to(r.dtype)
                r.grad, m.grad = g.clone(), distribute_tensor(g.clone(), mesh, m.placements)
            opt_ref.step()
            opt.step()
        return _err(ref, mine, opt_ref, opt)
    assert _worst(threaded_ranks.run_on_ranks(rank_main)) < TOL


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("dot", [True, False])
def test_local_sums_are_float64_squares_and_dots_computed_as_the_step_computes_norms(foreach, dot):
    from lars_cuda.sharded import local_sums

    gen = torch.Generator().manual_seed(3)
    dtypes = [torch.bfloat16, torch.float32, torch.float64, torch.float16]
    ps = [torch.randn(50, generator=gen).to(d) for d in dtypes]
    gs = [torch.randn(50, generator=gen).to(d) for d in dtypes]
    sums = local_sums(ps, gs, foreach=foreach, dot=dot)
    assert sums.dtype == torch.float64 and sums.shape == (4, 3) and sums.device == torch.device("cpu")
    for i, (p, g) in enumerate(zip(ps, gs)):
        p64, g64 = p.double(), g.double()
        want = torch.stack([p64.square().sum(), g64.square().sum(), (p64 * g64).sum() if dot else p64.new_zeros(())])
        torch.testing.assert_close(sums[i], want, rtol=1e-6 if p.dtype != torch.float64 else 1e-12, atol=1e-9)


def test_local_sums_of_no_tensors_are_an_empty_float64_table():
    from lars_cuda.sharded import local_sums

    sums = local_sums([], [], foreach=True)
    assert sums.shape == (0, 3) and sums.dtype == torch.float64


def _count_all_reduces(monkeypatch):
    import threading

    import torch.distributed as dist

    counts: dict[int, int] = {}
    real = dist.all_reduce

    def counting(*args, **kwargs):
        counts[threading.get_ident()] = counts.get(threading.get_ident(), 0) + 1
        return real(*args, **kwargs)
    monkeypatch.setattr(dist, "all_reduce", counting)
    return counts


@pytest.mark.parametrize("path", PATHS)
def test_a_sharded_step_is_one_all_reduce_per_rank(path, monkeypatch):
    counts = _count_all_reduces(monkeypatch)
    make = lambda ps: lars_cuda.Lars([dict(params=ps[:2]), dict(params=ps[2:], lars=False)],  # noqa: E731
                                     lr=0.1, momentum=0.9, weight_decay=1e-3, **PATHS[path])
    assert _steps(make, steps=1) < TOL
    assert sorted(counts.values()) == [1, 1]


def test_two_sharded_mesh_dims_are_one_all_reduce_each(monkeypatch):
    from torch.distributed.tensor import Shard

    counts = _count_all_reduces(monkeypatch)
    _steps(_lars(fused=True), lambda i, p: [Shard(0), Shard(p.dim() - 1)], mesh_shape=(2, 1), steps=1)
    assert sorted(counts.values()) == [2, 2]


def test_no_all_reduce_without_dtensors(monkeypatch):
    counts = _count_all_reduces(monkeypatch)
    p = nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    lars_cuda.Lars([p], lr=0.1, momentum=0.9).step()
    assert counts == {}


def _amp_case(rank, *, inf_rank):
    ref, mine = _pair(_mesh(), _shard0)
    opt_ref = lars_cuda.Lars(ref, lr=0.1, momentum=0.9, weight_decay=1e-3)
    opt = lars_cuda.Lars(mine, lr=0.1, momentum=0.9, weight_decay=1e-3, fused=True)
    _set_grads(ref, mine, 0, scale=1024.0)
    opt_ref.step()
    opt.grad_scale, opt.found_inf = torch.tensor(1024.0), torch.tensor(0.0)
    opt.step()
    err = _err(ref, mine, opt_ref, opt)
    before = [_full(p.detach()).clone() for p in mine]
    _set_grads(ref, mine, 1, scale=1024.0)
    opt.found_inf = torch.tensor(1.0 if rank == inf_rank else 0.0)
    opt.step()
    return err, all(torch.equal(b, _full(p.detach())) for b, p in zip(before, mine))


@pytest.mark.skipif(not ops.has_fused(torch.device("cpu")), reason="the compiled kernel is not built")
def test_grad_scale_is_divided_in_the_sharded_fused_step():
    errs = [err for err, _ in threaded_ranks.run_on_ranks(lambda rank: _amp_case(rank, inf_rank=1))]
    assert _worst(errs) < TOL


@pytest.mark.skipif(not ops.has_fused(torch.device("cpu")), reason="the compiled kernel is not built")
@pytest.mark.parametrize("inf_rank", [0, 1])
def test_an_inf_on_one_rank_skips_the_step_on_every_rank(inf_rank):
    skipped = [same for _, same in threaded_ranks.run_on_ranks(lambda rank: _amp_case(rank, inf_rank=inf_rank))]
    assert skipped == [True, True]


@pytest.mark.parametrize("ssl", [False, True])
def test_trust_ratios_of_sharded_params_are_the_global_ones(ssl):
    import lars_cuda.compat  # noqa: F401

    def rank_main(rank):
        ref, mine = _pair(_mesh(), _shard0, plain=(2,))
        _set_grads(ref, mine, 0)
        make = (lambda ps: lars_cuda.compat.SSLLars(ps, lr=0.5, weight_decay=1e-3)) if ssl else _lars()
        a, b = make(ref).trust_ratios(), make(mine).trust_ratios()
        return ((a - b).abs() / a.abs()).max().item(), a.shape == b.shape and a.numel() > 1
    results = threaded_ranks.run_on_ranks(rank_main)
    assert [same_shape for _, same_shape in results] == [True, True]
    assert _worst(e for e, _ in results) < TOL


# ---- what the sharded step refuses (and that it writes nothing then) ---------------------------------------


def _refused(make_param_and_grad, *, state=None):
    """Every rank: (the error's type and message, whether the param is unchanged)."""
    def rank_main(rank):
        p, g = make_param_and_grad(_mesh())
        p = nn.Parameter(p)
        p.grad = g
        before = _full(p.detach()).clone()
        opt = lars_cuda.Lars([p], lr=0.1, momentum=0.9)
        if state is not None:
            opt.state[p]["momentum_buffer"] = state(p)
        try:
            opt.step()
        except (TypeError, ValueError) as exc:
            return type(exc), str(exc), torch.equal(_full(p.detach()), before)
        return None, None, None
    return threaded_ranks.run_on_ranks(rank_main)[0]


def test_a_partial_param_is_refused_naming_the_placement():
    from torch.distributed.tensor import DTensor, Partial

    kind, message, unchanged = _refused(lambda mesh: (DTensor.from_local(torch.ones(3), mesh, [Partial()]),
                                                      DTensor.from_local(torch.ones(3), mesh, [Partial()])))
    assert kind is ValueError and unchanged
    assert message == (f"Lars cannot step a param with placement {Partial()} on mesh dim 0 (param 0, placements "
                       f"({Partial()})): a Partial tensor is a pending sum, not a value; redistribute it to Shard or "
                       "Replicate first")


def test_a_partial_grad_is_refused_naming_the_grad():
    from torch.distributed.tensor import DTensor, Partial, Replicate

    kind, message, unchanged = _refused(lambda mesh: (DTensor.from_local(torch.ones(3), mesh, [Replicate()]),
                                                      DTensor.from_local(torch.ones(3), mesh, [Partial()])))
    assert kind is ValueError and unchanged
    assert message.startswith(f"Lars cannot step a grad with placement {Partial()} on mesh dim 0 (param 0,")


def test_a_plain_grad_of_a_dtensor_param_is_a_type_error():
    from torch.distributed.tensor import Shard, distribute_tensor

    kind, message, unchanged = _refused(lambda mesh: (distribute_tensor(torch.ones(4), mesh, [Shard(0)]),
                                                      torch.ones(4)))
    assert kind is TypeError and unchanged
    assert message == ("param 0 is a DTensor but its grad is a Tensor; a sharded param needs a DTensor grad on "
                       "the same mesh")


def test_a_grad_laid_out_unlike_its_param_is_refused():
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    kind, message, unchanged = _refused(lambda mesh: (distribute_tensor(torch.ones(4), mesh, [Shard(0)]),
                                                      distribute_tensor(torch.ones(4), mesh, [Replicate()])))
    assert kind is ValueError and unchanged
    assert message.startswith(f"param 0 has placements ({Shard(0)}) on DeviceMesh(")
    assert message.endswith(f"but its grad ({Replicate()}) on {_MESH_TEXT}; LARS reads both shard by shard, so "
                            "they must match")


_MESH_TEXT = "DeviceMesh((a=2), 'cpu', stride=(1,))"


def test_a_grad_on_another_mesh_is_refused():
    from torch.distributed.tensor import Shard, distribute_tensor

    def make(mesh):
        from torch.distributed.device_mesh import init_device_mesh

        other = init_device_mesh("cpu", (2,), mesh_dim_names=("z",))  # the same ranks, another mesh
        return distribute_tensor(torch.ones(4), mesh, [Shard(0)]), distribute_tensor(torch.ones(4), other, [Shard(0)])
    kind, message, unchanged = _refused(make)
    assert kind is ValueError and unchanged
    assert "LARS reads both shard by shard, so they must match" in message


def test_a_plain_momentum_buffer_of_a_sharded_param_is_refused():
    from torch.distributed.tensor import Shard, distribute_tensor

    kind, message, unchanged = _refused(lambda mesh: (distribute_tensor(torch.ones(4), mesh, [Shard(0)]),
                                                      distribute_tensor(torch.ones(4), mesh, [Shard(0)])),
                                        state=lambda p: torch.zeros(4))
    assert kind is ValueError and unchanged
    assert message == ("the momentum buffer of sharded param 0 must be a DTensor laid out as the param ((4,), "
                       "(Shard(dim=0),))")


@pytest.mark.parametrize("buffer", ["replicated", "wrong_shape"])
def test_a_momentum_buffer_laid_out_unlike_its_param_is_refused(buffer):
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    def state(p):
        if buffer == "replicated":
            return distribute_tensor(torch.zeros(4), p.device_mesh, [Replicate()])
        return distribute_tensor(torch.zeros(6), p.device_mesh, [Shard(0)])
    kind, message, unchanged = _refused(lambda mesh: (distribute_tensor(torch.ones(4), mesh, [Shard(0)]),
                                                      distribute_tensor(torch.ones(4), mesh, [Shard(0)])),
                                        state=state)
    assert kind is ValueError and unchanged
    assert message.startswith("the momentum buffer of sharded param 0 must be a DTensor")


def test_fresh_buffers_of_a_sharded_step_are_dtensors_laid_out_as_their_params():
    from torch.distributed.tensor import DTensor

    def rank_main(rank):
        ref, mine = _pair(_mesh(), _shard0)
        opt = lars_cuda.Lars(mine, lr=0.1, momentum=0.9)
        _set_grads(ref, mine, 0)
        opt.step()
        bufs = [opt.state[p]["momentum_buffer"] for p in mine]
        return all(isinstance(b, DTensor) and b.placements == p.placements and b.shape == p.shape
                   for b, p in zip(bufs, mine))
    assert threaded_ranks.run_on_ranks(rank_main) == [True, True]


def test_a_partial_on_the_second_mesh_dim_names_the_dim_and_every_placement():
    from torch.distributed.tensor import DTensor, Partial, Shard

    def rank_main(rank):
        mesh = _mesh((2, 1))
        p = nn.Parameter(DTensor.from_local(torch.ones(2), mesh, [Shard(0), Partial()]))
        p.grad = DTensor.from_local(torch.ones(2), mesh, [Shard(0), Partial()])
        try:
            lars_cuda.Lars([p], lr=0.1).step()
        except ValueError as exc:
            return str(exc)
    message = threaded_ranks.run_on_ranks(rank_main)[0]
    assert message.startswith(f"Lars cannot step a param with placement {Partial()} on mesh dim 1 (param 0, "
                              f"placements ({Shard(0)}, {Partial()})):")


@pytest.mark.parametrize("path", PATHS)
def test_a_sharded_group_with_dampening_steps_fresh_and_old_buffers_as_sgd(path):
    # a param without a grad on the first step gets its buffer on the second, beside an old one
    def rank_main(rank):
        from torch.distributed.tensor import distribute_tensor

        ref, mine = _pair(_mesh(), _shard0)
        kw = dict(lr=0.1, momentum=0.9, dampening=0.3, update_clip=None)
        opt_ref = lars_cuda.Lars([dict(params=ref, lars=False)], **kw, **PATHS[path])
        opt = lars_cuda.Lars([dict(params=mine, lars=False)], **kw, **PATHS[path])
        for step in range(3):
            for i, (r, m, g) in enumerate(zip(ref, mine, _tensors(100 + step))):
                keep = step > 0 or i % 2 == 0
                r.grad = g.clone() if keep else None
                m.grad = distribute_tensor(g.clone(), m.device_mesh, m.placements) if keep else None
            opt_ref.step()
            opt.step()
        return _err(ref, mine, opt_ref, opt)
    assert _worst(threaded_ranks.run_on_ranks(rank_main)) < TOL


@pytest.mark.parametrize("which", ["grad_scale", "found_inf"])
def test_gradscaler_tensors_off_the_fused_path_are_refused_in_a_sharded_step(which):
    def rank_main(rank):
        ref, mine = _pair(_mesh(), _shard0)
        _set_grads(ref, mine, 0)
        opt = lars_cuda.Lars(mine, lr=0.1, foreach=True)
        setattr(opt, which, torch.tensor(1.0 if which == "grad_scale" else 0.0))
        try:
            opt.step()
        except ValueError as exc:
            return str(exc)
    assert threaded_ranks.run_on_ranks(rank_main) == ["grad_scale/found_inf are only supported by the fused path"] * 2
