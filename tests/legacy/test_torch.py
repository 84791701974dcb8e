"""PyTorch on the mount: `torch.load(meta.bin, weights_only=True)` and torchvision's ImageNet
dataset with a multi-process DataLoader (marked `torchvision`). Both need the test venv of
scripts/test.sh, where torch and torchvision import together (PyPI's torchvision does not
import beside the CPU-only torch 2.13.0 wheel); without them they fail under the test command
and skip elsewhere (tests/prepared.py).

Both run as unmodified programs (`programs/`) on the mount and on the unpacked tree and must
print the same; the expectations (class names, val labels) come from the tree and the
generator's `val_labels.txt`, not from imagenetfs.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
import sys

import pytest
from prepared import unprepared

from .conftest import CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, Trees, on_both

pytestmark = pytest.mark.timeout(300)

TENCH = ("n01440764", ["tench", "Tinca tinca"])


def test_torch_load_meta_bin(trees: Trees) -> None:
    """torch.load(meta.bin, weights_only=True) gives the same on the mount as on the unpacked
    tree: the classes of the tree's wnids and the val labels of the generator."""
    if importlib.util.find_spec("torch") is None:
        unprepared(f"no torch in this environment ({sys.executable})")
    mount, unpacked = on_both(trees, "torch_meta")
    assert mount == unpacked
    meta = json.loads(mount)
    assert meta["types"] == ["tuple", "dict", "tuple"]
    wnids = sorted(p.name for p in (trees.unpacked / "train").iterdir())
    assert list(meta["wnid_to_classes"]) == wnids
    assert [TENCH[0], meta["wnid_to_classes"][TENCH[0]]] == list(TENCH)
    mapping = (trees.unpacked / "LOC_synset_mapping.txt").read_text().splitlines()
    assert mapping == [f"{w} {', '.join(meta['wnid_to_classes'][w])}" for w in wnids]
    assert meta["val_wnids"] == [trees.val_labels[name] for name in sorted(trees.val_labels)]


@functools.cache  # (one interpreter importing torchvision: seconds; once for both cases)
def _torchvision_problem() -> str | None:
    if importlib.util.find_spec("torchvision") is None:
        return "torchvision is not installed in this environment"
    probe = subprocess.run(
        [sys.executable, "-c", "import torchvision"], capture_output=True, text=True, timeout=120
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"torchvision does not import here: {last}"
    return None


@pytest.mark.torchvision
@pytest.mark.parametrize("served_from", ["images", "tars"])
def test_torchvision_imagenet_and_dataloader(
    served_from: str, request: pytest.FixtureRequest
) -> None:
    """From the cluster's SquashFS images, and from the official tars (nothing extracted)."""
    problem = _torchvision_problem()
    if problem is not None:
        unprepared(problem)
    trees: Trees = request.getfixturevalue("trees" if served_from == "images" else "tar_trees")
    mount, unpacked = on_both(trees, "torchvision_imagenet")
    assert mount == unpacked
    out = json.loads(mount)
    for split in ("train", "val"):  # the evidence, shown by pytest -rP
        data, first = out[split], out[split]["batches"][0]
        print(
            f"{split}: torch {out['torch']} len={data['len']} classes[0]={data['first_class']} "
            f"batches={len(data['batches'])} first batch {first['shape']} {first['dtype']} "
            f"labels={first['labels']}; mount == unpacked"
        )
    counts = {"train": CLASSES * TRAIN_PER_CLASS, "val": CLASSES * VAL_PER_CLASS}
    for split, count in counts.items():
        data = out[split]
        assert data["len"] == count == len(data["samples"])
        assert data["classes"][0] == TENCH[1]
        assert data["first_class"] == "('tench', 'Tinca tinca')"  # a tuple, as torchvision has it
        assert data["wnids"] == sorted(p.name for p in (trees.unpacked / split).iterdir())
        assert sum(len(b["labels"]) for b in data["batches"]) == count
        for batch in data["batches"]:
            assert batch["shape"] == [len(batch["labels"]), 3, 224, 224]
            assert batch["dtype"] == "torch.float32"
        labels = [label for batch in data["batches"] for label in batch["labels"]]
        assert labels == [target for _, target in data["samples"]]
    wnids = out["val"]["wnids"]
    val_labels = {path.rsplit("/", 1)[1]: wnids[t] for path, t in out["val"]["samples"]}
    assert val_labels == trees.val_labels
