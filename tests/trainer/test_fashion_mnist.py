"""End-to-end regression check on real data: the default model, trained for a
bounded number of steps with fused LARS on Fashion-MNIST, must reach a test
accuracy far above chance (10 %). Deterministic: fixed seed, one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from ..support.paths import ROOT



@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="Debian's dataset-fashion-mnist is not installed (make setup installs it)")
def test_fused_lars_trains_the_default_model_well_above_chance(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "train", "imagenet.py"), "--dataset", "fashion-mnist",
           "--model", "cifar_resnet8", "--base-op", "lars", "--bn-bias-separately", "--optimizer-impl", "fused",
           "--batch-size", "256", "--epochs", "3", "--base-lr", "2.83", "--warmup-epochs", "0.2", "--wd", "5e-4",
           "--train-subset", "8192", "--val-subset", "2000", "--workers", "0", "--dist", "none", "--seed", "0",
           "--quiet", "--log-dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    history = json.load(open(tmp_path / "history.json"))["epochs"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["val_top1"] > 65.0, history  # chance is 10 %
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert (tmp_path / "learning_curves.png").exists()
