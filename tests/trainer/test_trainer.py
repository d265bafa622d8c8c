"""The trainer end to end on the CPU: one process, 2 ranks under mpirun (Horovod)
and torchrun, equivalences of batch layouts, exact resume after a kill, and a
corrupt checkpoint. Each run is a real subprocess, as a user would start it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from ..support.paths import ROOT

TRAIN = os.path.join(ROOT, "train", "imagenet.py")
FASHION = "/usr/share/datasets/fashion-mnist"
BIN = os.path.dirname(sys.executable)

needs_fashion = pytest.mark.skipif(not os.path.isdir(FASHION), reason="Debian's dataset-fashion-mnist is not installed")


def _has_horovod() -> bool:
    return subprocess.run([sys.executable, "-c", "import horovod.torch"], capture_output=True).returncode == 0


needs_mpi = pytest.mark.skipif(shutil.which("mpirun") is None or not _has_horovod(),
                               reason="needs Open MPI and Horovod (make setup installs both)")

# A small, fast, BatchNorm-free run on real data: the equivalences hold exactly only without BN.
FMNIST = ["--dataset", "fashion-mnist", "--model", "small_convnet", "--base-op", "lars", "--base-lr", "1.0",
          "--warmup-epochs", "0.5", "--train-subset", "1024", "--val-subset", "333", "--workers", "0", "--quiet",
          "--no-tensorboard", "--label-smoothing", "0.1", "--wd", "1e-4", "--eeta", "0.01"]


def launch(args, log_dir, nproc=1, launcher="none", timeout=150, wait=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, TRAIN, *args, "--log-dir", str(log_dir)]
    if launcher == "mpirun":
        cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(nproc), "-x", "OMP_NUM_THREADS",
               "-x", "PATH", *cmd, "--dist", "horovod"]
    elif launcher == "torchrun":
        cmd = [os.path.join(BIN, "torchrun"), "--standalone", "--nproc-per-node", str(nproc), *cmd[1:],
               "--dist", "torch"]
    else:
        cmd += ["--dist", "none"]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def kill_when_written(proc, first, last, timeout=240):
    """SIGKILL a run's process group as soon as `first` (a checkpoint) exists; the
    run must not have written `last` by then."""
    deadline = time.time() + timeout
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists(), proc.stdout.read()
    assert not last.exists(), "the run finished before it could be killed"


def weights(log_dir, epoch):
    state = torch.load(os.path.join(log_dir, f"checkpoint-{epoch}.pth.tar"), weights_only=True)
    return state["model"]


def assert_same_weights(a, b, **tol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=lambda m: f"{k}: {m}", **tol)


def make_image_folder(root, classes=2, per_class=6, size=(40, 30)):
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for c in range(classes):
        os.makedirs(os.path.join(root, f"class{c}"))
        for i in range(per_class):
            pixels = (torch.rand(size[1], size[0], 3, generator=gen) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(os.path.join(root, f"class{c}", f"{i}.jpg"), quality=90)
    return str(root)


@pytest.mark.slow
def test_one_epoch_on_a_jpeg_image_folder(tmp_path):
    train = make_image_folder(tmp_path / "train")
    val = make_image_folder(tmp_path / "val", per_class=3)
    out = launch(["--train-dir", train, "--val-dir", val, "--model", "mobilenet_v3_small", "--batch-size", "4",
                  "--val-batch-size", "4", "--epochs", "1", "--base-op", "lars", "--bn-bias-separately",
                  "--base-lr", "0.1", "--warmup-epochs", "0.5", "--workers", "1"], tmp_path / "logs")
    assert "epoch 1/1" in out and "final: val top1" in out
    logs = os.listdir(tmp_path / "logs")
    assert "checkpoint-1.pth.tar" in logs and "learning_curves.png" in logs
    assert any(name.startswith("events.out.tfevents") for name in logs)


@pytest.mark.parametrize("make_dir", ["missing", "empty"])
def test_missing_or_empty_data_directory_is_a_clear_error(tmp_path, make_dir):
    train = tmp_path / "train"
    if make_dir == "empty":
        train.mkdir()
    proc = subprocess.run([sys.executable, TRAIN, "--train-dir", str(train), "--val-dir", str(train),
                           "--dist", "none", "--log-dir", str(tmp_path / "logs")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "error: --train-dir" in proc.stderr and "Traceback" not in proc.stderr


@needs_fashion
def test_two_torchrun_ranks_equal_one_rank_with_the_doubled_batch(tmp_path):
    launch([*FMNIST, "--batch-size", "64", "--epochs", "1"], tmp_path / "one", nproc=1)
    launch([*FMNIST, "--batch-size", "32", "--epochs", "1"], tmp_path / "two", nproc=2, launcher="torchrun")
    assert_same_weights(weights(tmp_path / "one", 1), weights(tmp_path / "two", 1), rtol=1e-4, atol=1e-6)


@needs_fashion
@needs_mpi
def test_two_mpirun_ranks_equal_one_rank_with_the_doubled_batch(tmp_path):
    launch([*FMNIST, "--batch-size", "64", "--epochs", "1"], tmp_path / "one", nproc=1)
    out = launch([*FMNIST, "--batch-size", "32", "--epochs", "1"], tmp_path / "two", nproc=2, launcher="mpirun")
    assert "horovod: 2 rank(s)" in out
    assert_same_weights(weights(tmp_path / "one", 1), weights(tmp_path / "two", 1), rtol=1e-4, atol=1e-6)


@needs_fashion
def test_accumulating_two_chunks_equals_the_doubled_batch(tmp_path):
    launch([*FMNIST, "--batch-size", "64", "--epochs", "1"], tmp_path / "big", nproc=1)
    launch([*FMNIST, "--batch-size", "32", "--batches-per-allreduce", "2", "--epochs", "1"], tmp_path / "acc")
    assert_same_weights(weights(tmp_path / "big", 1), weights(tmp_path / "acc", 1), rtol=1e-4, atol=1e-6)


@needs_fashion
@needs_mpi
def test_horovod_accumulation_on_two_ranks_equals_the_quadrupled_batch(tmp_path):
    launch([*FMNIST, "--batch-size", "64", "--epochs", "1"], tmp_path / "big", nproc=1)
    launch([*FMNIST, "--batch-size", "16", "--batches-per-allreduce", "2", "--epochs", "1"], tmp_path / "acc",
           nproc=2, launcher="mpirun")
    assert_same_weights(weights(tmp_path / "big", 1), weights(tmp_path / "acc", 1), rtol=1e-4, atol=1e-6)


@needs_fashion
def test_kill_after_epoch_one_then_resume_auto_gives_the_uninterrupted_weights(tmp_path):
    args = [*FMNIST, "--train-subset", "6000", "--batch-size", "64", "--epochs", "3"]
    launch(args, tmp_path / "full")

    killed = tmp_path / "killed"
    kill_when_written(launch(args, killed, wait=False), killed / "checkpoint-1.pth.tar",
                      killed / "checkpoint-3.pth.tar")

    out = launch([*args, "--resume", "auto"], killed)
    assert "resuming from" in out
    assert_same_weights(weights(tmp_path / "full", 3), weights(killed, 3), rtol=0, atol=0)
    assert not [n for n in os.listdir(killed) if n.startswith(".tmp-")], "a temporary checkpoint was left behind"


@needs_fashion
def test_corrupt_last_checkpoint_falls_back_to_the_previous_one(tmp_path):
    args = [*FMNIST, "--batch-size", "64", "--epochs", "2"]
    launch(args, tmp_path / "full")
    broken = tmp_path / "broken"
    launch(args, broken)
    last = broken / "checkpoint-2.pth.tar"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])

    out = launch([*args, "--resume", "auto"], broken)
    assert "skipping unreadable checkpoint" in out and "checkpoint-1.pth.tar" in out
    assert_same_weights(weights(tmp_path / "full", 2), weights(broken, 2), rtol=0, atol=0)


@needs_fashion
def test_checkpoint_holds_step_scheduler_and_rng_state(tmp_path):
    args = [*FMNIST, "--batch-size", "128", "--epochs", "2"]
    launch(args, tmp_path / "full")
    state = torch.load(tmp_path / "full" / "checkpoint-1.pth.tar", weights_only=True)
    assert state["step"] == 1024 // 128
    assert state["scheduler"]["last_epoch"] == state["step"]
    assert state["epoch"] == 1 and state["args"]["batch_size"] == 128
    assert state["rng"]["torch"].dtype == torch.uint8
    assert state["optimizer"]["state"], "momentum buffers are saved"


@pytest.mark.slow
@pytest.mark.parametrize("backend, workers", [("pil", "2"), ("pil", "0"), ("gpu", "1")])
def test_resume_is_bit_for_bit_with_augmentation_and_loader_workers(tmp_path, backend, workers):
    """Random crops and flips on a JPEG folder, drawn in persistent loader workers (pil)
    or on the device from the trainer's per-epoch RNG (gpu): resuming from epoch 1 must
    reproduce the uninterrupted run's epochs 2 and 3 exactly."""
    train = make_image_folder(tmp_path / "train", per_class=8)
    val = make_image_folder(tmp_path / "val", per_class=2)
    args = ["--train-dir", train, "--val-dir", val, "--model", "small_convnet", "--batch-size", "4",
            "--val-batch-size", "4", "--epochs", "3", "--base-op", "lars", "--base-lr", "0.5", "--eeta", "0.02",
            "--warmup-epochs", "0.5", "--workers", workers, "--data-backend", backend, "--quiet",
            "--no-tensorboard"]
    launch(args, tmp_path / "full")
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(tmp_path / "full" / "checkpoint-1.pth.tar", resumed / "checkpoint-1.pth.tar")
    out = launch([*args, "--resume", "auto"], resumed)
    assert "resuming from" in out
    assert_same_weights(weights(tmp_path / "full", 3), weights(resumed, 3), rtol=0, atol=0)
