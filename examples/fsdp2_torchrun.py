"""FSDP2 users: fully_shard the model and step its DTensor params with Lars (one
all-reduce of the norms per step). CPU ranks over gloo here; NCCL on GPUs.

    torchrun --standalone --nproc-per-node 2 examples/fsdp2_torchrun.py
"""
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from lars_cuda import Lars


def main(rank, device):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)).to(device)
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    optimizer = Lars(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(16, 32, generator=g).to(device), torch.randint(0, 4, (16,), generator=g).to(device)
    for step in range(3):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        if rank == 0:
            print(f"step {step}: loss {loss.item():.4f}")
    ratios = optimizer.trust_ratios()  # collective: every rank calls it
    if rank == 0:
        print(f"{dist.get_world_size()} ranks, {len(ratios)} trust ratios, first {ratios[0].item():.4g}")


if __name__ == "__main__":
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    main(dist.get_rank(),
         torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else "cpu")
    dist.destroy_process_group()
    # gloo's worker threads outlive destroy_process_group (DTensor's caches keep the
    # group), and one that lets go of a finished collective while Python finalizes
    # aborts the process (pytorch/pytorch#190489). The work is done: flush, and leave
    # without finalizing.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
