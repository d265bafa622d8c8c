"""Checkpoints: written atomically, read as data only, and found again by epoch.

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
           "load_dcp_shards", "load_for_resume", "load_dcp_trainer_state", "remove_stale_temporaries", "save_atomic", "save_dcp_atomic",
           "verify_dcp"]


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
