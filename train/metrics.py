"""What the trainer measures and shows: top-k hit counts, the optimizer's time
without a per-step host sync, the epoch's log line, TensorBoard scalars and the
trust-ratio histogram, history.json and the learning-curve plot."""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Optional

import torch


def accuracy_counts(output: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> list[torch.Tensor]:
    maxk = min(max(ks), output.shape[1])
    pred = output.topk(maxk, dim=1).indices
    hit = pred.eq(target.unsqueeze(1))
    return [hit[:, : min(k, maxk)].any(dim=1).sum() for k in ks]


class StepTimer:
    """Sums the time of a region over an epoch without synchronising each step:
    CUDA events on a GPU (read once at the end), a wall clock on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pairs: list = []
        self.cpu_s = 0.0

    @contextlib.contextmanager
    def measure(self, enabled: bool = True):
        if not enabled:
            yield
            return
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.pairs.append((start, end))
        else:
            t0 = time.perf_counter()
            yield
            self.cpu_s += time.perf_counter() - t0

    def total_s(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return sum(s.elapsed_time(e) for s, e in self.pairs) / 1e3
        return self.cpu_s


def log_epoch(args, writer, history: list[dict[str, float]], epoch: int, metrics: dict[str, float],
              ratios: Optional[torch.Tensor] = None) -> None:
    """The epoch's line on stdout, its TensorBoard scalars (and the trust ratios'
    histogram), history.json and learning_curves.png in --log-dir (rank 0)."""
    print(f"epoch {epoch + 1}/{args.epochs}  train loss {metrics['train_loss']:.4f} "
          f"top1 {metrics['train_top1']:.2f}%  val loss {metrics['val_loss']:.4f} "
          f"top1 {metrics['val_top1']:.2f}% top5 {metrics['val_top5']:.2f}%  lr {metrics['lr']:.4g}  "
          f"{metrics['images_per_s']:.0f} img/s  optimizer {100 * metrics['optimizer_share']:.1f}% of step time  "
          f"{metrics['train_time_s']:.1f}s", flush=True)
    if writer is not None:
        w = writer
        w.add_scalar("train/loss", metrics["train_loss"], epoch + 1)
        w.add_scalar("train/top1", metrics["train_top1"], epoch + 1)
        w.add_scalar("train/top5", metrics["train_top5"], epoch + 1)
        w.add_scalar("val/loss", metrics["val_loss"], epoch + 1)
        w.add_scalar("val/top1", metrics["val_top1"], epoch + 1)
        w.add_scalar("val/top5", metrics["val_top5"], epoch + 1)
        w.add_scalar("lr", metrics["lr"], epoch + 1)
        w.add_scalar("throughput/images_per_s", metrics["images_per_s"], epoch + 1)
        w.add_scalar("throughput/optimizer_share", metrics["optimizer_share"], epoch + 1)
        if ratios is not None and ratios.numel():
            w.add_histogram("lars/trust_ratio", ratios, epoch + 1)
        w.flush()
    with open(os.path.join(args.log_dir, "history.json"), "w") as f:
        json.dump({"args": args.as_dict(), "epochs": history}, f, indent=1)
    plot_history(history, os.path.join(args.log_dir, "learning_curves.png"))


def plot_history(history: list[dict[str, float]], path: str) -> None:
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 3.6))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax1.legend()
    ax2.plot(epochs, [h["train_top1"] for h in history], "o-", label="train top-1")
    ax2.plot(epochs, [h["val_top1"] for h in history], "s-", label="val top-1")
    ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    ax2.legend()
    ax3.plot(epochs, [h["lr"] for h in history], "o-")
    ax3.set(xlabel="epoch", ylabel="lr (end of epoch)", title="learning rate")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
