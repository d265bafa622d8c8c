"""The training loop: one Trainer per rank builds its parts (train.builders),
resumes (train.checkpoint.resume), then per epoch trains (gradient accumulation
over --batches-per-allreduce chunks, AMP, the optimizer's share timed without a
per-step sync), validates (sums on the device, read once per epoch), saves and
logs (train.metrics)."""

from __future__ import annotations

import os
import random
import time
from typing import Optional

import torch
from torch import nn

from train import checkpoint as ckpt
from train.builders import build_training_model, make_amp, make_optimizer, make_scheduler, memory_format, scaled_lr
from train.data import build_datasets, build_loaders, sample_path, uses_encoded_images
from train.distributed import Dist
from train.metrics import StepTimer, accuracy_counts, log_epoch
from train.watchdog import Watchdog


class Trainer:
    def __init__(self, args, dist: Dist):
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
        self.model = build_training_model(args, dist, channels, classes, self.device)
        self.memory_format = memory_format(args)

        self.B = args.batches_per_allreduce
        self.lr = scaled_lr(args.base_lr, args.lr_scaling, dist.size * self.B)
        optimizer = make_optimizer(args, self.model, self.lr, self.device)
        self.optimizer = dist.wrap_optimizer(optimizer, self.model, self.B, args.fp16_allreduce)
        self.steps_per_epoch = len(self.train_loader)
        self.scheduler = make_scheduler(args, self.optimizer, self.steps_per_epoch)
        self.scaler, self.autocast = make_amp(args, self.device)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

        self.watchdog = _NoWatchdog()  # a real one once fit() runs with several ranks
        self.start_epoch, self.step, self.history = ckpt.resume(args, dist, self.model, self.optimizer,
                                                                self.scheduler, self.scaler)
        self.forward_model = dist.wrap_model(self.model, self.device, args.fp16_allreduce)
        self.writer = None
        if dist.is_main and not args.no_tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(args.log_dir)

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
                ckpt.save(self.args, self.dist, self.model, self.optimizer, self.scheduler, self.scaler,
                          epoch=epoch + 1, step=self.step, history=self.history)
            ratios = self._trust_ratios()
            if self.dist.is_main:
                log_epoch(self.args, self.writer, self.history, epoch, metrics, ratios)
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
