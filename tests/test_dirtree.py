"""An unpacked tree as a source (dirtree.py): what identifies it, and the descriptors it keeps.

The index's tests (tests/test_layouts.py) cover what an unpacked tree serves; here: its
fingerprint holds nothing that differs between the machines that share it (no device
number), and its reads go through a bounded LRU of open descriptors -- one `open` per file,
not one per read -- that never closes a descriptor a reader is using.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import threading
from pathlib import Path

import pytest

from imagenetfs import dirtree, squashfs


@pytest.fixture
def tree(tmp_path: Path) -> dict[bytes, bytes]:
    """200 files of distinct bytes under tmp_path/root/<d>/: relative path -> bytes."""
    rng = random.Random(3)
    files = {}
    for n in range(200):
        rel = f"d{n % 7}/f{n:03d}.bin"
        data = rng.randbytes(rng.randrange(1, 20_000))
        path = tmp_path / "root" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files[rel.encode()] = data
    return files


def extent(rel: bytes, size: int) -> squashfs.Extent:
    return squashfs.Extent(size, 0, rel, None, 0, 0)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_fingerprint_survives_a_copy(tmp_path: Path, tree: dict[bytes, bytes]) -> None:
    """The fingerprint is the root's entries: the same for a copy (other inodes, mtimes,
    device), different when a class directory comes or goes."""
    with dirtree.DirImage(tmp_path / "root") as image:
        fields = {f.name for f in dataclasses.fields(image.fingerprint())}
        assert fields == {"entries", "names"}
        first = image.fingerprint()
    shutil.copytree(tmp_path / "root", tmp_path / "copy", symlinks=True)
    os.utime(tmp_path / "copy" / "d0", ns=(1, 1))
    with dirtree.DirImage(tmp_path / "copy") as copy:
        assert copy.fingerprint() == first
        (tmp_path / "copy" / "d9").mkdir()
        assert copy.fingerprint() != first


def test_open_descriptors_are_bounded_and_reused(tmp_path: Path, tree: dict[bytes, bytes]) -> None:
    before = open_fds()
    with dirtree.DirImage(tmp_path / "root") as image:
        for rel, data in tree.items():  # several reads of each file, one open
            for offset in (0, len(data) // 2):
                assert image.read(extent(rel, len(data)), offset, 1 << 20) == data[offset:]
            assert image.open_files() <= dirtree.OPEN_FILES
        assert image.open_files() == dirtree.OPEN_FILES
        assert open_fds() == before + 1 + dirtree.OPEN_FILES  # the root, and the LRU
        rel = next(iter(tree))
        for _ in range(100):  # an evicted file is opened again, once
            image.read(extent(rel, len(tree[rel])), 0, 10)
        assert open_fds() == before + 1 + dirtree.OPEN_FILES
        with pytest.raises(squashfs.WouldBlock):
            image.read(extent(rel, len(tree[rel])), 0, 10, nowait=True)
        for bad in (b"/etc/passwd", b"../x", b"d0/../../x"):
            with pytest.raises(squashfs.CorruptImageError):
                image.read(extent(bad, 10), 0, 10)
    assert open_fds() == before, "closing the image closes every descriptor"


def test_concurrent_readers_get_exact_bytes(tmp_path: Path, tree: dict[bytes, bytes]) -> None:
    """Eight threads read random files through a small LRU (evictions all the time): no read
    meets a descriptor closed or reused under it."""
    before = open_fds()
    failures: list[str] = []
    with dirtree.DirImage(tmp_path / "root") as image:

        def reader(seed: int) -> None:
            rng = random.Random(seed)
            names = sorted(tree)
            for _ in range(1500):
                rel = rng.choice(names)
                data = tree[rel]
                offset = rng.randrange(len(data))
                got = image.read(extent(rel, len(data)), offset, 4096)
                if got != data[offset : offset + 4096]:
                    failures.append(rel.decode())

        threads = [threading.Thread(target=reader, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert image.open_files() <= dirtree.OPEN_FILES
    assert failures == []
    assert open_fds() == before
