"""train/checkpoint.py's sharded (FSDP) checkpoints on their own, in one process
(torch.distributed.checkpoint saves without a process group): the folder appears
whole or not at all, a killed save leaves the previous one loadable, and the
next start clears what the kill left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from train import checkpoint as ckpt

from ..support.paths import ROOT

FMT = ckpt.dcp_format("checkpoint-{epoch}.pth.tar")


def shards(value, n=4):
    return {"model": {"w": torch.full((n,), float(value))}, "optimizer": {"state": {}, "param_groups": []}}


def trainer_state(epoch):
    return {"scheduler": {"last_epoch": epoch}, "epoch": epoch, "step": 10 * epoch}


def test_dcp_folder_name_follows_the_checkpoint_format():
    assert FMT == "checkpoint-{epoch}.dcp"
    assert ckpt.dcp_format("run-{epoch}.pt") == "run-{epoch}.pt.dcp"


def test_save_dcp_atomic_leaves_only_the_named_folder_and_it_loads(tmp_path):
    path = ckpt.checkpoint_path(str(tmp_path), FMT, 1)
    ckpt.save_dcp_atomic(shards(1.5), trainer_state(1), path)
    assert os.listdir(tmp_path) == ["checkpoint-1.dcp"]
    assert ckpt.load_dcp_trainer_state(path)["step"] == 10
    into = shards(0.0)
    ckpt.load_dcp_shards(into, path)
    assert torch.equal(into["model"]["w"], torch.full((4,), 1.5))


def test_latest_valid_sharded_is_the_newest_complete_folder(tmp_path):
    for e in (1, 2):
        ckpt.save_dcp_atomic(shards(e), trainer_state(e), ckpt.checkpoint_path(str(tmp_path), FMT, e))
    os.remove(tmp_path / "checkpoint-2.dcp" / ckpt.DCP_METADATA_FILE)  # no longer complete
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint .*checkpoint-2.dcp"):
        path, got = ckpt.latest_valid(str(tmp_path), FMT, sharded=True)
    assert path.endswith("checkpoint-1.dcp") and got["epoch"] == 1


def test_a_failed_sharded_save_raises_and_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    ckpt.save_dcp_atomic(shards(1), trainer_state(1), ckpt.checkpoint_path(str(tmp_path), FMT, 1))

    def broken_barrier():
        raise RuntimeError("a peer died")

    with pytest.raises(RuntimeError, match="a peer died"):
        ckpt.save_dcp_atomic(shards(2), trainer_state(2), ckpt.checkpoint_path(str(tmp_path), FMT, 2),
                             barrier=broken_barrier)
    assert os.listdir(tmp_path) == ["checkpoint-1.dcp"]
    assert ckpt.latest_valid(str(tmp_path), FMT, sharded=True)[1]["epoch"] == 1


_KILLED_SAVER = """
import sys, time, torch
from train import checkpoint as ckpt
def wait_forever():  # the shards are written; a rank that never reaches the barrier
    print("shards written", flush=True)
    time.sleep(600)
ckpt.save_dcp_atomic({"model": {"w": torch.ones(1 << 20)}}, {"epoch": 2, "step": 20, "scheduler": {}},
                     sys.argv[1], barrier=wait_forever)
"""


def test_a_kill_mid_save_leaves_the_previous_checkpoint_and_the_next_start_clears_the_rest(tmp_path):
    ckpt.save_dcp_atomic(shards(1), trainer_state(1), ckpt.checkpoint_path(str(tmp_path), FMT, 1))
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_SAVER, ckpt.checkpoint_path(str(tmp_path), FMT, 2)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "shards written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = sorted(os.listdir(tmp_path))
    assert left[0].startswith(".tmp-dcp-") and left[1:] == ["checkpoint-1.dcp"]  # the kill left a temporary
    path, got = ckpt.latest_valid(str(tmp_path), FMT, sharded=True)
    assert path.endswith("checkpoint-1.dcp") and got["epoch"] == 1
    removed = ckpt.remove_stale_temporaries(str(tmp_path))
    assert [os.path.basename(p) for p in removed] == [left[0]]
    assert os.listdir(tmp_path) == ["checkpoint-1.dcp"]
