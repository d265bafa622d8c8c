"""--data-backend gpu: bytes in the workers, decode and augmentation batched on
the device (here the CPU, through the same code)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
from PIL import Image

from train.data import image_folder
from train.fast_data import BatchDecoder, EncodedImageFolder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def photo(seed: int, size=(500, 375)) -> Image.Image:
    """A smooth random image (JPEG-friendly, like a photo rather than noise)."""
    gen = torch.Generator().manual_seed(seed)
    small = torch.rand(3, 6, 8, generator=gen)
    big = torch.nn.functional.interpolate(small[None], size=(size[1], size[0]), mode="bicubic",
                                          align_corners=False)[0].clamp(0, 1)
    return Image.fromarray((big.permute(1, 2, 0) * 255).to(torch.uint8).numpy())


def make_folder(root, n=3, extra=()):
    for c in ("a", "b"):
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(n):
            photo(hash((c, i)) % 1000).save(os.path.join(root, c, f"{i}.jpg"), quality=90)
    for name, writer in extra:
        writer(os.path.join(root, "a", name))
    return str(root)


BAD_FILES = [
    ("gray.jpg", lambda p: photo(5).convert("L").save(p, quality=90)),
    ("cmyk.jpg", lambda p: photo(6).convert("CMYK").save(p, quality=90)),
    ("lossless.png", lambda p: photo(7).save(p)),
    ("truncated.jpg", lambda p: open(p, "wb").write(open_bytes(photo(8))[:300])),
    ("garbage.jpg", lambda p: open(p, "wb").write(b"this is not an image at all" * 10)),
]


def open_bytes(img: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_validation_tensors_match_the_pil_pipeline(tmp_path):
    root = make_folder(tmp_path / "val")
    pil = image_folder(root, train=False, flag="--val-dir")
    enc = EncodedImageFolder(root)
    decoder = BatchDecoder(torch.device("cpu"), train=False)
    datas = [enc[i][0] for i in range(len(enc))]
    batch, kept = decoder(datas)
    assert kept == list(range(len(enc)))
    for i in range(len(enc)):
        ref = pil[i][0]
        assert batch[i].shape == ref.shape == (3, 224, 224)
        # Same decoder library; the resizes differ by rounding only (normalised units, std ~0.22).
        assert (batch[i] - ref).abs().mean().item() < 0.02


def test_training_crops_follow_the_same_distribution_as_the_pil_pipeline(tmp_path):
    # A horizontal ramp: a crop's mean brightness tells where it sits and how wide it is.
    ramp = torch.linspace(0, 255, 500).repeat(375, 1).to(torch.uint8)
    img = Image.fromarray(torch.stack([ramp] * 3, -1).numpy())
    path = tmp_path / "ramp.png"
    img.save(path)
    from torchvision import transforms

    pil_tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.ToTensor()])
    decoder = BatchDecoder(torch.device("cpu"), train=True)
    data = open(path, "rb").read()
    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    torch.manual_seed(0)
    pil_means = torch.tensor([pil_tf(img).mean().item() for _ in range(400)])
    torch.manual_seed(1)
    batch, _ = decoder([encoded] * 400)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    fast_means = (batch * std + mean).mean(dim=(1, 2, 3))
    # Flips mirror the ramp, so compare |mean - 0.5| (offset of the crop's centre) and the spread.
    for stat in (lambda m: (m - 0.5).abs().mean(), lambda m: m.std()):
        assert abs(stat(pil_means).item() - stat(fast_means).item()) < 0.03


def test_grayscale_cmyk_png_and_broken_files_are_decoded_or_skipped_with_one_warning(tmp_path):
    root = make_folder(tmp_path / "mixed", n=1, extra=BAD_FILES)
    enc = EncodedImageFolder(root)
    names = [enc.samples[i][0] for i in range(len(enc))]
    decoder = BatchDecoder(torch.device("cpu"), train=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch, kept = decoder([enc[i][0] for i in range(len(enc))], names)
        decoder([enc[i][0] for i in range(len(enc))], names)  # a second epoch warns no more
    kept_names = {os.path.basename(names[i]) for i in kept}
    assert {"gray.jpg", "cmyk.jpg", "lossless.png", "0.jpg"} <= kept_names
    assert "garbage.jpg" not in kept_names
    assert batch.shape == (len(kept), 3, 224, 224) and torch.isfinite(batch).all()
    messages = [str(w.message) for w in caught]
    assert len([m for m in messages if "garbage.jpg" in m]) == 1


def test_trainer_runs_with_the_gpu_backend_on_the_cpu(tmp_path):
    train = make_folder(tmp_path / "train", n=4, extra=BAD_FILES[:3])
    val = make_folder(tmp_path / "val", n=2, extra=BAD_FILES[3:])
    cmd = [sys.executable, os.path.join(ROOT, "train", "imagenet.py"), "--train-dir", train, "--val-dir", val,
           "--data-backend", "gpu", "--model", "mobilenet_v3_small", "--batch-size", "4", "--val-batch-size", "4",
           "--epochs", "1", "--base-op", "lars", "--workers", "2", "--dist", "none", "--quiet", "--no-tensorboard",
           "--log-dir", str(tmp_path / "logs")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "final: val top1" in proc.stdout
    assert "skipping undecodable image" in proc.stderr
