"""torchvision's ImageNet dataset and a DataLoader with worker processes, unmodified.

    python torchvision_imagenet.py ROOT [BATCHES]

For train and val: the dataset's length, classes, wnids and samples, then every batch (or the
first BATCHES) of a `DataLoader(num_workers=2)` with Resize(256) + CenterCrop(224) + ToTensor:
shape, dtype, labels and the MD5 of the pixels. Printed as JSON.
"""

import hashlib
import itertools
import json
import os
import sys

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms


def main() -> None:
    root = sys.argv[1]
    limit = int(sys.argv[2]) if len(sys.argv) > 2 else None
    transform = transforms.Compose(
        [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()]
    )
    out = {"torch": torch.__version__.split("+")[0]}
    for split in ("train", "val"):
        dataset = datasets.ImageNet(root, split=split, transform=transform)
        loader = DataLoader(dataset, batch_size=8, shuffle=False, num_workers=2)
        batches = [
            {
                "shape": list(images.shape),
                "dtype": str(images.dtype),
                "labels": labels.tolist(),
                "md5": hashlib.md5(images.numpy().tobytes()).hexdigest(),
            }
            for images, labels in itertools.islice(loader, limit)
        ]
        out[split] = {
            "len": len(dataset),
            "classes": dataset.classes,
            "first_class": repr(dataset.classes[0]),
            "wnids": dataset.wnids,
            "samples": [[os.path.relpath(p, root), t] for p, t in dataset.samples],
            "batches": batches,
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
