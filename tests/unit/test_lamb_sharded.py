"""Lamb on DTensor params (FSDP2's layout: Shard(0), uneven, an empty shard; HSDP;
Replicate next to Shard; plain params beside) on two ranks that are threads of this
process, on every path (the kernel's two halves, foreach's, the loop's): equal to the
unsharded step, and the collectives counted — one all-reduce per step without global
clipping, two with it."""

from __future__ import annotations

import pytest
import torch

import lars_cuda
from lars_cuda import compat

from ..support import threaded_ranks
from .test_sharded_in_process import _count_all_reduces, _full, _mesh, _pair, _set_grads, _worst

pytestmark = pytest.mark.skipif(not threaded_ranks.available(), reason="torch without its threaded process group")

PATHS = {"fused": dict(fused=True), "foreach": dict(foreach=True), "loop": dict(foreach=False)}
TOL = 1e-5  # relative, float32: the sharded norms add the same squares in another order


def _shard0(i, p):
    from torch.distributed.tensor import Shard

    return [Shard(0)]


def _lamb_err(ref, mine, opt_ref, opt):
    pairs = [(r.detach(), _full(m.detach())) for r, m in zip(ref, mine)]
    for r, m in zip(ref, mine):
        for key in ("exp_avg", "exp_avg_sq"):
            pairs.append((opt_ref.state[r][key], _full(opt.state[m][key])))
    return _worst(((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item() for a, b in pairs)


def _steps(make, placements_of=_shard0, mesh_shape=(2,), steps=3, plain=()):
    def rank_main(rank):
        ref, mine = _pair(_mesh(mesh_shape), placements_of, plain=plain)
        opt_ref, opt = make(ref), make(mine)
        for step in range(steps):
            _set_grads(ref, mine, step)
            opt_ref.step()
            opt.step()
        return _lamb_err(ref, mine, opt_ref, opt)
    return _worst(threaded_ranks.run_on_ranks(rank_main))


FLAVOURS = {
    "defaults (clipping)": lambda **kw: lambda ps: lars_cuda.Lamb(ps, lr=0.02, **kw),
    "no clipping": lambda **kw: lambda ps: lars_cuda.Lamb(ps, lr=0.02, max_grad_norm=None, **kw),
    "clipping does not bind": lambda **kw: lambda ps: lars_cuda.Lamb(ps, lr=0.02, max_grad_norm=1e3, **kw),
    "two groups, one not adapted": lambda **kw: lambda ps: lars_cuda.Lamb(
        [dict(params=ps[:2]), dict(params=ps[2:], weight_decay=0.0)], lr=0.02, max_grad_norm=0.5, **kw),
    "decoupled, caution, trust clip": lambda **kw: lambda ps: lars_cuda.Lamb(
        ps, lr=0.02, decay_mode="decoupled", caution=True, trust_clip=True, **kw),
    # (timm's Lamb has no fused argument: unset, the kernel is its default where it serves)
    "timm": lambda **kw: lambda ps: compat.TimmLamb(ps, lr=0.02, max_grad_norm=0.5,
                                                    **{k: v for k, v in kw.items() if k != "fused"}),
    "apex L2 mode": lambda **kw: lambda ps: compat.FusedLAMB(ps, lr=0.02, adam_w_mode=False, **kw),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_sharded_lamb_step_equals_the_unsharded_step(flavour, path):
    assert _steps(FLAVOURS[flavour](**PATHS[path])) < TOL


@pytest.mark.parametrize("path", PATHS)
def test_plain_params_beside_sharded_ones_count_once_in_the_clip_and_step_as_unsharded(path):
    assert _steps(FLAVOURS["defaults (clipping)"](**PATHS[path]), plain=(1, 3)) < TOL


@pytest.mark.parametrize("path", PATHS)
def test_hsdp_and_a_replica_beside_shards_step_as_unsharded(path):
    from torch.distributed.tensor import Replicate, Shard

    def placements(i, p):
        return [Replicate(), Shard(0)] if i != 2 else [Replicate(), Replicate()]

    assert _steps(FLAVOURS["defaults (clipping)"](**PATHS[path]), placements, mesh_shape=(1, 2)) < TOL


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("max_grad_norm,collectives", [(None, 1), (1.0, 2)], ids=["no clipping", "clipping"])
def test_a_sharded_step_is_one_all_reduce_per_rank_or_two_with_clipping(max_grad_norm, collectives, path,
                                                                          monkeypatch):
    counts = _count_all_reduces(monkeypatch)
    make = lambda ps: lars_cuda.Lamb([dict(params=ps[:2]), dict(params=ps[2:], caution=True)],  # noqa: E731
                                     lr=0.02, max_grad_norm=max_grad_norm, **PATHS[path])
    assert _steps(make, steps=1) < TOL
    assert sorted(counts.values()) == [collectives, collectives]


def test_no_all_reduce_without_dtensors(monkeypatch):
    counts = _count_all_reduces(monkeypatch)
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    lars_cuda.Lamb([p]).step()
    assert counts == {}


def test_a_partial_grad_is_refused_naming_lamb_and_nothing_is_written():
    from torch.distributed.tensor import DTensor, Partial, Replicate

    def rank_main(rank):
        mesh = _mesh()
        p = torch.nn.Parameter(DTensor.from_local(torch.ones(3), mesh, [Replicate()]))
        p.grad = DTensor.from_local(torch.ones(3), mesh, [Partial()])
        opt = lars_cuda.Lamb([p])
        try:
            opt.step()
        except ValueError as exc:
            return str(exc), torch.equal(p.to_local().detach(), torch.ones(3)), len(opt.state)
    message, unchanged, states = threaded_ranks.run_on_ranks(rank_main)[0]
    assert message.startswith(f"Lamb cannot step a grad with placement {Partial()} on mesh dim 0 (param 0,")
    assert unchanged and states == 0


@pytest.mark.parametrize("caution", [False, True])
def test_trust_ratios_of_sharded_params_are_the_unsharded_ones(caution):
    def rank_main(rank):
        ref, mine = _pair(_mesh(), _shard0)
        make = lambda ps: lars_cuda.Lamb(ps, lr=0.02, caution=caution)  # noqa: E731
        opt_ref, opt = make(ref), make(mine)
        for step in range(2):
            _set_grads(ref, mine, step)
            opt_ref.step()
            opt.step()
        _set_grads(ref, mine, 2)
        return opt_ref.trust_ratios(), opt.trust_ratios()
    for want, got in threaded_ranks.run_on_ranks(rank_main):
        assert len(want) == 4
        torch.testing.assert_close(got, want, rtol=1e-5, atol=0)


@pytest.mark.parametrize("groups", [1, 2], ids=["one group", "decay and no-decay groups"])
def test_the_fused_path_steps_every_groups_shards_with_one_call_of_each_kernel_half(monkeypatch, groups):
    from lars_cuda import ops

    calls = []
    for name in ("fused_lamb_norms", "fused_lamb_apply_", "fused_lamb_groups_"):
        real = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))

    def rank_main(rank):
        ref, mine = _pair(_mesh(), _shard0)
        split = [{"params": mine[:2]}, {"params": mine[2:], "weight_decay": 0.0}] if groups == 2 else mine
        opt = lars_cuda.Lamb(split, lr=0.02, fused=True)
        _set_grads(ref, mine, 0)
        opt.step()
        return opt._path(opt.param_groups[0], mine)
    assert threaded_ranks.run_on_ranks(rank_main) == ["fused", "fused"]
    assert sorted(calls) == ["fused_lamb_apply_"] * 2 + ["fused_lamb_norms"] * 2  # one of each per rank


def test_gradscaler_unscales_the_grads_of_sharded_params_itself():
    def rank_main(rank):
        ref, mine = _pair(_mesh(), _shard0)
        _set_grads(ref, mine, 0)
        return lars_cuda.Lamb(mine, fused=True)._step_supports_amp_scaling
    assert threaded_ranks.run_on_ranks(rank_main) == [False, False]


@pytest.mark.parametrize("path", PATHS)
def test_under_gradscaler_an_inf_in_one_ranks_shard_skips_the_step_on_every_rank(path):
    # GradScaler's inf check of DTensor grads is all-reduced by DTensor itself (its
    # found_inf handler), so every rank skips or steps: none is left in Lamb's all-reduce.
    def rank_main(rank):
        ref, mine = _pair(_mesh(), _shard0)
        opt_ref, opt = (lars_cuda.Lamb(ps, lr=0.02, **PATHS[path]) for ps in (ref, mine))
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        for step in range(2):
            _set_grads(ref, mine, step, scale=1024.0)
            opt_ref.step()
            scaler.scale(torch.ones(()))  # (a scaled loss: what starts the scaler)
            scaler.step(opt)
            scaler.update()
        err = _lamb_err(ref, mine, opt_ref, opt)
        _set_grads(ref, mine, 2, scale=1024.0)
        if rank == 1:
            mine[0].grad.to_local().view(-1)[0] = float("inf")
        before = [_full(p.detach()).clone() for p in mine]
        scaler.scale(torch.ones(()))
        scaler.step(opt)
        scaler.update()
        return err, all(torch.equal(b, _full(p.detach())) for b, p in zip(before, mine)), scaler.get_scale()
    results = threaded_ranks.run_on_ranks(rank_main)
    assert _worst(err for err, _, _ in results) < TOL
    assert [(skipped, scale) for _, skipped, scale in results] == [(True, 512.0), (True, 512.0)]


