"""The sharded step: LARS on DTensor parameters (FSDP2's ``fully_shard``, HSDP,
any ``Shard``/``Replicate`` placement).

LARS needs whole-tensor norms, and each rank holds one shard of each tensor.
So a sharded step runs in two halves around ONE all-reduce:

1. every rank sums p² and g² over its local shards (the fused kernel's norm
   pass, ``torch.ops.lars_cuda.fused_lars_norms``; or ``torch._foreach_norm`` /
   ``vector_norm`` on the other paths), float64, one row per tensor;
2. one ``all_reduce(SUM)`` per device mesh carries every row of every param
   group (and the AMP inf flag, so all ranks skip a step together);
3. the ratios come from the global sums and the update runs on the local
   shards (``fused_lars_apply_``, or the foreach/loop math with given norms).

No host synchronisation: the collective runs on the current stream, so the
step stays capturable in a CUDA graph where the collective is.

Which ranks reduce: over the mesh dimensions that shard any tensor of the
step (FSDP: its one dimension; HSDP: the shard dimension only, the replicas
hold equal shards). A tensor replicated along a reduced dimension counts once
(only coordinate 0 of that dimension contributes). ``Partial`` placements are
refused: a param is never a pending sum.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import torch
from torch import Tensor

__all__ = ["HAS_DTENSOR", "any_dtensor", "is_dtensor", "local_sums", "reduce_sums", "sharded_trust_ratio_sums"]


def _dtensor_type():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed
        return None
    return DTensor


_DTENSOR = _dtensor_type()
HAS_DTENSOR = _DTENSOR is not None


def is_dtensor(t: Any) -> bool:
    return _DTENSOR is not None and isinstance(t, _DTENSOR)


def any_dtensor(tensors: Iterable[Any]) -> bool:
    """Whether any of ``tensors`` is a DTensor, one subclass test per distinct type
    (a step asks it of every param: ~5 us for 161 tensors, ~35 with is_dtensor each)."""
    return _DTENSOR is not None and any(issubclass(t, _DTENSOR) for t in set(map(type, tensors)))


def _reduce_dims_and_masks(params: list[Tensor]) -> tuple[list[int], list[bool]]:
    """The mesh dims to reduce over (those that shard some tensor) and, per tensor,
    whether this rank's rows count (not a replica along a reduced dim)."""
    from torch.distributed.tensor import Shard

    dims = sorted({d for p in params for d, pl in enumerate(p.placements) if isinstance(pl, Shard)})
    masks = []
    for p in params:
        coordinate = p.device_mesh.get_coordinate()
        masks.append(all(isinstance(p.placements[d], Shard) or coordinate[d] == 0 for d in dims))
    return dims, masks


def reduce_sums(parts: list[tuple[list[Tensor], Tensor]],
                found_inf: Optional[Tensor]) -> tuple[list[Tensor], Optional[Tensor]]:
    """Sums the local rows of each part ``(DTensors, their local rows [n, k])`` over
    the ranks that shard them, in ONE all-reduce per device mesh (one per sharded
    mesh dim when tensors shard along several). Returns the global rows of each
    part, in order, and ``found_inf`` (AMP), which travels in the same buffer so
    that every rank gets the OR of all ranks' flags (None when none was given)."""
    import torch.distributed as dist

    by_mesh: dict[Any, list[int]] = {}
    for i, (params, _) in enumerate(parts):
        if params:
            by_mesh.setdefault(params[0].device_mesh, []).append(i)
    out = [rows for _, rows in parts]  # (an empty part's rows are already its global rows)
    global_inf = None
    for mesh, idx in by_mesh.items():
        dims, masks = _reduce_dims_and_masks([p for i in idx for p in parts[i][0]])
        rows = torch.cat([parts[i][1] for i in idx])
        width = rows.shape[1]  # (3 for LARS's rows, 5 for LAMB's: every part of a call has the same)
        if not all(masks):
            keep = torch.tensor(masks, dtype=rows.dtype, device=rows.device).unsqueeze(1)
            rows = rows * keep
        flat = rows.reshape(-1)
        if found_inf is not None:
            flat = torch.cat([flat, found_inf.to(device=flat.device, dtype=flat.dtype).reshape(1)])
        for d in dims:
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=mesh.get_group(d))
        if found_inf is not None:
            global_inf = flat[-1:]
            flat = flat[:-1]
        for i, part in zip(idx, flat.reshape(-1, width).split([len(parts[i][0]) for i in idx])):
            out[i] = part
    return out, global_inf


def sharded_trust_ratio_sums(params: list[Tensor]) -> Tensor:
    """Global (sum p², sum g², sum g·p) of DTensor params and their grads, float64
    [n, 3] on the CPU, for ``Lars.trust_ratios``: local sums and one all-reduce."""
    local = local_sums([p.to_local() for p in params], [p.grad.to_local() for p in params], foreach=True, dot=True)
    (rows,), _ = reduce_sums([(params, local)], None)
    return rows.cpu()


def local_sums(params: list[Tensor], grads: list[Tensor], *, foreach: bool, dot: bool = False) -> Tensor:
    """(sum p², sum g², sum g·p) per local tensor as float64 [n, 3], from norms
    computed as the unsharded paths compute them (float32, float64 for float64
    tensors), with ``torch._foreach_norm`` (foreach) or one ``vector_norm`` per
    tensor; g·p only with ``dot`` (else 0); no host sync."""
    device = params[0].device if params else torch.device("cpu")
    out = torch.zeros((len(params), 3), dtype=torch.float64, device=device)
    for compute in (torch.float32, torch.float64):
        idx = [i for i, p in enumerate(params) if (p.dtype == torch.float64) == (compute == torch.float64)]
        if not idx:
            continue
        ps, gs = [params[i] for i in idx], [grads[i] for i in idx]
        if foreach:
            w, n = torch._foreach_norm(ps, 2, dtype=compute), torch._foreach_norm(gs, 2, dtype=compute)
        else:
            w = [torch.linalg.vector_norm(p, dtype=compute) for p in ps]
            n = [torch.linalg.vector_norm(g, dtype=compute) for g in gs]
        norms = torch.stack([torch.stack(w), torch.stack(n)], dim=1).double()
        out[idx, :2] = norms * norms
        if dot:
            out[idx, 2] = torch.stack([torch.dot(g.flatten().to(compute), p.flatten().to(compute))
                                       for p, g in zip(ps, gs)]).double()
    return out
