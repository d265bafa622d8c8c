#!/usr/bin/env python
"""Train an image classifier with LARS (or SGD) the way the seed project trained
ResNet-50 on ImageNet, on Horovod (mpirun/horovodrun), torch.distributed
(torchrun) or one process.

    mpirun -np 8 python train/imagenet.py --train-dir ... --val-dir ... \\
        --base-op lars --bn-bias-separately --batch-size 128 --base-lr 5.657 \\
        --warmup-epochs 0.3125 --wd 1e-4 --lr-scaling keep

Facts and flags: docs/semantics.md, "The trainer". Global batch =
batch-size x ranks x batches-per-allreduce; the lr follows PolynomialWarmup per
optimizer step (power 2 for LARS, 1 otherwise).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
from typing import Any, Optional

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from train import checkpoint as ckpt  # noqa: E402
from train.data import DataError, build_datasets, build_loaders, sample_path, uses_encoded_images  # noqa: E402
from train.distributed import Dist, make_dist  # noqa: E402
from train.watchdog import Watchdog  # noqa: E402
from train.models import build_model  # noqa: E402


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # The seed's flags, with its defaults.
    p.add_argument("--train-dir", default=None, help="ImageFolder of training images")
    p.add_argument("--val-dir", default=None, help="ImageFolder of validation images")
    p.add_argument("--log-dir", default="./logs/imagenet", help="TensorBoard logs and checkpoints")
    p.add_argument("--checkpoint-format", default="checkpoint-{epoch}.pth.tar")
    p.add_argument("--fp16-allreduce", action="store_true", help="compress gradients to fp16 for the all-reduce")
    p.add_argument("--batches-per-allreduce", type=int, default=1,
                   help="B: backward passes (chunks of --batch-size) per optimizer step")
    p.add_argument("--model", default="resnet50", help="a torchvision classifier, or cifar_resnet20/small_convnet")
    p.add_argument("--batch-size", type=int, default=32, help="per rank, per backward pass")
    p.add_argument("--val-batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=90)
    p.add_argument("--base-lr", type=float, default=0.0125)
    p.add_argument("--warmup-epochs", type=float, default=5)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--wd", type=float, default=5e-5)
    p.add_argument("--epsilon", type=float, default=1e-5)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--base-op", choices=["sgd", "lars", "timm_lars"], default="sgd",
                   help="timm_lars: timm's Lars, for comparisons")
    p.add_argument("--bn-bias-separately", action="store_true",
                   help="no LARS and no weight decay for normalisation and bias parameters")
    p.add_argument("--lr-scaling", choices=["keep", "linear", "sqrt"], default="keep",
                   help="base lr x 1, x N*B or x sqrt(N*B) for N ranks")
    p.add_argument("--no-cuda", action="store_true")
    p.add_argument("--single-threaded", action="store_true", help="one intra-op CPU thread per rank")
    p.add_argument("--seed", type=int, default=42)
    # Ours.
    p.add_argument("--dist", choices=["auto", "horovod", "torch", "none"], default="auto")
    p.add_argument("--dist-timeout", type=float, default=600.0,
                   help="seconds to wait for a peer before failing: torch.distributed's timeout, Horovod's "
                        "stall shutdown time (HOROVOD_STALL_SHUTDOWN_TIME_SECONDS, unless set)")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    p.add_argument("--fsdp", action="store_true",
                   help="shard the model with FSDP2 (fully_shard per residual block and at the root; torchrun, "
                        "--dist torch); checkpoints become torch.distributed.checkpoint folders (*.dcp)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--workers", type=int, default=4, help="data loader processes per rank")
    p.add_argument("--data-backend", choices=["pil", "gpu"], default=None,
                   help="gpu: workers read bytes, decode and augment run batched on the device (on the CPU "
                        "without a GPU); default gpu when CUDA is available, else pil")
    p.add_argument("--resume", default=None, help="'auto' (latest valid checkpoint in --log-dir) or a path")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many optimizer steps (smoke runs)")
    p.add_argument("--dataset", choices=["imagefolder", "fashion-mnist"], default="imagefolder")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder (default: Debian's)")
    p.add_argument("--synthetic", action="store_true", help="random ImageNet-shaped data (throughput)")
    p.add_argument("--synthetic-size", type=int, default=12800, help="images per synthetic epoch")
    p.add_argument("--train-subset", type=int, default=0, help="use only the first N training images")
    p.add_argument("--val-subset", type=int, default=0, help="use only the first N validation images")
    p.add_argument("--optimizer-impl", choices=["auto", "fused", "foreach", "reference"], default="auto",
                   help="which Lars/SGD path runs the step")
    p.add_argument("--eeta", type=float, default=1e-3, help="LARS trust coefficient")
    p.add_argument("--no-tensorboard", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.batches_per_allreduce < 1:
        p.error("--batches-per-allreduce must be at least 1")
    if args.batch_size < 1 or args.val_batch_size < 1:
        p.error("batch sizes must be positive")
    if args.epochs < 1:
        p.error("--epochs must be at least 1")
    if args.fsdp and args.amp == "fp16":
        p.error("--fsdp with --amp fp16 is not supported (GradScaler's scale would be updated from each rank's "
                "own inf check); use --amp bf16")
    if args.fsdp and args.dist in ("horovod", "none"):
        p.error(f"--fsdp needs torch.distributed (torchrun, --dist torch or auto), not --dist {args.dist}")
    if args.data_backend is None:
        args.data_backend = "gpu" if torch.cuda.is_available() and not args.no_cuda else "pil"
    return args


def scaled_lr(base_lr: float, scaling: str, n: int) -> float:
    """keep: b; linear: b*N*B; sqrt: b*sqrt(N*B). (The seed computed sqrt(b*N*B), a bug.)"""
    return {"keep": base_lr, "linear": base_lr * n, "sqrt": base_lr * math.sqrt(n)}[scaling]


def make_optimizer(args, model: nn.Module, lr: float, device: torch.device):
    import lars_cuda

    impl = dict(auto={}, fused=dict(fused=True), foreach=dict(foreach=True, fused=False),
                reference=dict(foreach=False, fused=False))[args.optimizer_impl]
    if args.base_op == "lars":
        return lars_cuda.create_optimizer_lars(model, lr=lr, momentum=args.momentum, weight_decay=args.wd,
                                               bn_bias_separately=args.bn_bias_separately, epsilon=args.epsilon,
                                               eeta=args.eeta, **impl)
    if args.bn_bias_separately:
        decay, no_decay = lars_cuda.split_lars_parameters(model)
        groups = [dict(params=decay), dict(params=no_decay, weight_decay=0.0)]
    else:
        groups = [dict(params=[p for p in model.parameters() if p.requires_grad])]
    if args.base_op == "timm_lars":
        from timm.optim import Lars as TimmLars

        return TimmLars(groups, lr=lr, momentum=args.momentum, weight_decay=args.wd, trust_coeff=args.eeta,
                        eps=args.epsilon, trust_clip=True)
    if not impl and device.type in ("cpu", "cuda") and not args.fsdp:
        impl = dict(fused=True)  # torch's fused SGD takes no DTensors: foreach under --fsdp
    return torch.optim.SGD(groups, lr=lr, momentum=args.momentum, weight_decay=args.wd, **impl)


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


class Trainer:
    def __init__(self, args: argparse.Namespace, dist: Dist):
        self.args, self.dist = args, dist
        self.use_cuda = torch.cuda.is_available() and not args.no_cuda
        self.device = torch.device("cuda", dist.local_rank) if self.use_cuda else torch.device("cpu")
        if self.use_cuda:
            torch.cuda.set_device(self.device)
        if args.single_threaded:
            torch.set_num_threads(1)
        torch.manual_seed(args.seed)
        random.seed(args.seed)

        train_set, val_set, channels, classes = build_datasets(args)
        self.train_loader, self.train_sampler, self.val_loader = build_loaders(
            train_set, val_set, args, dist.rank, dist.size, pin_memory=self.use_cuda)
        self.n_val = len(val_set)
        self.train_set, self.val_set = train_set, val_set
        self.decoders = None
        if uses_encoded_images(args):
            from train.fast_data import BatchDecoder

            self.decoders = {
                True: BatchDecoder(self.device, train=True, channels_last=args.channels_last),
                False: BatchDecoder(self.device, train=False, channels_last=args.channels_last),
            }
        self.model = build_model(args.model, channels, classes).to(self.device)
        self.memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        if args.fsdp:
            from train.fsdp import shard_model

            dist.broadcast_module(self.model)  # every rank shards the same weights
            shard_model(self.model)

        self.B = args.batches_per_allreduce
        self.lr = scaled_lr(args.base_lr, args.lr_scaling, dist.size * self.B)
        optimizer = make_optimizer(args, self.model, self.lr, self.device)
        self.optimizer = dist.wrap_optimizer(optimizer, self.model, self.B, args.fp16_allreduce)
        self.steps_per_epoch = len(self.train_loader)
        from lars_cuda import PolynomialWarmup

        self.scheduler = PolynomialWarmup(
            self.optimizer, decay_steps=args.epochs * self.steps_per_epoch,
            warmup_steps=args.warmup_epochs * self.steps_per_epoch, end_lr=0.0,
            power=2.0 if args.base_op != "sgd" else 1.0)
        self.scaler = torch.amp.GradScaler(self.device.type) if args.amp == "fp16" else None
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=amp_dtype)) if amp_dtype else \
            contextlib.nullcontext
        self.criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

        self.start_epoch, self.step, self.history = 0, 0, []
        self.watchdog = _NoWatchdog()  # a real one once fit() runs with several ranks
        self._resume()
        self.forward_model = dist.wrap_model(self.model, self.device, args.fp16_allreduce)
        self.writer = None
        if dist.is_main and not args.no_tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(args.log_dir)

    # ---- checkpoints -------------------------------------------------------------
    def _resume(self) -> None:
        args, dist = self.args, self.dist
        state: Optional[dict[str, Any]] = None
        # torchrun --max-restarts starts the workers again after one died, with the
        # same command line: a restart always continues from the last checkpoint.
        restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0)
        if restarts > 0:
            if dist.is_main:
                print(f"torchrun restarted the workers (restart {restarts}); continuing from the last complete "
                      f"checkpoint in {args.log_dir}", flush=True)
        # (args stay as parsed: the restart's choice is a local, not a rewritten flag)
        resume = args.resume if args.resume is not None or restarts == 0 else "auto"
        error: Optional[str] = None
        if resume and dist.is_main:
            try:
                state = self._find_checkpoint(resume)
            except (ckpt.CheckpointError, ckpt.UnsafeCheckpointError) as exc:
                error = str(exc)
        if resume:
            # Only when resuming: the optimizer state travels with the checkpoint, so no
            # engine ever broadcasts (and dummy-steps) an empty optimizer state. A refused
            # checkpoint travels too, so that every rank stops with the same message.
            state, error = dist.broadcast_object((state, error))
            if error is not None:
                raise ckpt.CheckpointError(error)
        if state is None:
            self.dist.broadcast_initial_state(self.model)
            return
        if args.fsdp:
            # Every rank reads its own shards of the model and the optimizer state.
            from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

            shards = self._sharded_state()
            ckpt.load_dcp_shards(shards, state["path"])
            set_model_state_dict(self.model, shards["model"])
            set_optimizer_state_dict(self.model, self.optimizer, shards["optimizer"])
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch, self.step = state["epoch"], state["step"]
        self.history = list(state.get("history", []))

    def _find_checkpoint(self, resume: str) -> Optional[dict[str, Any]]:
        """rank 0: the contents of the checkpoint to resume from (with its "path"), or None.
        ``resume``: "auto" (the newest valid one in --log-dir) or a path."""
        args = self.args
        if resume != "auto":
            return {**ckpt.load_for_resume(resume, sharded=args.fsdp), "path": resume}
        for path in ckpt.remove_stale_temporaries(args.log_dir):
            print(f"removed {path}: a checkpoint write that was interrupted", flush=True)
        found = ckpt.latest_valid(args.log_dir, self._checkpoint_format(), sharded=args.fsdp)
        if not found:
            print(f"no checkpoint in {args.log_dir}: starting from scratch", flush=True)
            return None
        print(f"resuming from {found[0]}", flush=True)
        return {**found[1], "path": found[0]}

    def _checkpoint_format(self) -> str:
        return ckpt.dcp_format(self.args.checkpoint_format) if self.args.fsdp else self.args.checkpoint_format

    def _sharded_state(self) -> dict[str, Any]:
        """This rank's shards of the model and optimizer state (DTensors), for DCP."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        return {"model": get_model_state_dict(self.model),
                "optimizer": get_optimizer_state_dict(self.model, self.optimizer)}

    def _save(self, epoch: int) -> None:
        """Rank 0 writes the checkpoint; under --fsdp every rank calls this and writes its shards."""
        if not (self.dist.is_main or self.args.fsdp):
            return
        state = {
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": epoch,
            "step": self.step,
            "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
                    "cuda": torch.cuda.get_rng_state() if self.use_cuda else None},
            "args": vars(self.args),
            "history": self.history,
        }
        path = ckpt.checkpoint_path(self.args.log_dir, self._checkpoint_format(), epoch)
        if self.args.fsdp:
            ckpt.save_dcp_atomic(self._sharded_state(), state, path, is_main=self.dist.is_main,
                                 broadcast_object=self.dist.broadcast_object, barrier=self.dist.barrier)
        else:
            ckpt.save_atomic({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), **state},
                             path)

    # ---- one epoch -------------------------------------------------------------------
    def _batch(self, batch, train: bool):
        """(images on the device, labels on the device, images dropped as undecodable)."""
        if self.decoders is None:
            return (*self._to_device(*batch), 0)
        from train.fast_data import split_encoded

        flat, lengths, labels, indices = batch
        dataset = self.train_set if train else self.val_set
        names = [sample_path(dataset, int(i)) for i in indices]
        x, kept = self.decoders[train](split_encoded(flat, lengths), names)
        return x, labels[kept].to(self.device, non_blocking=True), len(lengths) - len(kept)

    def _to_device(self, x, y):
        x = x.to(self.device, non_blocking=True)
        if x.dim() == 4:
            x = x.contiguous(memory_format=self.memory_format)
        return x, y.to(self.device, non_blocking=True)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        args = self.args
        # Augmentation randomness is a function of (seed, epoch, rank): a resumed run
        # draws exactly what the uninterrupted one would have.
        torch.manual_seed(args.seed + 1000 * epoch + self.dist.rank)
        self.train_sampler.set_epoch(epoch)
        self.forward_model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        correct5 = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        # Throughput and the optimizer's share are timed after a few warm-up steps
        # (cuDNN autotuning, the first optimizer step's state), with device events on a GPU.
        warm = min(5, max(self.steps_per_epoch // 4, 0))
        timed_images, timer_start = 0, None
        opt_timer = StepTimer(self.device)
        bar = self._progress(self.train_loader, f"epoch {epoch + 1}/{args.epochs}")
        for i_step, batch in enumerate(bar):
            if args.max_steps and self.step >= args.max_steps:
                break
            if i_step == warm:
                if self.use_cuda:
                    torch.cuda.synchronize()
                timer_start = time.perf_counter()
            x, y, _ = self._batch(batch, train=True)
            self._input_shape = tuple(x.shape[1:])
            self.optimizer.zero_grad()  # set_to_none by default; Horovod takes no argument
            for i, (xc, yc) in enumerate(zip(x.chunk(self.B), y.chunk(self.B))):
                with self.dist.no_sync(self.forward_model, last_chunk=i == self.B - 1):
                    with self.autocast():
                        out = self.forward_model(xc)
                        loss = self.criterion(out, yc)
                    scaled = loss / self.B
                    (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
                loss_sum += loss.detach().float() * len(yc)
                hits1, hits5 = accuracy_counts(out.detach(), yc, ks=(1, 5))
                correct += hits1
                correct5 += hits5
                seen += len(yc)
            with opt_timer.measure(enabled=timer_start is not None):
                self.dist.optimizer_step(self.optimizer, self.scaler)
            self.scheduler.step()
            self.step += 1
            self.watchdog.beat()
            if timer_start is not None:
                timed_images += len(y)
            if hasattr(bar, "set_postfix") and self.step % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{self._lr():.4g}")
        if self.use_cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - timer_start if timer_start is not None else 0.0
        totals = self.dist.all_reduce_sum(torch.stack([
            loss_sum.cpu().double(), correct.cpu().double(), torch.tensor(float(seen), dtype=torch.float64),
            torch.tensor(float(timed_images), dtype=torch.float64), correct5.cpu().double()]))
        n = max(totals[2].item(), 1.0)
        opt_s = opt_timer.total_s()
        return {"train_loss": totals[0].item() / n, "train_top1": 100.0 * totals[1].item() / n,
                "train_top5": 100.0 * totals[4].item() / n,
                "images_per_s": totals[3].item() / elapsed if elapsed > 0 else 0.0, "train_time_s": elapsed,
                "optimizer_time_s": opt_s, "optimizer_share": opt_s / elapsed if elapsed > 0 else 0.0}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        self.forward_model.eval()
        sums = torch.zeros(5, dtype=torch.float64)  # loss*n, top1, top5, n, undecodable
        # Summed on the device and read once after the loop: no host sync per batch.
        batch_sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss*n, top1, top5
        x = None
        # Under FSDP every forward is a collective: agree on the pass count BEFORE the
        # first one (an all-reduce after the loop would meet a peer's all-gather).
        passes = int(self.dist.all_reduce_max(torch.tensor(len(self.val_loader))).item()) if self.args.fsdp else 0
        for batch in self._progress(self.val_loader, "validate"):
            x, y, dropped = self._batch(batch, train=False)
            sums[4] += dropped
            self.watchdog.beat()
            if len(y) == 0:
                continue
            with self.autocast():
                out = self.forward_model(x)
            loss = self.criterion(out.float(), y)
            top1, top5 = accuracy_counts(out, y)
            batch_sums += torch.stack([loss.detach().double() * len(y), top1.double(), top5.double()])
            sums[3] += len(y)
        sums[:3] += batch_sums.cpu()
        if self.args.fsdp:
            self._pad_forward_passes(passes - len(self.val_loader), x)
        sums = self.dist.all_reduce_sum(sums)
        n = sums[3].item()
        if round(n + sums[4].item()) != self.n_val:
            raise RuntimeError(f"validation counted {n} images (+{sums[4].item():.0f} undecodable), "
                               f"the set has {self.n_val}")
        return {"val_loss": sums[0].item() / n, "val_top1": 100.0 * sums[1].item() / n,
                "val_top5": 100.0 * sums[2].item() / n, "val_images": n}

    def _pad_forward_passes(self, missing: int, example) -> None:
        """FSDP all-gathers weights in every forward, so every rank must run as many:
        a rank with fewer validation batches (uneven shards of the set) runs the
        missing ones on a throw-away input."""
        if missing > 0:
            if example is None or example.shape[0] == 0:
                example = torch.zeros((1, *self._input_shape), device=self.device)
            with self.autocast():
                for _ in range(missing):
                    self.forward_model(example[:1])

    def _progress(self, iterable, desc):
        if not self.dist.is_main or self.args.quiet:
            return iterable
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True)

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # ---- logging ---------------------------------------------------------------------
    def _trust_ratios(self) -> Optional[torch.Tensor]:
        """LARS trust ratios for the histogram; under --fsdp every rank computes them
        (one all-reduce of the shards' norms), else rank 0 alone."""
        wanted = not self.args.no_tensorboard and hasattr(self.optimizer, "trust_ratios")
        if not wanted or not (self.dist.is_main or self.args.fsdp):
            return None
        # Under fp16 AMP the fused step leaves the grads scaled: read them unscaled.
        return self.optimizer.trust_ratios(grad_scale=getattr(self.optimizer, "last_grad_scale", None))

    def _log_epoch(self, epoch: int, metrics: dict[str, float], ratios: Optional[torch.Tensor] = None) -> None:
        print(f"epoch {epoch + 1}/{self.args.epochs}  train loss {metrics['train_loss']:.4f} "
              f"top1 {metrics['train_top1']:.2f}%  val loss {metrics['val_loss']:.4f} "
              f"top1 {metrics['val_top1']:.2f}% top5 {metrics['val_top5']:.2f}%  lr {metrics['lr']:.4g}  "
              f"{metrics['images_per_s']:.0f} img/s  optimizer {100 * metrics['optimizer_share']:.1f}% of step time  "
              f"{metrics['train_time_s']:.1f}s", flush=True)
        if self.writer is not None:
            w = self.writer
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
        with open(os.path.join(self.args.log_dir, "history.json"), "w") as f:
            json.dump({"args": vars(self.args), "epochs": self.history}, f, indent=1)
        plot_history(self.history, os.path.join(self.args.log_dir, "learning_curves.png"))

    def fit(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.dist.is_main:
            os.makedirs(self.args.log_dir, exist_ok=True)
            print(f"{self.dist.name}: {self.dist.size} rank(s) on {self.device.type}; global batch "
                  f"{self.args.batch_size * self.dist.size * self.B}; lr {self.lr:.4g}; "
                  f"{self.steps_per_epoch} steps/epoch; optimizer {type(self.optimizer).__name__}", flush=True)
        if self.dist.size > 1:
            self.watchdog = Watchdog(self.args.dist_timeout, self.dist.rank).start()
        for epoch in range(self.start_epoch, self.args.epochs):
            metrics = self.train_epoch(epoch)
            metrics.update(self.validate())
            metrics.update(epoch=epoch + 1, step=self.step, lr=self._lr())
            self.history.append(metrics)
            stopped_early = bool(self.args.max_steps) and self.step >= self.args.max_steps
            if not stopped_early:  # a partial epoch is never checkpointed
                self._save(epoch + 1)
            ratios = self._trust_ratios()
            if self.dist.is_main:
                self._log_epoch(epoch, metrics, ratios)
            self.watchdog.beat()
            if stopped_early:
                break
        self.watchdog.stop()
        if self.writer is not None:
            self.writer.close()
        if self.dist.is_main and metrics:
            print(f"final: val top1 {metrics['val_top1']:.2f}%  top5 {metrics['val_top5']:.2f}%", flush=True)
        return metrics


class _NoWatchdog:
    def beat(self) -> None:
        pass

    def stop(self) -> None:
        pass


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


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        dist = make_dist(args.dist, torch.cuda.is_available() and not args.no_cuda, args.dist_timeout,
                         fsdp=args.fsdp)
    except ImportError as exc:
        print(f"error: --dist {args.dist} needs {exc.name}: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        Trainer(args, dist).fit()
    except (DataError, ckpt.CheckpointError, ckpt.UnsafeCheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        dist.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
