"""Virtual root files: meta.bin (torchvision's format, without torch), label and file lists."""

from __future__ import annotations

import importlib.util
import io
import mmap
import os
import pickle
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ROOT_FILES, Mounter
from prepared import unprepared

from imagenetfs import generate, rootfiles, synsets
from imagenetfs.generate import Spec

SPEC = Spec(classes=5, train_per_class=4, val_per_class=3, test=3, tiny=True)


def load_meta_bin(data: bytes) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        assert names == ["meta/data.pkl", "meta/byteorder", "meta/version"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in archive.infolist())
        assert archive.read("meta/byteorder") == b"little"
        result = pickle.loads(archive.read("meta/data.pkl"))
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


@pytest.fixture(scope="module")
def mounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    data = tmp_path_factory.mktemp("data")
    generate.generate(data, SPEC)
    mounter = Mounter(tmp_path_factory.mktemp("work"))
    try:
        yield mounter.mount(mounter.work / "mnt", data, index=data / "i.lmdb").mp
    finally:
        mounter.cleanup()


def test_root_of_the_mount(mounted: Path) -> None:
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


def test_lists_match_the_tree(mounted: Path) -> None:
    wnids = sorted(os.listdir(mounted / "train"))
    assert wnids == list(synsets.wnids()[:5])
    for split in ("train", "val", "test"):
        listed = (mounted / f"{split}_files.txt").read_text().splitlines()
        walked = sorted(
            os.path.relpath(os.path.join(d, f), mounted)
            for d, _, fs in os.walk(mounted / split)
            for f in fs
        )
        assert listed == walked
        if split != "test":
            rows = [line.split() for line in (mounted / f"{split}.txt").read_text().splitlines()]
            assert [r[0] for r in rows] == walked
            for path, label in rows:
                assert wnids[int(label)] == path.split("/")[1]
    mapping = (mounted / "LOC_synset_mapping.txt").read_text().splitlines()
    assert [line.split()[0] for line in mapping] == wnids
    wnid_to_classes, val_wnids = load_meta_bin((mounted / "meta.bin").read_bytes())
    assert set(wnid_to_classes) == set(wnids)
    flat = sorted((n, w) for w in wnids for n in os.listdir(mounted / "val" / w))
    assert len(flat) == 15
    assert val_wnids == [w for _, w in flat]


def test_torch_loads_meta_bin(mounted: Path) -> None:
    """`meta.bin` on the mount loads with torch.load(weights_only=True), as torchvision does."""
    if importlib.util.find_spec("torch") is None:
        unprepared(f"no torch in this environment ({sys.executable})")
    import torch

    wnid_to_classes, val_wnids = torch.load(mounted / "meta.bin", weights_only=True)
    assert wnid_to_classes["n01440764"] == ("tench", "Tinca tinca")
    assert len(val_wnids) == 15
