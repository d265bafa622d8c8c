"""One small interface over Horovod, torch.distributed and a single process.

The trainer talks to the communication library only through :class:`Dist`:
rank/size, wrapping the model and optimizer (gradient averaging, accumulation
over B backward passes, fp16 compression), metric reduction, broadcasting a
resumed checkpoint, and the one step that differs between engines.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any, Optional

import torch
from torch import nn


def detect_backend(requested: str) -> str:
    """auto: Horovod under mpirun/horovodrun, torch.distributed under torchrun, else none."""
    if requested != "auto":
        return requested
    if any(k in os.environ for k in ("HOROVOD_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")):
        return "horovod"
    if "TORCHELASTIC_RUN_ID" in os.environ or ("WORLD_SIZE" in os.environ and "RANK" in os.environ):
        return "torch"
    return "none"


class Dist:
    """Single process. The base of the two distributed engines below."""

    name = "none"
    rank = 0
    size = 1
    local_rank = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap_model(self, model: nn.Module, device: torch.device, fp16_allreduce: bool) -> nn.Module:
        return model

    def wrap_optimizer(self, optimizer, model: nn.Module, backward_passes: int, fp16_allreduce: bool):
        return optimizer

    def broadcast_initial_state(self, model: nn.Module) -> None:
        pass

    def broadcast_object(self, obj: Any) -> Any:
        return obj

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        return self.all_reduce_sum(t) / self.size

    def barrier(self) -> None:
        pass

    def no_sync(self, model: nn.Module, last_chunk: bool):
        """Context for one backward pass of an accumulation: gradient averaging runs
        only on the last of the B chunks."""
        return contextlib.nullcontext()

    def optimizer_step(self, optimizer, scaler: Optional[torch.amp.GradScaler]) -> None:
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
            scaler.update()

    def shutdown(self) -> None:
        pass


class HorovodDist(Dist):
    name = "horovod"

    def __init__(self, timeout_s: float = 600.0):
        import horovod.torch as hvd

        # A rank that died or never submits a tensor stalls the others; without a
        # shutdown time Horovod only warns, forever. Unless the user chose one,
        # give up after the trainer's --dist-timeout, with an error on every rank.
        os.environ.setdefault("HOROVOD_STALL_CHECK_TIME_SECONDS", str(int(min(60.0, max(1.0, timeout_s / 2)))))
        os.environ.setdefault("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", str(int(max(2.0, timeout_s))))
        hvd.init()
        self.hvd = hvd
        self.rank, self.size, self.local_rank = hvd.rank(), hvd.size(), hvd.local_rank()
        self._broadcasts = 0

    def wrap_optimizer(self, optimizer, model, backward_passes, fp16_allreduce):
        compression = self.hvd.Compression.fp16 if fp16_allreduce else self.hvd.Compression.none
        return self.hvd.DistributedOptimizer(
            optimizer, named_parameters=model.named_parameters(), compression=compression,
            backward_passes_per_step=backward_passes, op=self.hvd.Average,
        )

    def broadcast_initial_state(self, model):
        # Only parameters and buffers: broadcasting an EMPTY optimizer state makes
        # Horovod run a dummy step (the seed's bug, spec §4); resumed optimizer state
        # travels with the checkpoint through broadcast_object instead.
        self.hvd.broadcast_parameters(model.state_dict(), root_rank=0)

    def broadcast_object(self, obj):
        # An explicit name: Horovod's default is derived from type(obj), which
        # differs between the root (a dict) and the others (None), and a
        # mismatched name is a deadlock (found by the two-host resume test).
        self._broadcasts += 1
        return self.hvd.broadcast_object(obj, root_rank=0, name=f"trainer.broadcast_object.{self._broadcasts}")

    def all_reduce_sum(self, t):
        return self.hvd.allreduce(t, op=self.hvd.Sum)

    def barrier(self):
        self.hvd.allreduce(torch.zeros(1), name="barrier")

    def optimizer_step(self, optimizer, scaler):
        if scaler is None:
            optimizer.step()
            return
        # GradScaler must see averaged gradients: all-reduce first, then step without a second sync.
        optimizer.synchronize()
        with optimizer.skip_synchronize():
            scaler.step(optimizer)
        scaler.update()

    def shutdown(self):
        self.hvd.shutdown()


class TorchDist(Dist):
    name = "torch"

    def __init__(self, use_cuda: bool, timeout_s: float, fsdp: bool = False):
        import torch.distributed as dist

        # fsdp: the trainer shards the model with fully_shard (train/fsdp.py), which
        # reduce-scatters the grads itself: no DDP wrapper then.
        self.fsdp = fsdp
        self.dist = dist
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))

    def wrap_model(self, model, device, fp16_allreduce):
        if self.fsdp:
            return model
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        if fp16_allreduce:
            ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
        return ddp

    def no_sync(self, model, last_chunk):
        if self.fsdp:
            # FSDP2 accumulates unsharded grads until the chunk that reduce-scatters them.
            model.set_requires_gradient_sync(last_chunk)
            return contextlib.nullcontext()
        return contextlib.nullcontext() if last_chunk else model.no_sync()

    def broadcast_module(self, model: nn.Module) -> None:
        """Rank 0's parameters and buffers to every rank, in place (before sharding)."""
        for t in model.state_dict().values():
            self.dist.broadcast(t, src=0)

    def all_reduce_max(self, t):
        t = t.clone()
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return t

    def broadcast_object(self, obj):
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce_sum(self, t):
        t = t.clone()
        self.dist.all_reduce(t, op=self.dist.ReduceOp.SUM)
        return t

    def barrier(self):
        self.dist.barrier()

    def shutdown(self):
        self.dist.destroy_process_group()


def make_dist(backend: str, use_cuda: bool, timeout_s: float = 600.0, fsdp: bool = False) -> Dist:
    backend = detect_backend(backend)
    if fsdp and backend != "torch":
        raise ValueError(f"--fsdp shards the model with torch.distributed (run under torchrun with --dist torch "
                         f"or auto); got --dist {backend}")
    if backend == "horovod":
        return HorovodDist(timeout_s)
    if backend == "torch":
        return TorchDist(use_cuda, timeout_s, fsdp=fsdp)
    if backend == "none":
        return Dist()
    raise ValueError(f"unknown --dist {backend!r}; choose auto, horovod, torch or none")
