"""--data-backend gpu: bytes in the workers, decode and augmentation batched on
the device (here the CPU, through the same code)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import torch
from PIL import Image

from train.data import image_folder
from train.fast_data import BatchDecoder, EncodedImageFolder
from ..support.paths import ROOT



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


def crop_geometry(crops: torch.Tensor, width: int, height: int):
    """Area fraction and log aspect ratio of each crop of the two-ramp image below,
    read off its pixels: red rises left to right and green top to bottom, so a crop's
    extreme red/green values are its edges (whichever way it was flipped)."""
    red, green = crops[:, 0].flatten(1), crops[:, 1].flatten(1)
    w = (red.amax(1) - red.amin(1)) * (width - 1) + 1
    h = (green.amax(1) - green.amin(1)) * (height - 1) + 1
    return w * h / (width * height), torch.log(w / h)


def test_training_crops_have_random_resized_crop_scale_and_ratio(tmp_path):
    # The oracle is the definition of RandomResizedCrop(scale=(0.08, 1), ratio=(3/4, 4/3)):
    # area fractions spread over [0.08, 1] and log aspect ratios over [log 3/4, log 4/3]
    # (uniform, std 0.166; crops that do not fit the image are redrawn, which thins out the
    # large ones). Both our device pipeline and torchvision's PIL one must show it.
    width, height = 500, 375
    red = torch.linspace(0, 255, width).round().repeat(height, 1)
    green = torch.linspace(0, 255, height).round().unsqueeze(1).repeat(1, width)
    pixels = torch.stack([red, green, torch.zeros_like(red)], -1).to(torch.uint8)
    img = Image.fromarray(pixels.numpy())
    path = tmp_path / "ramps.png"
    img.save(path)
    from torchvision import transforms

    pil_tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.ToTensor()])
    torch.manual_seed(0)
    pil_crops = torch.stack([pil_tf(img) for _ in range(600)])
    decoder = BatchDecoder(torch.device("cpu"), train=True)
    encoded = torch.frombuffer(bytearray(open(path, "rb").read()), dtype=torch.uint8)
    torch.manual_seed(1)
    batch, _ = decoder([encoded] * 600)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    for name, crops in (("pil", pil_crops), ("device", batch * std + mean)):
        area, log_ratio = crop_geometry(crops, width, height)
        assert 0.06 < area.min() < 0.11, (name, area.min())
        assert area.quantile(0.05) < 0.16 and area.max() > 0.9, name  # a scale of (0.25, 1) fails here
        assert 0.13 < log_ratio.std() < 0.20, (name, log_ratio.std())  # a fixed ratio gives 0
        assert log_ratio.abs().max() < 0.31 and abs(log_ratio.mean()) < 0.03, name


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
