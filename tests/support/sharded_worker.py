"""Run under ``torchrun --nproc_per_node 2`` (gloo, CPU) by tests/integration/test_sharded.py:
every sharded case in one launch (each launch costs ~10 s of imports). Each
case steps a sharded model and the same unsharded model and records what the
tests assert (errors against the unsharded step, collectives per step,
messages); rank 0 writes them as JSON to argv[1].

Grads are set from full tensors drawn with one seed on every rank (each rank
keeps its shard), so a comparison measures the optimizer alone; the FSDP case
also runs forward/backward through fully_shard.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.debug import CommDebugMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository

import lars_cuda  # noqa: E402

PATHS = {
    "default": {},
    "fused": dict(fused=True),
    "foreach": dict(foreach=True, fused=False),
    "reference": dict(foreach=False, fused=False),
}
RANK = 0
RESULTS: dict[str, dict] = {}


def net() -> nn.Module:
    """Uneven shards over 2 ranks everywhere (7, 5 and 3 rows); a norm layer and
    biases for the seed's second group."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 5, 3), nn.GroupNorm(1, 5), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 6 * 6, 7),
                         nn.ReLU(), nn.Linear(7, 3))


def shard(model: nn.Module, mesh) -> nn.Module:
    for layer in (model[0], model[4], model[6]):
        fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def full(t):
    return t.full_tensor() if isinstance(t, DTensor) else t


def set_grads(ref: nn.Module, model: nn.Module, step: int, scale: float = 1.0) -> None:
    """The same full grad (seeded by step) into both models; the sharded one keeps its shard."""
    gen = torch.Generator().manual_seed(100 + step)
    for pr, pm in zip(ref.parameters(), model.parameters()):
        g = torch.randn(pr.shape, generator=gen)
        pr.grad = g.clone()
        pm.grad = distribute_tensor(g * scale, pm.device_mesh, pm.placements) if isinstance(pm, DTensor) \
            else g * scale


def max_rel_err(ref: nn.Module, model: nn.Module, opt_ref=None, opt=None) -> float:
    err = 0.0
    for pr, pm in zip(ref.parameters(), model.parameters()):
        err = max(err, ((pr - full(pm)).abs().max() / pr.abs().max().clamp_min(1e-12)).item())
        if opt is not None and "momentum_buffer" in opt_ref.state[pr]:
            br, bm = opt_ref.state[pr]["momentum_buffer"], full(opt.state[pm]["momentum_buffer"])
            err = max(err, ((br - bm).abs().max() / br.abs().max().clamp_min(1e-12)).item())
    return err


def _gather(value) -> list:
    """The value of every rank, in rank order."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def step_counting(opt, *args) -> int:
    with CommDebugMode() as comm:
        opt.step(*args)
    return comm.get_total_counts()


def case(name):
    def wrap(fn):
        def run():
            try:
                RESULTS[name] = fn() or {}
            except Exception as exc:  # recorded, so the test shows what failed
                RESULTS[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
        run.__name__ = name
        CASES.append(run)
        return fn
    return wrap


CASES: list = []


def seed_step_case(path: str, nesterov: bool):
    def fn():
        mesh = init_device_mesh("cpu", (2,))
        ref, model = net(), shard(net(), mesh)
        kw = dict(lr=0.1, momentum=0.9, weight_decay=1e-3, bn_bias_separately=True, nesterov=nesterov, **PATHS[path])
        opt_ref = lars_cuda.create_optimizer_lars(ref, **kw)
        opt = lars_cuda.create_optimizer_lars(model, **kw)
        counts = []
        for step in range(3):
            set_grads(ref, model, step)
            opt_ref.step()
            counts.append(step_counting(opt))
        return {"err": max_rel_err(ref, model, opt_ref, opt), "collectives": counts}
    return fn


for _path in PATHS:
    for _nesterov in (False, True):
        case(f"seed_{_path}_{'nesterov' if _nesterov else 'plain'}")(seed_step_case(_path, _nesterov))


@case("fsdp_forward_backward")
def _():
    """Through fully_shard's own reduce-scatter: each rank half of the batch."""
    mesh = init_device_mesh("cpu", (2,))
    ref, model = net(), shard(net(), mesh)
    opt_ref = lars_cuda.create_optimizer_lars(ref, lr=0.1, momentum=0.9, weight_decay=1e-3, bn_bias_separately=True)
    opt = lars_cuda.create_optimizer_lars(model, lr=0.1, momentum=0.9, weight_decay=1e-3, bn_bias_separately=True)
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        x = torch.randn(4, 3, 8, 8, generator=gen)
        opt_ref.zero_grad()
        opt.zero_grad()
        ref(x).square().mean().backward()
        model(x[2 * RANK:2 * RANK + 2]).square().mean().backward()
        opt_ref.step()
        opt.step()
    return {"err": max_rel_err(ref, model, opt_ref, opt)}


def placement_case(mesh_shape, placements_of):
    """Every param distributed by placements_of(index, param) on a mesh of this shape."""
    def fn():
        names = ("a", "b")[:len(mesh_shape)]
        mesh = init_device_mesh("cpu", mesh_shape, mesh_dim_names=names)
        model = net()
        for i, (name, p) in enumerate(list(model.named_parameters())):
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name)
            setattr(module, attr, nn.Parameter(distribute_tensor(p.detach(), mesh, placements_of(i, p))))
        results = {}
        for path, impl in PATHS.items():
            r, m = net(), _clone_distributed(model)
            # epsilon > 0: the ratio is then not invariant to scaling both norms alike,
            # so a replica counted twice (both sums doubled) shows.
            kw = dict(lr=0.1, momentum=0.9, weight_decay=1e-3, epsilon=1.0, **impl)
            opt_ref = lars_cuda.Lars(r.parameters(), **kw)
            opt = lars_cuda.Lars(m.parameters(), **kw)
            counts = []
            for step in range(2):
                set_grads(r, m, step)
                opt_ref.step()
                counts.append(step_counting(opt))
            results[path] = {"err": max_rel_err(r, m, opt_ref, opt), "collectives": counts}
        return results
    return fn


def _clone_distributed(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


case("hsdp_1x2")(placement_case((1, 2), lambda i, p: [Replicate(), Shard(0)]))
case("hsdp_2x1")(placement_case((2, 1), lambda i, p: [Replicate(), Shard(0)]))
case("shard_dim1")(placement_case((2,), lambda i, p: [Shard(p.dim() - 1)]))
# Replicated and sharded tensors on one mesh: a replica must count once.
case("replicate_and_shard")(placement_case((2,), lambda i, p: [Replicate() if i % 2 else Shard(0)]))
# Sharded along two mesh dims (the second of size 1).
case("shard_two_mesh_dims")(placement_case((2, 1), lambda i, p: [Shard(0), Shard(p.dim() - 1)]))


@case("empty_shard_and_mixed_trust_ratios")
def _():
    """A tensor of one row leaves rank 1 an empty shard; a group mixing sharded and
    plain params gets its trust ratios in group order."""
    mesh = init_device_mesh("cpu", (2,))
    gen = torch.Generator().manual_seed(11)
    shapes = [(1, 4), (6,), (2, 3), (5,)]
    full_p = [torch.randn(s, generator=gen) for s in shapes]
    full_g = [torch.randn(s, generator=gen) for s in shapes]
    results = {}
    for path, impl in PATHS.items():
        ref = [nn.Parameter(p.clone()) for p in full_p]
        mine = [nn.Parameter(distribute_tensor(p.clone(), mesh, [Shard(0)])) if i % 2 == 0
                else nn.Parameter(p.clone()) for i, p in enumerate(full_p)]
        for r, m, g in zip(ref, mine, full_g):
            r.grad = g.clone()
            m.grad = distribute_tensor(g.clone(), mesh, [Shard(0)]) if isinstance(m, DTensor) else g.clone()
        opt_ref = lars_cuda.Lars(ref, lr=0.1, momentum=0.9, weight_decay=1e-3, **impl)
        opt = lars_cuda.Lars(mine, lr=0.1, momentum=0.9, weight_decay=1e-3, **impl)
        ratios_ref, ratios = opt_ref.trust_ratios(), opt.trust_ratios()
        for _ in range(2):
            opt_ref.step()
            opt.step()
        err = max(((r - full(m.detach())).abs().max() / r.abs().max()).item() for r, m in zip(ref, mine))
        results[path] = {"err": err, "ratio_err": ((ratios - ratios_ref).abs() / ratios_ref).max().item(),
                         "local_rows": _gather(mine[0].to_local().shape[0])}
    return results


FLAVOURS = {
    "timm": lambda ps, **kw: lars_cuda.compat.TimmLars(ps, lr=0.5, momentum=0.9, dampening=0.1, weight_decay=1e-3,
                                                       trust_clip=True, **kw),
    "larc": lambda ps, **kw: lars_cuda.compat.LARC(torch.optim.SGD(ps, lr=0.5, momentum=0.9, weight_decay=1e-3),
                                                   **kw),
    "ssl": lambda ps, **kw: lars_cuda.compat.SSLLars(ps, lr=0.5, weight_decay=1e-3, **kw),
}


@case("flavours_fsdp")
def _():
    """Every flavour on fully_shard with uneven shards equals its unsharded step
    (SSL's denominator needs <g, p>: the third sum of the same all-reduce)."""
    import lars_cuda.compat  # noqa: F401

    mesh = init_device_mesh("cpu", (2,))
    results = {}
    for flavour, make in FLAVOURS.items():
        for path, impl in PATHS.items():
            ref, model = net(), shard(net(), mesh)
            opt_ref = make(list(ref.parameters()), **impl)
            opt = make(list(model.parameters()), **impl)
            counts = []
            for step in range(3):
                set_grads(ref, model, step)
                opt_ref.step()
                counts.append(step_counting(opt))
            results[f"{flavour}_{path}"] = {"err": max_rel_err(ref, model, opt_ref, opt), "collectives": counts}
    return results


@case("partial_refused")
def _():
    mesh = init_device_mesh("cpu", (2,))
    p = nn.Parameter(DTensor.from_local(torch.ones(3), mesh, [Partial()]))
    p.grad = DTensor.from_local(torch.ones(3), mesh, [Partial()])
    before = full(p.detach()).clone()
    try:
        lars_cuda.Lars([p], lr=0.1).step()
    except ValueError as exc:
        return {"message": str(exc), "unchanged": bool(torch.equal(full(p.detach()), before))}
    return {"message": None}


@case("mixed_group")
def _():
    """One group: sharded layers and a plain (replicated) one."""
    mesh = init_device_mesh("cpu", (2,))
    results = {}
    for path, impl in PATHS.items():
        r, m = net(), net()
        fully_shard(m[0], mesh=mesh)
        fully_shard(m[4], mesh=mesh)  # m[6] and the GroupNorm stay plain tensors
        opt_ref = lars_cuda.Lars(r.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3, **impl)
        opt = lars_cuda.Lars(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3, **impl)
        for step in range(2):
            set_grads(r, m, step)
            opt_ref.step()
            opt.step()
        results[path] = {"err": max_rel_err(r, m, opt_ref, opt),
                         "plain": sum(not isinstance(p, DTensor) for p in m.parameters())}
    return results


@case("amp_scale_and_inf")
def _():
    """grad_scale divides on the device; an inf on ONE rank skips the step on every rank."""
    mesh = init_device_mesh("cpu", (2,))
    ref, model = net(), shard(net(), mesh)
    opt_ref = lars_cuda.create_optimizer_lars(ref, lr=0.1, momentum=0.9, weight_decay=1e-3, bn_bias_separately=True)
    opt = lars_cuda.create_optimizer_lars(model, lr=0.1, momentum=0.9, weight_decay=1e-3, bn_bias_separately=True,
                                          fused=True)
    set_grads(ref, model, 0, scale=1024.0)
    opt_ref.step()
    opt.grad_scale, opt.found_inf = torch.tensor(1024.0), torch.tensor(0.0)
    collectives = step_counting(opt)
    err = max_rel_err(ref, model, opt_ref, opt)
    before = [full(p.detach()).clone() for p in model.parameters()]
    opt.found_inf = torch.tensor(1.0 if RANK == 1 else 0.0)  # rank 1 alone saw an inf
    opt.step()
    unchanged = all(torch.equal(b, full(p.detach())) for b, p in zip(before, model.parameters()))
    return {"err": err, "collectives": collectives, "skipped_everywhere": unchanged}


@case("grad_scaler")
def _():
    """torch.amp.GradScaler drives the sharded fused step (scale on the device)."""
    mesh = init_device_mesh("cpu", (2,))
    ref, model = net(), shard(net(), mesh)
    opt_ref = lars_cuda.create_optimizer_lars(ref, lr=0.1, momentum=0.9, weight_decay=1e-3, bn_bias_separately=True)
    opt = lars_cuda.create_optimizer_lars(model, lr=0.1, momentum=0.9, weight_decay=1e-3, bn_bias_separately=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    gen = torch.Generator().manual_seed(3)
    for _ in range(2):
        x = torch.randn(4, 3, 8, 8, generator=gen)
        opt_ref.zero_grad()
        opt.zero_grad()
        ref(x).square().mean().backward()
        scaler.scale(model(x[2 * RANK:2 * RANK + 2]).square().mean()).backward()
        opt_ref.step()
        scaler.step(opt)
        scaler.update()
    return {"err": max_rel_err(ref, model, opt_ref, opt), "amp_scaling": opt._step_supports_amp_scaling,
            "scale": scaler.get_scale()}


@case("trust_ratios")
def _():
    mesh = init_device_mesh("cpu", (2,))
    ref, model = net(), shard(net(), mesh)
    opt_ref = lars_cuda.create_optimizer_lars(ref, lr=0.1, momentum=0.9, weight_decay=1e-3, bn_bias_separately=True)
    opt = lars_cuda.create_optimizer_lars(model, lr=0.1, momentum=0.9, weight_decay=1e-3, bn_bias_separately=True)
    set_grads(ref, model, 0)
    a, b = opt_ref.trust_ratios(), opt.trust_ratios()
    return {"n": [a.numel(), b.numel()], "err": ((a - b).abs() / a.abs()).max().item()}


@case("dcp_round_trip")
def _():
    """get/set_optimizer_state_dict through torch.distributed.checkpoint: a loaded
    model and optimizer step bit-identically to the ones that were saved."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    mesh = init_device_mesh("cpu", (2,))
    model = shard(net(), mesh)
    kw = dict(lr=torch.tensor(0.1), momentum=0.9, weight_decay=1e-3, bn_bias_separately=True)
    opt = lars_cuda.create_optimizer_lars(model, **kw)
    ref = net()
    for step in range(2):
        set_grads(ref, model, step)
        opt.step()
    folder = tempfile.mkdtemp(prefix="lars-dcp-") if RANK == 0 else None
    box = [folder]
    dist.broadcast_object_list(box)
    folder = box[0]
    dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)},
             checkpoint_id=folder)
    model2 = shard(net(), mesh)
    opt2 = lars_cuda.create_optimizer_lars(model2, **{**kw, "lr": torch.tensor(0.5)})
    state = {"model": get_model_state_dict(model2), "optim": get_optimizer_state_dict(model2, opt2)}
    dcp.load(state, checkpoint_id=folder)
    set_model_state_dict(model2, state["model"])
    set_optimizer_state_dict(model2, opt2, state["optim"])
    for m in (model, model2):
        set_grads(ref, m, 5)
    opt.step()
    opt2.step()
    same = all(torch.equal(full(a.detach()), full(b.detach())) for a, b in zip(model.parameters(), model2.parameters()))
    buf = opt2.state[next(iter(model2.parameters()))]["momentum_buffer"]
    return {"bit_identical": same, "buffer_is_dtensor": isinstance(buf, DTensor),
            "lr": float(opt2.param_groups[0]["lr"])}


@case("zero1")
def _():
    """ZeroRedundancyOptimizer(optimizer_class=Lars): each rank steps whole
    tensors, so the norms need no collective of ours; the params match Lars."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    results = {}
    for path, impl in PATHS.items():
        ref, model = net(), net()
        decay, no_decay = lars_cuda.split_lars_parameters(model)
        opt = ZeroRedundancyOptimizer(decay, optimizer_class=lars_cuda.Lars, lr=0.1, momentum=0.9,
                                      weight_decay=1e-3, **impl)
        opt.add_param_group(dict(params=no_decay, weight_decay=0.0, lars=False))
        opt_ref = lars_cuda.create_optimizer_lars(ref, lr=0.1, momentum=0.9, weight_decay=1e-3,
                                                  bn_bias_separately=True, **impl)
        for step in range(3):
            set_grads(ref, model, step)
            opt_ref.step()
            opt.step()
        results[path] = {"err": max_rel_err(ref, model)}
    return results


def main() -> int:
    global RANK
    dist.init_process_group("gloo")
    RANK = dist.get_rank()
    torch.set_num_threads(1)
    only = set(sys.argv[2:])
    for run in CASES:
        if not only or run.__name__ in only:
            run()
        dist.barrier()
    if RANK == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(RESULTS, f, indent=1)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    code = main()
    # As examples/fsdp2_torchrun.py: DTensor's caches keep the gloo group's worker
    # threads alive past destroy_process_group, and one that lets go of a finished
    # collective while Python finalizes aborts the rank (pytorch/pytorch#190489).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
