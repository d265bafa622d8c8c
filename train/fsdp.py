"""FSDP2 for the trainer (``--fsdp``): which modules ``fully_shard`` wraps.

Every residual block is its own FSDP unit (its parameters are all-gathered just
before the block runs and freed after it), and the root holds the rest (stem,
classifier). A model without residual blocks shards each top-level child that
has parameters. Parameters become DTensors sharded along dim 0 over all ranks
(uneven shards where a dim 0 does not divide); ``lars_cuda.Lars`` steps them
with one all-reduce (lars_cuda/sharded.py).
"""

from __future__ import annotations

from torch import nn

# torchvision's ResNet blocks and ours (train/models.py); ViT's encoder block.
BLOCK_TYPES = ("BasicBlock", "Bottleneck", "EncoderBlock")


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The modules that get their own fully_shard, outermost first, root excluded."""
    blocks = [m for m in model.modules() if type(m).__name__ in BLOCK_TYPES]
    if blocks:
        return blocks
    return [child for child in model.children() if any(True for _ in child.parameters())]


def shard_model(model: nn.Module, mesh=None) -> nn.Module:
    """fully_shard each unit, then the root (in place; returns the model)."""
    from torch.distributed.fsdp import fully_shard

    for unit in fsdp_units(model):
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model
