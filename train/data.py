"""Data sets and samplers for the trainer.

* ImageFolder (the seed's ImageNet layout) through torchvision and PIL, with the
  seed's transforms.
* Fashion-MNIST from Debian's ``dataset-fashion-mnist`` IDX files (no download).
* Synthetic ImageNet-shaped tensors, for throughput.
* Samplers: the training split is torch's DistributedSampler (every rank sees a
  disjoint shard of one seeded permutation); validation splits the indices
  without padding, so each image is counted exactly once across ranks.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class DataError(RuntimeError):
    """A data directory or file the trainer cannot use; the message says why."""


# ---- Fashion-MNIST ------------------------------------------------------------

def _read_idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != math.prod(shape):
        raise DataError(f"{path} is truncated: {array.size} bytes of data for shape {shape}")
    return array.reshape(shape)


def _find_idx(root: str, stem: str) -> str:
    for name in (stem + ".gz", stem):
        path = os.path.join(root, name)
        if os.path.exists(path):
            return path
    raise DataError(
        f"Fashion-MNIST file {stem}(.gz) not found in {root}. Install Debian's package: "
        "apt-get install dataset-fashion-mnist (the project's set-up does this), or pass --data-dir"
    )


class FashionMNIST(Dataset):
    """The whole split as one normalised float tensor (47 MB for 60k images)."""

    def __init__(self, root: str = FASHION_MNIST_DIR, train: bool = True):
        prefix = "train" if train else "t10k"
        images = _read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"))
        labels = _read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte"))
        if len(images) != len(labels):
            raise DataError(f"{root}: {len(images)} images but {len(labels)} labels")
        x = torch.from_numpy(images.copy()).float().div_(255).unsqueeze(1)
        self.images = (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.classes = [str(i) for i in range(10)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]


# ---- ImageFolder ----------------------------------------------------------------

def image_folder(path: Optional[str], train: bool, flag: str):
    from torchvision import datasets, transforms

    if not path:
        raise DataError(f"{flag} is required for --dataset imagefolder")
    if not os.path.isdir(path):
        raise DataError(f"{flag} {path!r} does not exist or is not a directory")
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if train:
        tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                 transforms.ToTensor(), normalize])
    else:
        tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                 normalize])
    try:
        return datasets.ImageFolder(path, transform=tf)
    except (FileNotFoundError, RuntimeError) as exc:  # no class folders / no images
        raise DataError(f"{flag} {path!r} holds no images in class sub-folders: {exc}") from exc


def encoded_image_folder(path: Optional[str], flag: str):
    """The --data-backend gpu dataset: file bytes, decoded later on the device."""
    from train.fast_data import EncodedImageFolder

    if not path:
        raise DataError(f"{flag} is required for --dataset imagefolder")
    if not os.path.isdir(path):
        raise DataError(f"{flag} {path!r} does not exist or is not a directory")
    try:
        return EncodedImageFolder(path)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"{flag} {path!r} holds no images in class sub-folders: {exc}") from exc


# ---- synthetic ---------------------------------------------------------------------

class Synthetic(Dataset):
    """ImageNet-shaped random images; one fixed tensor per index, cheap to serve."""

    def __init__(self, size: int, shape=(3, 224, 224), num_classes: int = 1000, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.size = size
        self.base = torch.randn(shape, generator=gen)
        self.labels = torch.randint(0, num_classes, (size,), generator=gen)
        self.classes = [str(i) for i in range(num_classes)]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int):
        return self.base, self.labels[i]


# ---- samplers and loaders ----------------------------------------------------------

class ExactShardSampler(Sampler[int]):
    """Indices rank, rank+N, rank+2N, ...: every index on exactly one rank, no padding."""

    def __init__(self, length: int, rank: int, size: int):
        self.indices = list(range(rank, length, size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_datasets(args):
    """(train set, val set, input channels, number of classes)."""
    if args.dataset == "fashion-mnist":
        root = args.data_dir or FASHION_MNIST_DIR
        train, val, channels, classes = FashionMNIST(root, True), FashionMNIST(root, False), 1, 10
    elif args.synthetic:
        train = Synthetic(args.synthetic_size, seed=args.seed)
        val = Synthetic(max(args.synthetic_size // 10, 1), seed=args.seed + 1)
        channels, classes = 3, 1000
    elif args.dataset == "imagefolder":
        if args.data_backend == "gpu":
            train = encoded_image_folder(args.train_dir, "--train-dir")
            val = encoded_image_folder(args.val_dir, "--val-dir")
        else:
            train = image_folder(args.train_dir, True, "--train-dir")
            val = image_folder(args.val_dir, False, "--val-dir")
        channels, classes = 3, len(train.classes)
    else:
        raise ValueError(f"unknown --dataset {args.dataset!r}")
    if args.train_subset:
        train = Subset(train, range(min(args.train_subset, len(train))))
    if args.val_subset:
        val = Subset(val, range(min(args.val_subset, len(val))))
    if len(train) == 0 or len(val) == 0:
        raise DataError("the training or validation set is empty")
    return train, val, channels, classes


def uses_encoded_images(args) -> bool:
    return args.data_backend == "gpu" and args.dataset == "imagefolder" and not args.synthetic


def sample_path(dataset, index: int) -> str:
    """The file behind a base-dataset index (through any Subset)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset.samples[index][0]


class EpochSampler(Sampler):
    """Yields (epoch, index) for each index of a DistributedSampler, so that the
    dataset can seed each sample's augmentation by both (see SeededSamples)."""

    def __init__(self, sampler: DistributedSampler):
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        epoch = self.epoch
        return ((epoch, i) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that is a pure function of (run seed, epoch, sample index)."""
    return ((seed * 1_000_003 + epoch) * 1_000_000_007 + index) & ((1 << 63) - 1)


class SeededSamples(Dataset):
    """Serves dataset[i] for a key (epoch, i) with torch's RNG seeded by
    sample_seed(seed, epoch, i) for the duration of that one sample.

    A sample's random crop and flip are then the same whichever worker draws it,
    however many workers there are, and whether the loader's workers are fresh
    (a resumed run) or have served earlier epochs (persistent workers): resume is
    bit-for-bit with any --workers. The caller's RNG is restored afterwards, so
    with --workers 0 the main process's stream is untouched."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, i = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, i))
            return self.dataset[i]


def build_loaders(train_set, val_set, args, rank: int, size: int, pin_memory: bool):
    """Train loader batches are batch_size * B per rank (split into B chunks by the
    trainer); drop_last keeps every step's global batch the same size. Returns the
    train sampler whose set_epoch the trainer calls."""
    train_sampler = EpochSampler(DistributedSampler(train_set, num_replicas=size, rank=rank, shuffle=True,
                                                    seed=args.seed, drop_last=True))
    per_rank = args.batch_size * args.batches_per_allreduce
    if len(train_sampler) < per_rank:
        raise DataError(
            f"each rank's share of the training set ({len(train_sampler)} images) is smaller than one batch "
            f"({per_rank}); lower --batch-size or --batches-per-allreduce"
        )
    workers = dict(num_workers=args.workers, persistent_workers=args.workers > 0, pin_memory=pin_memory)
    if uses_encoded_images(args):
        from train.fast_data import collate_encoded

        workers.update(collate_fn=collate_encoded, pin_memory=False)
    # Own generators: starting an iterator (fresh workers after a resume, none with
    # persistent workers later) must not draw from torch's global RNG, whose per-epoch
    # stream the trainer reseeds and the gpu backend's augmentation uses.
    train_loader = DataLoader(SeededSamples(train_set, args.seed), batch_size=per_rank, sampler=train_sampler,
                              drop_last=True, generator=torch.Generator().manual_seed(args.seed), **workers)
    val_loader = DataLoader(val_set, batch_size=args.val_batch_size,
                            sampler=ExactShardSampler(len(val_set), rank, size),
                            generator=torch.Generator().manual_seed(args.seed), **workers)
    return train_loader, train_sampler, val_loader
