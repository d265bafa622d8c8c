"""Checkpoints: written atomically, read as data only, and found again by epoch.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts: model,
optimizer and scheduler state, epoch, step, RNG states and the run's arguments.
It is loaded with ``torch.load(weights_only=True)``, so a tampered file cannot
run code; a truncated or unreadable one is skipped with a warning.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import tempfile
import warnings
from typing import Any, Optional

import torch


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


def load(path: str) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


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
    """Delete the temporary files of writes that a kill interrupted (save_atomic
    never renamed them). Call only while nothing is writing to log_dir."""
    stale = glob.glob(os.path.join(log_dir, ".tmp-*.pth.tar"))
    for path in stale:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    return stale


def latest_valid(log_dir: str, fmt: str) -> Optional[tuple[str, dict[str, Any]]]:
    """The newest checkpoint that loads, with its contents; None if there is none."""
    for _, path in list_checkpoints(log_dir, fmt):
        try:
            state = load(path)
        except Exception as exc:  # truncated, corrupt, or not a checkpoint at all
            warnings.warn(f"skipping unreadable checkpoint {path}: {type(exc).__name__}: {exc}", stacklevel=2)
            continue
        if not isinstance(state, dict) or not {"model", "optimizer", "epoch"} <= state.keys():
            warnings.warn(f"skipping {path}: not a trainer checkpoint", stacklevel=2)
            continue
        return path, state
    return None
