"""What torchvision.datasets.ImageNet does with `meta.bin`: `torch.load(..., weights_only=True)`,
plus the same through `mmap=True`.

    python torch_meta.py ROOT

Prints the loaded `(wnid_to_classes, val_wnids)` as JSON (tuples as lists, with their types).
"""

import json
import os
import sys

import torch


def main() -> None:
    path = os.path.join(sys.argv[1], "meta.bin")
    loaded = torch.load(path, weights_only=True)
    assert torch.load(path, weights_only=True, mmap=True) == loaded
    wnid_to_classes, val_wnids = loaded
    value_types = sorted({type(v).__name__ for v in wnid_to_classes.values()})
    print(
        json.dumps(
            {
                "types": [type(loaded).__name__, type(wnid_to_classes).__name__, *value_types],
                "wnid_to_classes": wnid_to_classes,
                "val_wnids": val_wnids,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
