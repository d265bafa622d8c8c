"""Every script in examples/ runs as a user would run it (tiny data, CPU), and the
one-line integrations they show hold: timm's factory, LightningCLI's class path,
configure_optimizers with the per-step warm-up, transformers.Trainer, FSDP2 under
torchrun, a Barlow-Twins-style loop."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from ..support.paths import ROOT

EXAMPLES = os.path.join(ROOT, "examples")
BIN = os.path.dirname(sys.executable)


def run(args, tmp_path, launcher=None, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="0")
    cmd = [sys.executable, *args] if launcher is None else [os.path.join(BIN, "torchrun"), "--standalone",
                                                             "--nproc-per-node", "2", *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def example(name):
    return os.path.join(EXAMPLES, name)


def test_timm_factory_example_builds_our_larc_by_name(tmp_path):
    pytest.importorskip("timm")
    out = run([example("timm_factory.py")], tmp_path)
    assert "TimmLars with 2 param groups; trust_clip=True" in out


@pytest.mark.parametrize("optimizer, extra, name", [
    ("lars_cuda.Lars", ["--optimizer.momentum", "0.9"], "lars_cuda.optimizer.Lars"),
    ("lars_cuda.compat.TimmLars", ["--optimizer.trust_clip", "true"], "lars_cuda.compat.TimmLars"),
    ("lars_cuda.compat.SSLLars", [], "lars_cuda.compat.SSLLars"),
])
def test_lightning_cli_takes_our_optimizers_by_class_path(tmp_path, optimizer, extra, name):
    pytest.importorskip("lightning")
    out = run([example("lightning_cli.py"), "fit", "--optimizer", optimizer, "--optimizer.lr", "0.5", *extra,
               "--trainer.max_steps", "4", "--trainer.enable_progress_bar", "false"], tmp_path)
    assert f"trained with {name}, 4 steps" in out


def test_lightning_configure_optimizers_with_the_per_step_warmup(tmp_path):
    pytest.importorskip("lightning")
    out = run([example("lightning_module.py")], tmp_path)
    # PolynomialWarmup(decay_steps=8, warmup_steps=2, power=2) after 6 steps from lr 1.0
    from lars_cuda import polynomial_warmup_lr

    want = round(polynomial_warmup_lr(6, 1.0, decay_steps=8, warmup_steps=2, end_lr=0.0001, power=2.0), 6)
    assert f"6 steps; lr now [{want}, {want}]" in out


def test_hf_trainer_takes_lars_through_optimizer_cls_and_kwargs(tmp_path):
    pytest.importorskip("transformers")
    out = run([example("hf_trainer.py")], tmp_path)
    assert "trained with Lars, 4 steps" in out


def test_fsdp2_example_under_torchrun_on_two_cpu_ranks(tmp_path):
    out = run([example("fsdp2_torchrun.py")], tmp_path, launcher="torchrun")
    assert "2 ranks, 4 trust ratios" in out


def test_barlow_twins_example_keeps_the_originals_schema(tmp_path):
    out = run([example("ssl_barlow_twins.py")], tmp_path)
    assert "state keys: ['mu']" in out
    assert "'eta', 'foreach', 'fused', 'lars_adaptation_filter', 'lr', 'momentum', 'weight_decay', " \
           "'weight_decay_filter'" in out
