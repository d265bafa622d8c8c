"""One partition helper for every split of (params, grads, bufs) lists: by
view, by DTensor or not, by kernel dtype, by compute dtype, by device."""

from __future__ import annotations

from typing import Any, Hashable, Sequence

__all__ = ["partition", "take"]


def partition(lists: Sequence[Sequence[Any]], keys: Sequence[Hashable]) -> dict[Hashable, tuple[list[list], list[int]]]:
    """Splits parallel lists by ``keys`` (one per index), in the shape of torch's
    ``Optimizer._group_tensors_by_device_and_dtype(..., with_indices=True)``: per key
    (in order of first appearance), the sublists and the indices they came from. An
    empty list (no buffers) stays empty in every part; one part is the lists
    themselves (no copy)."""
    n = len(lists[0])
    order = list(dict.fromkeys(keys))
    if len(order) == 1:
        return {order[0]: ([list(lst) if not isinstance(lst, list) else lst for lst in lists], list(range(n)))}
    out: dict[Hashable, tuple[list[list], list[int]]] = {}
    for k in order:
        idx = [i for i in range(n) if keys[i] == k]
        out[k] = ([[lst[i] for i in idx] if len(lst) else [] for lst in lists], idx)
    return out


def take(lists: Sequence[Sequence[Any]], idx: list[int]) -> list[list]:
    """The entries ``idx`` of each of parallel lists (an empty list stays empty; all
    of them: the lists themselves)."""
    if len(idx) == len(lists[0]):
        return [lst if isinstance(lst, list) else list(lst) for lst in lists]
    return [[lst[i] for i in idx] if len(lst) else [] for lst in lists]
