"""Checkpoints: written atomically, read as data only, and found again by epoch;
and the trainer's resume() and save(), which use them.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts: model,
optimizer and scheduler state, epoch, step, RNG states and the run's arguments.
It is loaded with ``torch.load(weights_only=True)``, so a tampered file cannot
run code; a truncated or unreadable one is skipped with a warning.

Under ``--fsdp`` a checkpoint is a folder written by every rank through
``torch.distributed.checkpoint`` (each rank its shards of the model and the
optimizer state) plus ``trainer.pt`` (the rest, by rank 0). It is written into
a temporary folder and renamed when every rank has finished, so a kill
mid-save leaves the previous checkpoint as it was. It is read through
train/dcp_reader.py (torch's own reader unpickles code), and checked entry by
entry before a resume uses it.

Every load path, and what keeps it data:
  load()                  plain checkpoint / trainer.pt: torch.load(weights_only=True)
  load_dcp_shards()       .metadata: restricted unpickler; entries: weights_only
  verify_dcp()            the same readers over every entry, before a resume
  latest_valid()          the above; skips unreadable files, stops at a refused object
A refused object raises UnsafeCheckpointError (never skipped: a tampered folder is
for a person to look at, not a reason to resume silently from an older one).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import tempfile
import warnings
from typing import Any, Callable, Optional

import torch

from train.dcp_reader import UnsafeCheckpointError, load_weights_only

__all__ = ["CheckpointError", "UnsafeCheckpointError", "checkpoint_path", "dcp_format", "latest_valid", "load",
           "resume", "save", "load_dcp_shards", "load_for_resume", "load_dcp_trainer_state", "remove_stale_temporaries",
           "save_atomic", "save_dcp_atomic", "verify_dcp"]


class CheckpointError(ValueError):
    """The checkpoint a run was told to resume from cannot be used (missing, incomplete or corrupt)."""


def save_atomic(obj: dict[str, Any], path: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a crash
    leaves either the old file or the new one, never half of one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth.tar", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load(path: str) -> Any:
    """A plain checkpoint file, as data (an object that is not raises UnsafeCheckpointError)."""
    with open(path, "rb") as f:
        return load_weights_only(f, path)


def checkpoint_path(log_dir: str, fmt: str, epoch: int) -> str:
    return os.path.join(log_dir, fmt.format(epoch=epoch))


def _epoch_pattern(fmt: str) -> re.Pattern:
    head, _, tail = fmt.partition("{epoch}")
    return re.compile("^" + re.escape(head) + r"(\d+)" + re.escape(tail) + "$")


def list_checkpoints(log_dir: str, fmt: str) -> list[tuple[int, str]]:
    """(epoch, path) of every file in log_dir named by fmt, newest epoch first."""
    pattern = _epoch_pattern(fmt)
    found = []
    for path in glob.glob(os.path.join(log_dir, "*")):
        m = pattern.match(os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found, reverse=True)


def remove_stale_temporaries(log_dir: str) -> list[str]:
    """Delete the temporary files and folders of writes that a kill interrupted
    (save_atomic / save_dcp_atomic never renamed them). Call only while nothing
    is writing to log_dir."""
    stale = glob.glob(os.path.join(log_dir, ".tmp-*.pth.tar")) + glob.glob(os.path.join(log_dir, ".tmp-dcp-*"))
    for path in stale:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
    return stale


# ---- sharded (FSDP) checkpoints: one folder per epoch -------------------------------

DCP_TRAINER_FILE = "trainer.pt"  # rank 0's part: scheduler, epoch, step, history, args
DCP_METADATA_FILE = ".metadata"  # written by torch.distributed.checkpoint when a save completes


def dcp_format(fmt: str) -> str:
    """The folder name of a sharded checkpoint: checkpoint-{epoch}.pth.tar -> checkpoint-{epoch}.dcp."""
    return re.sub(r"(\.pth)?(\.tar)?$", "", fmt) + ".dcp"


def save_dcp_atomic(
    sharded_state: dict[str, Any],
    trainer_state: dict[str, Any],
    path: str,
    *,
    is_main: bool = True,
    broadcast_object: Callable[[Any], Any] = lambda x: x,
    barrier: Callable[[], None] = lambda: None,
) -> None:
    """Every rank calls this. The shards go through torch.distributed.checkpoint
    into a temporary folder next to ``path``, rank 0 adds ``trainer.pt``, and
    after a barrier rank 0 renames the folder to ``path``: a crash at any point
    leaves either the old checkpoints or the new one complete, never half of one."""
    import torch.distributed.checkpoint as dcp

    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    if is_main:
        os.makedirs(folder, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-dcp-", dir=folder)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide the checkpoint from the user's group
    tmp = broadcast_object(tmp)
    done = False
    try:
        dcp.save(sharded_state, checkpoint_id=tmp)
        if is_main:
            save_atomic(trainer_state, os.path.join(tmp, DCP_TRAINER_FILE))
        barrier()  # every rank's shards are written
        if is_main:
            if os.path.isdir(path):  # the same epoch saved again (a rerun): replace it
                shutil.rmtree(path)
            os.replace(tmp, path)
        barrier()
        done = True
    finally:
        if not done and is_main and tmp is not None and os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def verify_dcp(path: str) -> None:
    """Reads every entry of a sharded checkpoint once, as data; raises if the folder is
    incomplete, truncated or corrupt, UnsafeCheckpointError if it holds code."""
    from train import dcp_reader

    if not os.path.isfile(os.path.join(path, DCP_METADATA_FILE)):
        raise FileNotFoundError(f"{path} has no {DCP_METADATA_FILE}: not a complete sharded checkpoint")
    dcp_reader.verify(path)


def load_dcp_trainer_state(path: str) -> dict[str, Any]:
    """rank 0's part of a sharded checkpoint, after verify_dcp."""
    verify_dcp(path)
    return load(os.path.join(path, DCP_TRAINER_FILE))


def load_dcp_shards(sharded_state: dict[str, Any], path: str) -> None:
    """Every rank calls this: fills ``sharded_state`` (its shards) in place from ``path``,
    through train/dcp_reader.py (data only)."""
    from train import dcp_reader

    dcp_reader.load(sharded_state, path)


def load_for_resume(path: str, sharded: bool) -> dict[str, Any]:
    """The checkpoint a user named with ``--resume PATH``: its contents, or a CheckpointError
    that says what is wrong with it (UnsafeCheckpointError as it is)."""
    try:
        state = load_dcp_trainer_state(path) if sharded else load(path)
    except UnsafeCheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"cannot resume from {path}: {type(exc).__name__}: {exc}") from exc
    required = _REQUIRED_SHARDED if sharded else _REQUIRED_PLAIN
    if not isinstance(state, dict) or not required <= state.keys():
        raise CheckpointError(f"cannot resume from {path}: not a trainer checkpoint (needs {sorted(required)})")
    return state


_REQUIRED_PLAIN = frozenset({"model", "optimizer", "epoch"})
_REQUIRED_SHARDED = frozenset({"epoch", "step", "scheduler"})


def latest_valid(log_dir: str, fmt: str, sharded: bool = False) -> Optional[tuple[str, dict[str, Any]]]:
    """The newest checkpoint that loads, with its contents; None if there is none.
    ``sharded``: fmt names folders (save_dcp_atomic); the contents are rank 0's
    ``trainer.pt``, the shards are loaded by every rank with load_dcp_shards."""
    required = _REQUIRED_SHARDED if sharded else _REQUIRED_PLAIN
    for _, path in list_checkpoints(log_dir, fmt):
        try:
            state = load_dcp_trainer_state(path) if sharded else load(path)
        except UnsafeCheckpointError:
            raise  # tampered: a person must look, not an older checkpoint quietly take over
        except Exception as exc:  # truncated, corrupt, or not a checkpoint at all
            warnings.warn(f"skipping unreadable checkpoint {path}: {type(exc).__name__}: {exc}", stacklevel=2)
            continue
        if not isinstance(state, dict) or not required <= state.keys():
            warnings.warn(f"skipping {path}: not a trainer checkpoint", stacklevel=2)
            continue
        return path, state
    return None


# ---- the trainer's resume and save --------------------------------------------------------


def resume(args, dist, model, optimizer, scheduler, scaler) -> tuple[int, int, list[dict[str, Any]]]:
    """Loads the checkpoint the run continues from into the model, optimizer,
    scheduler and scaler, and returns (start epoch, step, history); (0, 0, []) after
    broadcasting rank 0's initial weights when there is none. ``--resume auto``:
    the newest valid checkpoint in --log-dir; a torchrun restart always continues
    from there. Rank 0 finds and reads it, every rank gets it (or the same error)."""
    # torchrun --max-restarts starts the workers again after one died, with the
    # same command line: a restart always continues from the last checkpoint.
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0)
    if restarts > 0 and dist.is_main:
        print(f"torchrun restarted the workers (restart {restarts}); continuing from the last complete "
              f"checkpoint in {args.log_dir}", flush=True)
    where = args.resume if args.resume is not None or restarts == 0 else "auto"
    state: Optional[dict[str, Any]] = None
    error: Optional[str] = None
    if where and dist.is_main:
        try:
            state = find_checkpoint(args, where)
        except (CheckpointError, UnsafeCheckpointError) as exc:
            error = str(exc)
    if where:
        # Only when resuming: the optimizer state travels with the checkpoint, so no
        # engine ever broadcasts (and dummy-steps) an empty optimizer state. A refused
        # checkpoint travels too, so that every rank stops with the same message.
        state, error = dist.broadcast_object((state, error))
        if error is not None:
            raise CheckpointError(error)
    if state is None:
        dist.broadcast_initial_state(model)
        return 0, 0, []
    if args.fsdp:
        # Every rank reads its own shards of the model and the optimizer state.
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        shards = sharded_state(model, optimizer)
        load_dcp_shards(shards, state["path"])
        set_model_state_dict(model, shards["model"])
        set_optimizer_state_dict(model, optimizer, shards["optimizer"])
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return state["epoch"], state["step"], list(state.get("history", []))


def find_checkpoint(args, where: str) -> Optional[dict[str, Any]]:
    """rank 0: the contents of the checkpoint to resume from (with its "path"), or None.
    ``where``: "auto" (the newest valid one in --log-dir) or a path."""
    if where != "auto":
        return {**load_for_resume(where, sharded=args.fsdp), "path": where}
    for path in remove_stale_temporaries(args.log_dir):
        print(f"removed {path}: a checkpoint write that was interrupted", flush=True)
    found = latest_valid(args.log_dir, trainer_format(args), sharded=args.fsdp)
    if not found:
        print(f"no checkpoint in {args.log_dir}: starting from scratch", flush=True)
        return None
    print(f"resuming from {found[0]}", flush=True)
    return {**found[1], "path": found[0]}


def trainer_format(args) -> str:
    """--checkpoint-format, as a folder name (.dcp) under --fsdp."""
    return dcp_format(args.checkpoint_format) if args.fsdp else args.checkpoint_format


def sharded_state(model, optimizer) -> dict[str, Any]:
    """This rank's shards of the model and optimizer state (DTensors), for DCP."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}


def save(args, dist, model, optimizer, scheduler, scaler, *, epoch: int, step: int,
         history: list[dict[str, Any]]) -> None:
    """Rank 0 writes the checkpoint of the end of ``epoch``; under --fsdp every rank
    calls this and writes its shards."""
    if not (dist.is_main or args.fsdp):
        return
    import random

    use_cuda = torch.cuda.is_available() and not args.no_cuda
    state = {
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "step": step,
        "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
                "cuda": torch.cuda.get_rng_state() if use_cuda else None},
        "args": args.as_dict(),
        "history": history,
    }
    path = checkpoint_path(args.log_dir, trainer_format(args), epoch)
    if args.fsdp:
        save_dcp_atomic(sharded_state(model, optimizer), state, path, is_main=dist.is_main,
                        broadcast_object=dist.broadcast_object, barrier=dist.barrier)
    else:
        save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), **state}, path)
