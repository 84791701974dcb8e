"""A data-parallel training job for the Slurm tests: torch.distributed (gloo, on the CPU), one
process per Slurm task on every node, `DistributedSampler` over `torchvision.datasets.ImageNet`
on the job's mount ($IMAGENET) -- or, where torchvision is not installed, over the same samples
listed as ImageFolder lists them -- and a few steps of a tiny model.

    python job_ddp.py [--steps N]

Rank, world size and local rank come from Slurm ($SLURM_PROCID, $SLURM_NTASKS,
$SLURM_LOCALID); the rendezvous is $MASTER_ADDR:$MASTER_PORT (default: the job's first node,
port 20000 + the job id modulo 10000). Checks that the ranks' shares cover the dataset and that
every rank ends with the same weights (the gradients were averaged), then prints one line
"ddp ok: node NODE rank R/W, S samples in N steps, loss L, dataset D (KIND)" and exits 0.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

SIDE = 32


def to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB").resize((SIDE, SIDE)), dtype=np.float32) / 255
    return torch.from_numpy(array).permute(2, 0, 1)


class Folder(Dataset[tuple[torch.Tensor, int]]):
    """train/ as ImageFolder sees it: sorted class directories, sorted files, label = index."""

    def __init__(self, root: Path) -> None:
        classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
        self.samples = [
            (root / wnid / name, label)
            for label, wnid in enumerate(classes)
            for name in sorted(os.listdir(root / wnid))
        ]
        self.classes = classes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        with Image.open(path) as image:
            return to_tensor(image), label


def dataset(root: Path) -> tuple[Any, str]:
    try:
        from torchvision import datasets
    except ImportError:
        return Folder(root / "train"), "ImageFolder-style, torchvision not installed"
    return datasets.ImageNet(str(root), split="train", transform=to_tensor), (
        "torchvision.datasets.ImageNet"
    )


def first_node() -> str:
    names = subprocess.run(
        ["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return names[0]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    rank, world = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
    node = os.environ.get("SLURMD_NODENAME", "-")
    os.environ.setdefault("MASTER_ADDR", first_node())
    os.environ.setdefault("MASTER_PORT", str(20000 + int(os.environ["SLURM_JOB_ID"]) % 10000))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    data, kind = dataset(Path(os.environ["IMAGENET"]))
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=4, sampler=sampler, num_workers=1)
    model = nn.parallel.DistributedDataParallel(
        nn.Sequential(nn.Flatten(), nn.Linear(3 * SIDE * SIDE, len(data.classes)))
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen, steps, loss = 0, 0, torch.tensor(0.0)
    for images, labels in loader:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        seen, steps = seen + len(labels), steps + 1
        if steps == args.steps:
            break
    share = torch.tensor([len(sampler)])
    dist.all_reduce(share)
    padded = -(-len(data) // world) * world  # (DistributedSampler pads to a multiple)
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    everyone = [torch.zeros_like(weights) for _ in range(world)]
    dist.all_gather(everyone, weights)
    dist.destroy_process_group()
    if int(share) != padded:
        print(f"error: node {node} rank {rank}: shares cover {int(share)} of {padded}", flush=True)
        return 1
    if not all(torch.equal(weights, other) for other in everyone):
        print(f"error: node {node} rank {rank}: the ranks' weights differ", flush=True)
        return 1
    print(
        f"ddp ok: node {node} rank {rank}/{world}, {seen} samples in {steps} steps, "
        f"loss {float(loss):.3f}, dataset {len(data)} ({kind})",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
