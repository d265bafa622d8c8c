"""The trainer with --fsdp (FSDP2 under torchrun, 2 CPU ranks, gloo): it trains
the model an unsharded run trains, checkpoints through
torch.distributed.checkpoint, and resumes bit for bit after a kill."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from .test_trainer import FMNIST, TRAIN, assert_same_weights, kill_when_written, launch, needs_fashion, weights


def sharded_weights(log_dir, epoch, tmp_path):
    """The full model of a sharded checkpoint (torch's own DCP -> torch.save converter)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = tmp_path / f"converted-{os.path.basename(log_dir)}-{epoch}.pt"
    dcp_to_torch_save(str(log_dir / f"checkpoint-{epoch}.dcp"), str(out))
    return torch.load(out, weights_only=True)["model"]


@needs_fashion
@pytest.mark.parametrize("base_op", [[], ["--base-op", "lamb", "--base-lr", "0.01"]], ids=["default", "lamb"])
def test_fsdp_on_two_ranks_equals_one_rank_with_the_doubled_batch(tmp_path, base_op):
    launch([*FMNIST, "--batch-size", "64", "--epochs", "1", *base_op], tmp_path / "one")
    out = launch([*FMNIST, "--batch-size", "32", "--epochs", "1", "--fsdp", *base_op], tmp_path / "fsdp", nproc=2,
                 launcher="torchrun")
    assert "torch: 2 rank(s)" in out
    assert os.path.isfile(tmp_path / "fsdp" / "checkpoint-1.dcp" / "trainer.pt")
    assert_same_weights(weights(tmp_path / "one", 1), sharded_weights(tmp_path / "fsdp", 1, tmp_path),
                        rtol=1e-4, atol=1e-6)


@needs_fashion
def test_fsdp_kill_after_epoch_one_then_resume_auto_gives_the_uninterrupted_weights(tmp_path):
    args = [*FMNIST, "--train-subset", "4000", "--batch-size", "32", "--epochs", "3", "--fsdp"]
    launch(args, tmp_path / "full", nproc=2, launcher="torchrun", timeout=300)

    killed = tmp_path / "killed"
    kill_when_written(launch(args, killed, nproc=2, launcher="torchrun", wait=False), killed / "checkpoint-1.dcp",
                      killed / "checkpoint-3.dcp")

    out = launch([*args, "--resume", "auto"], killed, nproc=2, launcher="torchrun", timeout=300)
    assert "resuming from" in out
    assert_same_weights(sharded_weights(tmp_path / "full", 3, tmp_path), sharded_weights(killed, 3, tmp_path),
                        rtol=0, atol=0)
    assert not [n for n in os.listdir(killed) if n.startswith(".tmp-")], "a temporary checkpoint was left behind"


def test_fsdp_without_torch_distributed_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, TRAIN, "--fsdp", "--dist", "none", "--log-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--fsdp needs torch.distributed" in proc.stderr and "Traceback" not in proc.stderr


def test_fsdp_with_fp16_amp_is_refused_naming_bf16(tmp_path):
    proc = subprocess.run([sys.executable, TRAIN, "--fsdp", "--amp", "fp16", "--log-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--amp bf16" in proc.stderr and "Traceback" not in proc.stderr


@needs_fashion
def test_fsdp_validation_with_more_batches_on_one_rank_keeps_the_ranks_in_step(tmp_path):
    """333 validation images in batches of 83: rank 0 runs 3 forward passes (167
    images), rank 1 only 2 (166). FSDP all-gathers in every forward, so rank 1 must
    run a padding pass or both ranks wait for each other until the timeout."""
    out = launch([*FMNIST, "--batch-size", "32", "--epochs", "1", "--fsdp", "--val-batch-size", "83",
                  "--dist-timeout", "60"], tmp_path / "fsdp", nproc=2, launcher="torchrun", timeout=120)
    assert "final: val top1" in out
