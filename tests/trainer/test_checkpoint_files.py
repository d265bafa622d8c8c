"""train/checkpoint.py on its own: atomic writes, the newest valid checkpoint,
and the clean-up of writes a kill interrupted."""

from __future__ import annotations

import os

import pytest
import torch

from train import checkpoint as ckpt

from ..support.paths import ROOT

FMT = "checkpoint-{epoch}.pth.tar"


def state(epoch):
    return {"model": {"w": torch.full((3,), float(epoch))}, "optimizer": {}, "epoch": epoch}


def test_save_atomic_leaves_only_the_named_file(tmp_path):
    ckpt.save_atomic(state(1), str(tmp_path / "checkpoint-1.pth.tar"))
    assert os.listdir(tmp_path) == ["checkpoint-1.pth.tar"]
    assert ckpt.load(str(tmp_path / "checkpoint-1.pth.tar"))["epoch"] == 1


def test_latest_valid_is_the_newest_that_loads(tmp_path):
    for e in (1, 2, 3):
        ckpt.save_atomic(state(e), ckpt.checkpoint_path(str(tmp_path), FMT, e))
    (tmp_path / "checkpoint-3.pth.tar").write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint .*checkpoint-3"):
        path, got = ckpt.latest_valid(str(tmp_path), FMT)
    assert path.endswith("checkpoint-2.pth.tar") and got["epoch"] == 2


def test_temporaries_of_interrupted_writes_are_removed_and_named(tmp_path):
    ckpt.save_atomic(state(1), ckpt.checkpoint_path(str(tmp_path), FMT, 1))
    (tmp_path / ".tmp-abc123.pth.tar").write_bytes(b"half a checkpoint")  # what a kill mid-write leaves
    removed = ckpt.remove_stale_temporaries(str(tmp_path))
    assert [os.path.basename(p) for p in removed] == [".tmp-abc123.pth.tar"]
    assert os.listdir(tmp_path) == ["checkpoint-1.pth.tar"]


class _Tampered:
    """What a tampered checkpoint can hold: unpickling it would run code (here: create a file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "checkpoint-1.pth.tar"
    torch.save({"model": {}, "epoch": 1, "payload": _Tampered(str(marker))}, path)
    with pytest.raises(Exception, match="[Ww]eights only load failed|weights_only"):
        ckpt.load(str(path))
    assert not marker.exists()


_WRITER = """
import sys, torch
from train import checkpoint as ckpt
big = {"model": {f"w{i}": torch.full((4_000_000,), float(i)) for i in range(24)}, "epoch": 2}
print("writing", flush=True)
ckpt.save_atomic(big, sys.argv[1])
print("done", flush=True)
"""


def test_a_kill_in_the_middle_of_a_write_leaves_the_previous_checkpoint_loadable(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "checkpoint-last.pth.tar"
    ckpt.save_atomic(state(1), str(path))
    before = path.stat()
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    # Wait until bytes of the new checkpoint reach the disk (in a temporary file, or in
    # the named file itself if the write were not atomic), then kill the writer mid-write.
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        temporaries = [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-") and p.stat().st_size > 1 << 20]
        st = path.stat() if path.exists() else None
        if temporaries or st is None or (st.st_ino, st.st_size) != (before.st_ino, before.st_size):
            break
        time.sleep(0.001)
    assert proc.poll() is None, "the writer finished before it could be killed; make the state bigger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.load(str(path))["epoch"] == 1


def test_what_a_killed_write_leaves_is_removed_on_the_next_start(tmp_path):
    """The temporary a SIGKILL leaves is named like the ones remove_stale_temporaries clears."""
    import signal
    import subprocess
    import sys

    path = tmp_path / "checkpoint-1.pth.tar"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    while proc.poll() is None and not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir()):
        pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = [p.name for p in tmp_path.iterdir()]
    assert left and all(name.startswith(".tmp-") for name in left), left
    removed = ckpt.remove_stale_temporaries(str(tmp_path))
    assert sorted(os.path.basename(p) for p in removed) == sorted(left)
    assert not os.listdir(tmp_path)


def test_a_failed_write_raises_and_leaves_no_temporary(tmp_path):
    with pytest.raises(Exception):
        ckpt.save_atomic({"model": {}, "epoch": 1, "unpicklable": lambda: 0}, str(tmp_path / "checkpoint-1.pth.tar"))
    assert not os.listdir(tmp_path)


def test_a_newest_file_that_is_not_a_trainer_checkpoint_is_skipped(tmp_path):
    ckpt.save_atomic(state(1), ckpt.checkpoint_path(str(tmp_path), FMT, 1))
    torch.save({"weights": torch.ones(2)}, ckpt.checkpoint_path(str(tmp_path), FMT, 2))  # loads, but no epoch
    torch.save(torch.ones(2), ckpt.checkpoint_path(str(tmp_path), FMT, 3))  # loads, not even a dict
    with pytest.warns(UserWarning, match="skipping .*checkpoint-[23].pth.tar: not a trainer checkpoint"):
        path, got = ckpt.latest_valid(str(tmp_path), FMT)
    assert path.endswith("checkpoint-1.pth.tar") and got["epoch"] == 1
