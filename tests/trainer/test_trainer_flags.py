"""The trainer flags the README promises, each run as a user would run it (a real
subprocess on a Fashion-MNIST subset), checked by what it must change: the lr the
schedule reached, the weights, the optimizer's state, the TensorBoard events."""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch

from train.builders import scaled_lr

from .test_trainer import FMNIST, assert_same_weights, launch, needs_fashion, needs_mpi, weights

pytestmark = needs_fashion
QUICK = [*FMNIST, "--train-subset", "512", "--val-subset", "200", "--batch-size", "64", "--epochs", "1"]
# Enough steps (64) to learn: well above chance on the validation subset.
LONGER = [*QUICK, "--train-subset", "1024", "--batch-size", "32", "--epochs", "2"]


def history(log_dir):
    with open(os.path.join(log_dir, "history.json")) as f:
        return json.load(f)["epochs"]


def checkpoint(log_dir, epoch):
    return torch.load(os.path.join(log_dir, f"checkpoint-{epoch}.pth.tar"), weights_only=True)


@pytest.mark.parametrize("scaling, n, want", [("keep", 8, 0.2), ("linear", 8, 1.6), ("sqrt", 8, 0.2 * math.sqrt(8))])
def test_lr_scaling_rules_are_the_documented_closed_forms(scaling, n, want):
    assert scaled_lr(0.2, scaling, n) == pytest.approx(want, rel=1e-12)


def test_lr_scaling_multiplies_the_whole_schedule_by_n_times_b(tmp_path):
    lrs = {}
    for scaling in ("keep", "linear", "sqrt"):
        launch([*QUICK, "--batches-per-allreduce", "4", "--batch-size", "16", "--lr-scaling", scaling,
                "--epochs", "2", "--max-steps", "10"], tmp_path / scaling)
        lrs[scaling] = history(tmp_path / scaling)[0]["lr"]  # mid-schedule (the last epoch ends at ~0)
    assert lrs["keep"] > 0
    assert lrs["linear"] / lrs["keep"] == pytest.approx(4.0, rel=1e-9)
    assert lrs["sqrt"] / lrs["keep"] == pytest.approx(2.0, rel=1e-9)


def test_max_steps_stops_after_that_many_optimizer_steps_and_checkpoints_no_partial_epoch(tmp_path):
    launch([*QUICK, "--max-steps", "3"], tmp_path)
    assert history(tmp_path)[-1]["step"] == 3
    assert not (tmp_path / "checkpoint-1.pth.tar").exists()


def test_synthetic_data_trains_an_imagenet_shaped_model(tmp_path):
    launch(["--synthetic", "--synthetic-size", "8", "--model", "small_convnet", "--batch-size", "4",
            "--val-batch-size", "4", "--epochs", "1", "--base-op", "lars", "--workers", "0", "--quiet",
            "--no-tensorboard"], tmp_path)
    state = checkpoint(tmp_path, 1)
    assert state["step"] == 2
    assert any(v.shape[-1] == 1000 for v in state["model"].values())  # 1000 classes, ImageNet-shaped


@pytest.mark.parametrize("base_op", ["sgd", "lamb"])
def test_resume_from_an_explicit_path_continues_bit_for_bit(tmp_path, base_op):
    args = [*QUICK, "--epochs", "2", "--base-op", base_op]
    launch(args, tmp_path / "full")
    saved = tmp_path / "elsewhere.pth.tar"
    shutil.copy(tmp_path / "full" / "checkpoint-1.pth.tar", saved)
    out = launch([*args, "--resume", str(saved)], tmp_path / "resumed")
    assert "epoch 2/2" in out and "epoch 1/2" not in out
    assert_same_weights(weights(tmp_path / "full", 2), weights(tmp_path / "resumed", 2), rtol=0, atol=0)


@pytest.mark.parametrize("base_op, state_key", [("sgd", "momentum_buffer"), ("timm_lars", "momentum_buffer"),
                                                ("lars", "momentum_buffer"), ("lamb", "exp_avg")])
def test_each_base_op_trains_and_checkpoints_its_own_optimizer(tmp_path, base_op, state_key):
    base_lr = {"sgd": "0.1", "lamb": "0.01"}.get(base_op, "1.0")
    launch([*LONGER, "--base-op", base_op, "--base-lr", base_lr], tmp_path)
    h = history(tmp_path)[-1]
    assert math.isfinite(h["train_loss"]) and h["val_top1"] > 30.0  # well above chance (10 %)
    state = checkpoint(tmp_path, 2)["optimizer"]["state"]
    assert state and all(state_key in s for s in state.values())


def test_channels_last_steps_like_the_default_layout(tmp_path):
    launch(QUICK, tmp_path / "default")
    launch([*QUICK, "--channels-last"], tmp_path / "cl")
    assert_same_weights(weights(tmp_path / "default", 1), weights(tmp_path / "cl", 1), rtol=1e-3, atol=1e-4)


def tensorboard_events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def test_tensorboard_holds_the_epoch_metrics_and_the_trust_ratio_histogram(tmp_path):
    args = [a for a in QUICK if a != "--no-tensorboard"] + ["--epochs", "2"]
    launch(args, tmp_path)
    acc = tensorboard_events(tmp_path)
    hist = history(tmp_path)
    tags = {"train/loss": "train_loss", "train/top1": "train_top1", "train/top5": "train_top5",
            "val/loss": "val_loss", "val/top1": "val_top1", "val/top5": "val_top5", "lr": "lr"}
    for tag, key in tags.items():
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2], tag
        for e, h in zip(events, hist):
            assert e.value == pytest.approx(h[key], rel=1e-6, abs=1e-9), tag
    assert hist[-1]["train_top5"] >= hist[-1]["train_top1"]
    ratios = acc.Histograms("lars/trust_ratio")
    assert [r.step for r in ratios] == [1, 2]
    h = ratios[-1].histogram_value
    n_params = len([k for k in checkpoint(tmp_path, 2)["model"]])
    assert h.num == n_params  # one ratio per LARS param (no bn/bias split here)
    assert 0 < h.min <= h.max <= 50


def mean_trust_ratio(log_dir):
    h = tensorboard_events(log_dir).Histograms("lars/trust_ratio")[-1].histogram_value
    return h.sum / h.num


@pytest.mark.parametrize("launcher", ["none", "torchrun", pytest.param("mpirun", marks=needs_mpi)])
def test_fp16_amp_trains_and_logs_unscaled_trust_ratios(tmp_path, launcher):
    """GradScaler with the fused step (grads unscaled in the kernel) under each launcher;
    the logged ratios must be those of the unscaled grads, as an fp32 run logs them."""
    args = [a for a in LONGER if a != "--no-tensorboard"] + ["--optimizer-impl", "fused"]
    nproc = 1 if launcher == "none" else 2
    launch([*args, "--amp", "fp16"], tmp_path / "fp16", nproc=nproc, launcher=launcher)
    launch(args, tmp_path / "fp32", nproc=nproc, launcher=launcher)
    h = history(tmp_path / "fp16")[-1]
    assert math.isfinite(h["train_loss"]) and h["val_top1"] > 30.0
    ratio = mean_trust_ratio(tmp_path / "fp16") / mean_trust_ratio(tmp_path / "fp32")
    assert 0.5 < ratio < 2.0  # still-scaled grads would make it ~1/65536


def test_bf16_amp_trains_close_to_fp32(tmp_path):
    launch([*QUICK, "--amp", "bf16"], tmp_path / "bf16")
    launch(QUICK, tmp_path / "fp32")
    a, b = history(tmp_path / "bf16")[-1], history(tmp_path / "fp32")[-1]
    assert abs(a["train_loss"] - b["train_loss"]) < 0.1 * b["train_loss"]
    assert a["train_loss"] != b["train_loss"]  # autocast did run in bfloat16


@pytest.mark.parametrize("launcher", ["torchrun", pytest.param("mpirun", marks=needs_mpi)])
def test_fp16_allreduce_compresses_gradients_and_stays_close(tmp_path, launcher):
    launch(QUICK, tmp_path / "plain", nproc=2, launcher=launcher)
    launch([*QUICK, "--fp16-allreduce"], tmp_path / "fp16", nproc=2, launcher=launcher)
    a, b = weights(tmp_path / "plain", 1), weights(tmp_path / "fp16", 1)
    assert_same_weights(a, b, rtol=5e-2, atol=5e-3)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the gradients really went through fp16
