"""A real ``--fsdp`` trainer checkpoint (2 CPU ranks under torchrun) tampered with
or damaged between runs: code in ``.metadata`` or in a non-tensor entry runs
nothing and stops the resume with a clear error on every rank; a truncated shard
makes ``--resume auto`` fall back to the previous checkpoint, and a named one
fails clearly. (The untampered resume is bit-identical: test_trainer_fsdp.py.)"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import torch

from tests.support import dcp_tamper
from .test_trainer import FMNIST, TRAIN, launch, needs_fashion
from train import dcp_reader

ARGS = [*FMNIST, "--train-subset", "256", "--val-subset", "64", "--batch-size", "32", "--fsdp"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A log dir holding checkpoint-1.dcp and checkpoint-2.dcp written by the trainer."""
    log_dir = tmp_path_factory.mktemp("fsdp-trained")
    launch([*ARGS, "--epochs", "2"], log_dir, nproc=2, launcher="torchrun", timeout=300)
    return log_dir


@pytest.fixture
def run_dir(trained, tmp_path):
    """A copy of the trained log dir to tamper with, and the marker a payload would create."""
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy, tmp_path / "code-ran"


def _resume(log_dir, resume="auto"):
    """The trainer resumed for a third epoch; (return code, everything it printed)."""
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--standalone", "--nproc-per-node", "2",
           TRAIN, *ARGS, "--epochs", "3", "--resume", str(resume), "--log-dir", str(log_dir), "--dist", "torch"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


@needs_fashion
def test_the_trainers_sharded_metadata_holds_only_allowed_globals(trained):
    seen = dcp_tamper.globals_of_metadata(trained / "checkpoint-2.dcp")
    dtypes = {(m, n) for m, n in seen if m == "torch" and isinstance(getattr(torch, n), torch.dtype)}
    assert seen - dtypes <= dcp_reader.METADATA_GLOBALS, seen - dtypes - dcp_reader.METADATA_GLOBALS


@needs_fashion
def test_code_in_the_metadata_runs_nothing_and_stops_the_resume(run_dir):
    log_dir, marker = run_dir
    dcp_tamper.replace_metadata_with_code(log_dir / "checkpoint-2.dcp", marker)
    code, out = _resume(log_dir)
    assert code != 0
    assert "checkpoint-2.dcp/.metadata: refused to load the global" in out and "open" in out, out[-3000:]
    assert not marker.exists()
    assert not (log_dir / "checkpoint-3.dcp").exists()


@needs_fashion
def test_code_in_a_non_tensor_entry_runs_nothing_and_stops_the_resume(run_dir):
    log_dir, marker = run_dir
    folder = log_dir / "checkpoint-2.dcp"
    metadata = dcp_tamper.read_metadata_trusted(folder)
    entry = next(fqn for fqn, md in metadata.state_dict_metadata.items()
                 if fqn.startswith("optimizer.param_groups") and fqn.endswith(".lr"))
    dcp_tamper.replace_entry_with_code(folder, entry, marker)
    code, out = _resume(log_dir)
    assert code != 0
    assert f"(entry {entry}): refused by torch.load(weights_only=True)" in out, out[-3000:]
    assert not marker.exists()


@needs_fashion
def test_a_truncated_shard_makes_resume_auto_fall_back_to_the_previous_checkpoint(run_dir):
    log_dir, _ = run_dir
    dcp_tamper.truncate_largest_shard(log_dir / "checkpoint-2.dcp")
    code, out = _resume(log_dir)
    assert code == 0, out[-3000:]
    assert out.count("skipping unreadable checkpoint") == 1 and "checkpoint-2.dcp" in out
    assert f"resuming from {log_dir / 'checkpoint-1.dcp'}" in out
    assert (log_dir / "checkpoint-3.dcp" / ".metadata").exists()


@needs_fashion
def test_resuming_from_a_named_truncated_folder_is_a_clear_error(run_dir):
    log_dir, _ = run_dir
    shard = dcp_tamper.truncate_largest_shard(log_dir / "checkpoint-2.dcp")
    code, out = _resume(log_dir, resume=log_dir / "checkpoint-2.dcp")
    assert code != 0
    assert f"error: cannot resume from {log_dir / 'checkpoint-2.dcp'}: EOFError: {shard}: truncated" in out, \
        out[-3000:]
