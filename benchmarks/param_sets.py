"""Parameter shape lists the step benchmark runs on: real models' shapes (read off
torchvision on the meta device, so nothing is allocated) and synthetic extremes."""

from __future__ import annotations

import random
from typing import Callable

import torch


def _torchvision_shapes(name: str) -> list[tuple[int, ...]]:
    import torchvision

    with torch.device("meta"):
        model = torchvision.models.get_model(name, weights=None)
    return [tuple(p.shape) for p in model.parameters()]


def bert_large_shapes(layers: int = 24, hidden: int = 1024, ffn: int = 4096, vocab: int = 30522,
                      positions: int = 512) -> list[tuple[int, ...]]:
    """BERT-large's parameter list (~335 M): embeddings, then per layer the
    attention projections, the feed-forward pair and two LayerNorms, then the pooler."""
    shapes = [(vocab, hidden), (positions, hidden), (2, hidden), (hidden,), (hidden,)]
    for _ in range(layers):
        for _ in range(4):  # q, k, v, out
            shapes += [(hidden, hidden), (hidden,)]
        shapes += [(hidden,), (hidden,), (ffn, hidden), (ffn,), (hidden, ffn), (hidden,), (hidden,), (hidden,)]
    shapes += [(hidden, hidden), (hidden,)]
    return shapes


def tiny_shapes(n: int = 10_000, seed: int = 0) -> list[tuple[int, ...]]:
    rng = random.Random(seed)
    return [(rng.randint(1, 256),) for _ in range(n)]


SETS: dict[str, Callable[[], list[tuple[int, ...]]]] = {
    "resnet50": lambda: _torchvision_shapes("resnet50"),
    "resnet152": lambda: _torchvision_shapes("resnet152"),
    "vit_b_16": lambda: _torchvision_shapes("vit_b_16"),
    "bert_large": bert_large_shapes,
    "bert_base": lambda: bert_large_shapes(layers=12, hidden=768, ffn=3072),
    "tiny_10k": tiny_shapes,
    "one_100m": lambda: [(100_000_000,)],
    # A few seconds' worth, for the smoke test.
    "smoke": lambda: [(64, 3, 7, 7), (64,), (256, 64), (10,), (3000,)],
}


def numel(shapes: list[tuple[int, ...]]) -> int:
    total = 0
    for s in shapes:
        n = 1
        for d in s:
            n *= d
        total += n
    return total
