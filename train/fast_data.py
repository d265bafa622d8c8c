"""The fast input path (``--data-backend gpu``): loader workers only read file
bytes; decoding (torchvision's ``decode_jpeg``: nvJPEG on CUDA, libjpeg-turbo
on the CPU), RandomResizedCrop + flip (train) or Resize(256) + CenterCrop(224)
(validation), and normalisation run batched on the training device. The same
code runs on the CPU where there is no GPU, so it is tested everywhere.

Files that are not plain JPEGs (PNG, CMYK JPEG, or anything nvJPEG rejects)
fall back to ``torchvision.io.decode_image`` on the CPU; files nothing can decode
are dropped from their batch with one warning line naming the file.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torchvision import datasets
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class EncodedImageFolder(datasets.DatasetFolder):
    """An ImageFolder whose samples are (encoded file bytes, label, index)."""

    def __init__(self, root: str):
        super().__init__(root, loader=lambda path: read_file(path), extensions=datasets.folder.IMG_EXTENSIONS)

    def __getitem__(self, index: int):
        data, label = super().__getitem__(index)
        return data, label, index


def collate_encoded(batch):
    """(all files' bytes in one flat uint8 tensor, their lengths, labels, indices).
    One tensor crosses the worker boundary instead of one per image (each shared
    tensor costs a file descriptor); :func:`split_encoded` undoes it."""
    datas, labels, indices = zip(*batch)
    return (torch.cat(datas), torch.tensor([len(d) for d in datas]), torch.tensor(labels),
            torch.tensor(indices))


def split_encoded(flat: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.split(flat, lengths.tolist()))


class BatchDecoder:
    """Turns a list of encoded images into one normalised float batch on ``device``."""

    def __init__(self, device: torch.device, train: bool, size: int = 224, resize: int = 256,
                 scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), channels_last: bool = False):
        self.device, self.train = torch.device(device), train
        self.size, self.resize = size, resize
        self.scale, self.ratio = list(scale), list(ratio)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1) * 255
        self.warned: set[str] = set()

    def __call__(self, datas: list[torch.Tensor], names: Optional[list[str]] = None):
        """(batch [N, 3, size, size] float, kept: indices of the inputs that decoded)."""
        images, kept = self.decode(datas, names)
        out = [self.augment(img) for img in images]
        if not out:
            return torch.empty(0, 3, self.size, self.size, device=self.device), kept
        batch = torch.stack(out).float()
        batch = (batch - self.mean) / self.std
        return batch.contiguous(memory_format=self.memory_format), kept

    def decode(self, datas: list[torch.Tensor], names: Optional[list[str]] = None):
        images: list[Optional[torch.Tensor]] = [None] * len(datas)
        if self.device.type == "cuda":
            try:  # one batched nvJPEG call for the common case
                images = list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=self.device))
            except RuntimeError:
                images = [None] * len(datas)
        for i, data in enumerate(datas):
            if images[i] is not None:
                continue
            images[i] = self._decode_one(data, names[i] if names else f"input {i}")
        kept = [i for i, img in enumerate(images) if img is not None]
        return [images[i] for i in kept], kept

    def _decode_one(self, data: torch.Tensor, name: str) -> Optional[torch.Tensor]:
        try:
            img = decode_jpeg(data, mode=ImageReadMode.RGB)
        except RuntimeError:
            try:  # PNG, GIF, BMP, WebP ...; also some JPEG variants libjpeg-turbo's fast path rejects
                img = decode_image(data, mode=ImageReadMode.RGB)
            except RuntimeError as exc:
                if name not in self.warned:
                    self.warned.add(name)
                    warnings.warn(f"skipping undecodable image {name}: {exc}", stacklevel=2)
                return None
        return img.to(self.device, non_blocking=True)

    def augment(self, img: torch.Tensor) -> torch.Tensor:
        if self.train:
            top, left, h, w = RandomResizedCrop.get_params(img, self.scale, self.ratio)
            img = F.resized_crop(img, top, left, h, w, [self.size, self.size], antialias=True)
            if torch.rand(()).item() < 0.5:  # torch's RNG, which the trainer reseeds per epoch
                img = img.flip(-1)
            return img
        img = F.resize(img, [self.resize], antialias=True)
        return F.center_crop(img, [self.size, self.size])
