"""train/checkpoint.py on its own: atomic writes, the newest valid checkpoint,
and the clean-up of writes a kill interrupted."""

from __future__ import annotations

import os

import pytest
import torch

from train import checkpoint as ckpt

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
