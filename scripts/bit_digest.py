"""Digests of the optimizer's results, to show a refactor kept every bit.

    python scripts/bit_digest.py OUT.json            # before the change
    python scripts/bit_digest.py OUT2.json           # after it
    python scripts/bit_digest.py --compare OUT.json OUT2.json

Steps ResNet-50's parameter list (torchvision's shapes, seeded weights and
gradients) three times in float32 and bfloat16 with every flavour (Lars with the
seed's options, with Nesterov, with dampening; TimmLars; LARC; SSLLars) on every
path (fused, foreach, the reference loop), and the same flavours sharded over two
ranks (gloo on the CPU, DTensor ``Shard(0)``, fused and foreach paths). Each case's
digest is a SHA-256 over the bytes of every parameter and momentum buffer, so
-0.0 and +0.0 differ too. Not a test (it compares two builds); docs/development.md
says when to run it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import lars_cuda
from lars_cuda.compat import LARC, SSLLars, TimmLars

STEPS = 3
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}
PATHS = {"fused": dict(fused=True), "foreach": dict(foreach=True, fused=False),
         "single": dict(foreach=False, fused=False)}


def flavours():
    """name -> (param_groups -> optimizer); lr tensors and two groups where the seed has them."""
    return {
        "seed": lambda groups, path: lars_cuda.Lars(groups, lr=0.5, momentum=0.9, weight_decay=5e-4, **path),
        "seed_nesterov": lambda groups, path: lars_cuda.Lars(groups, lr=torch.tensor(0.5), momentum=0.9,
                                                             weight_decay=5e-4, nesterov=True, **path),
        "seed_dampening": lambda groups, path: lars_cuda.Lars(groups, lr=0.5, momentum=0.9, dampening=0.1,
                                                              weight_decay=5e-4, **path),
        "timm": lambda groups, path: TimmLars(groups, lr=0.5, momentum=0.9, dampening=0.1, weight_decay=5e-4,
                                              trust_clip=True, **path),
        "larc": lambda groups, path: LARC(torch.optim.SGD(groups, lr=0.5, momentum=0.9, weight_decay=5e-4), **path),
        "ssl": lambda groups, path: SSLLars(groups, lr=0.5, weight_decay=1e-6, momentum=0.9, **path),
    }


def resnet50_shapes() -> list[tuple[int, ...]]:
    import torchvision

    with torch.device("meta"):
        model = torchvision.models.resnet50()
    return [tuple(p.shape) for p in model.parameters()]


def make_params(shapes, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter((torch.randn(shape, generator=gen) * 0.05).to(dtype))
        params.append(p)
    return params, gen


def set_grads(params, gen, step):
    for i, p in enumerate(params):
        g = torch.randn(p.shape, generator=gen) * (0.01 * (1 + i % 7))
        if i % 13 == 5 and step == 0:
            g.zero_()  # a zero-norm gradient: every flavour's zero rule
        p.grad = g.to(p.dtype)


def groups_of(params):
    """The seed's grouping: LARS for weights, not for 1-D params."""
    return [{"params": [p for p in params if p.ndim > 1]},
            {"params": [p for p in params if p.ndim == 1], "weight_decay": 0.0}]


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().view(torch.uint8).numpy().tobytes() if t.dtype != torch.bfloat16
                 else t.detach().contiguous().view(torch.int16).numpy().tobytes())
    return h.hexdigest()[:32]


def state_tensors(opt, params):
    out = []
    for p in params:
        for v in opt.state.get(p, {}).values():
            if isinstance(v, torch.Tensor):
                out.append(v.full_tensor() if hasattr(v, "full_tensor") else v)
    return out


def unsharded(shapes) -> dict[str, str]:
    out = {}
    for dname, dtype in DTYPES.items():
        for fname, make in flavours().items():
            for pname, path in PATHS.items():
                params, gen = make_params(shapes, dtype)
                opt = make(groups_of(params), path)
                for step in range(STEPS):
                    set_grads(params, gen, step)
                    opt.step()
                out[f"{dname}/{fname}/{pname}"] = digest(list(params) + state_tensors(opt, params))
                print(f"{dname}/{fname}/{pname}: {out[f'{dname}/{fname}/{pname}']}", flush=True)
    return out


def _sharded_worker(rank, shapes, port, result_file):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (2,))
    out = {}
    for dname, dtype in DTYPES.items():
        for fname, make in flavours().items():
            for pname in ("fused", "foreach"):
                full, gen = make_params(shapes, dtype)
                params = [torch.nn.Parameter(distribute_tensor(p.detach(), mesh, [Shard(0)])) for p in full]
                opt = make(groups_of(params), PATHS[pname])
                for step in range(STEPS):
                    set_grads(full, gen, step)
                    for p, f in zip(params, full):
                        p.grad = distribute_tensor(f.grad, mesh, [Shard(0)])
                    opt.step()
                out[f"sharded/{dname}/{fname}/{pname}"] = digest(
                    [p.full_tensor() for p in params] + state_tensors(opt, params))
    if rank == 0:
        with open(result_file, "w") as f:
            json.dump(out, f)
    dist.destroy_process_group()


def sharded(shapes) -> dict[str, str]:
    import socket
    import tempfile

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        mp.spawn(_sharded_worker, args=(shapes, port, f.name), nprocs=2)
        with open(f.name) as r:
            return json.load(r)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--no-sharded", action="store_true")
    args = parser.parse_args()
    if args.compare:
        before, after = (json.load(open(p)) for p in args.compare)
        differ = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        print(f"{len(before)} cases before, {len(after)} after; {len(differ)} differ" +
              ("".join(f"\n  {k}: {before.get(k)} -> {after.get(k)}" for k in differ)))
        return 1 if differ else 0
    torch.set_num_threads(max(1, torch.get_num_threads()))
    shapes = resnet50_shapes()
    out = unsharded(shapes)
    if not args.no_sharded:
        out.update(sharded(shapes))
    out["_build"] = {"cpu_kernel": lars_cuda.ops.cpu_kernel(), "torch": torch.__version__}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
    print(f"{len(out) - 1} digests -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
