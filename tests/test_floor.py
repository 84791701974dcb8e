"""The benchmark's FUSE floor (scripts/bench/floorfs.c, through scripts/bench/floor.py) serves
exactly the tree it is given: the same names, bytes and sizes as the directory it packed, with
imagenetfs's modes and link counts -- so that a floor row compares like with like. (Its speed
is the benchmark's business, not a test's.)
"""

from __future__ import annotations

import filecmp
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
from helpers import extract_archive, force_unmount, fuse_unusable, is_mounted

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    fuse_unusable(("gcc", "pkg-config", "unsquashfs", "fusermount3")) is not None,
    reason=str(fuse_unusable(("gcc", "pkg-config", "unsquashfs", "fusermount3"))),
)


def load_floor() -> ModuleType:
    spec = importlib.util.spec_from_file_location("floor", REPO / "scripts/bench/floor.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["floor"] = module
    spec.loader.exec_module(module)
    return module


def test_the_floor_serves_the_tree_it_packed(admin: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for split in ("train", "val"):
        extract_archive(admin / f"{split}.squashfs", tree / split)
    floor = load_floor()
    work, mp = tmp_path / "work", tmp_path / "mnt"
    mp.mkdir()
    data, manifest = floor.pack(tree, work)
    floor.mount(floor.build(work), data, manifest, mp)
    try:
        assert is_mounted(mp)
        compared = 0
        for path in sorted(tree.rglob("*")):
            served = mp / path.relative_to(tree)
            st = os.stat(served)
            if path.is_dir():
                assert sorted(os.listdir(served)) == sorted(os.listdir(path)), path
                subdirs = sum(1 for c in path.iterdir() if c.is_dir())
                assert (st.st_mode & 0o7777, st.st_nlink) == (0o555, 2 + subdirs), path
            else:
                assert st.st_mode & 0o7777 == 0o444 and st.st_size == path.stat().st_size
                assert filecmp.cmp(path, served, shallow=False), path
                with open(served, "rb") as f:
                    assert os.pread(f.fileno(), 4096, st.st_size) == b""  # past the end
                compared += 1
        assert compared == sum(1 for p in tree.rglob("*") if p.is_file()) > 0
    finally:
        force_unmount(mp)
