"""Ranks as threads of this process: torch's threaded process group (the one its
own DTensor tests use), so a sharded step runs in the test's own process. That is
what lets mutation testing see the sharded code (it watches one process), and it
is fast: no torchrun, no imports per rank. tests/integration/test_sharded.py keeps the real
two-process gloo launch."""

from __future__ import annotations

import threading
import traceback
from typing import Any, Callable

import torch
import torch.distributed as dist


def available() -> bool:
    try:
        from torch.testing._internal.distributed import multi_threaded_pg  # noqa: F401
    except ImportError:  # a torch without distributed, or without its test helpers
        return False
    return dist.is_available() and hasattr(torch._C._distributed_c10d, "_set_thread_isolation_mode")


def run_on_ranks(fn: Callable[[int], Any], world_size: int = 2) -> list[Any]:
    """``fn(rank)`` on ``world_size`` threads, each a rank of one threaded process
    group; the results in rank order. The first rank's exception is raised here
    (the others are woken so that none waits on a collective forever)."""
    from torch.testing._internal.distributed.multi_threaded_pg import (ProcessLocalGroup, _install_threaded_pg,
                                                                       _uninstall_threaded_pg)

    torch._C._distributed_c10d._set_thread_isolation_mode(True)
    world = _install_threaded_pg()
    store = dist.HashStore()
    results: list[Any] = [None] * world_size
    errors: list[tuple[int, BaseException, str]] = []

    def rank_main(rank: int) -> None:
        dist.init_process_group("threaded", rank=rank, world_size=world_size, store=store)
        try:
            results[rank] = fn(rank)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append((rank, exc, traceback.format_exc()))
            ProcessLocalGroup.exception_handle(exc)
        finally:
            if dist.distributed_c10d._world is world and dist.is_initialized():
                dist.destroy_process_group()

    threads = [threading.Thread(target=rank_main, args=(rank,), daemon=True) for rank in range(world_size)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        _uninstall_threaded_pg()
        ProcessLocalGroup.reset()
        torch._C._distributed_c10d._set_thread_isolation_mode(False)
    if any(t.is_alive() for t in threads):
        raise TimeoutError("a rank did not finish in 120 s (a collective that not every rank joined?)")
    if errors:
        rank, exc, trace = min(errors, key=lambda e: e[0])
        raise exc.with_traceback(exc.__traceback__) from RuntimeError(f"rank {rank}:\n{trace}")
    return results
