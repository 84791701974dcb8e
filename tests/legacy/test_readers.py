"""Python readers a training script uses, on the mount and on the unpacked tree: the outputs
must be identical (every program prints what it read: paths, labels, sizes, pixels, MD5s)."""

from __future__ import annotations

import mmap
import os
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest
from prepared import unprepared

from .conftest import (
    CLASSES,
    N_IMAGES,
    PROGRAMS,
    ROOT_FILES,
    TRAIN_PER_CLASS,
    VAL_PER_CLASS,
    Trees,
    on_both,
    run,
)

pytestmark = pytest.mark.timeout(120)


def both(trees: Trees, name: str, *args: str) -> tuple[str, str]:
    return on_both(trees, name, *args)


def test_pil_loop_over_random_images(trees: Trees) -> None:
    mount, unpacked = both(trees, "pil_loop", str(N_IMAGES), "1")  # every image, random order
    assert mount == unpacked
    lines = mount.splitlines()
    assert len(lines) == N_IMAGES
    kinds = {(line.split()[1], line.split()[2]) for line in lines}
    # the oddities are there and read: CMYK and grayscale JPEGs, the PNG named .JPEG
    assert kinds == {("JPEG", "RGB"), ("JPEG", "CMYK"), ("JPEG", "L"), ("PNG", "RGB")}


@pytest.mark.parametrize("split", ["train", "val"])
def test_imagefolder_walk_and_pil(trees: Trees, split: str) -> None:
    mount, unpacked = both(trees, "imagefolder", split)
    assert mount == unpacked
    lines = mount.splitlines()
    classes = lines[0].split()[1:]
    assert classes == sorted(p.name for p in (trees.unpacked / split).iterdir())
    assert len(classes) == CLASSES
    per_class = TRAIN_PER_CLASS if split == "train" else VAL_PER_CLASS
    assert len(lines) - 1 == CLASSES * per_class
    for line in lines[1:]:
        path, label = line.split()[:2]
        wnid = path.split("/")[1]
        assert classes[int(label)] == wnid
        if split == "val":
            assert trees.val_labels[path.split("/")[2]] == wnid


def test_dali_style_file_list_reader(trees: Trees) -> None:
    mount, unpacked = both(trees, "dali_reader", "train.txt", "val.txt", "test.txt")
    assert mount == unpacked
    lines = mount.splitlines()
    assert lines[-1] == "copy-on-write private"
    rows = [line.split() for line in lines[:-1]]
    assert len(rows) == N_IMAGES
    for rel, _, size, magic, _ in rows:
        assert int(size) == (trees.unpacked / rel).stat().st_size
        assert magic.startswith(("ffd8ff", "89504e47")), rel  # JPEG, or the PNG


def test_root_files_mmap_by_st_size(trees: Trees) -> None:
    """The generated root files are mapped the same way (DALI maps a file_list's files; torch
    maps meta.bin with mmap=True): exactly st_size bytes, the bytes a read gives."""
    for name in ROOT_FILES:
        path = trees.mount / name
        size = os.stat(path).st_size
        with open(path, "rb") as f, mmap.mmap(f.fileno(), size, mmap.MAP_PRIVATE) as m:
            assert m[:] == (trees.unpacked / name).read_bytes() == path.read_bytes(), name


def test_opencv_imread(trees: Trees) -> None:
    try:
        import cv2  # noqa: F401
    except Exception as exc:  # ImportError, or a wheel that needs missing system libraries
        unprepared(f"cv2 does not import ({exc}; opencv-python-headless, a test extra)")
    mount, unpacked = both(trees, "cv2_read")
    assert mount == unpacked
    lines = mount.splitlines()
    assert len(lines) == N_IMAGES
    assert not [line for line in lines if "UNREADABLE" in line]


def _path_syscalls(trace: str, root: Path) -> Counter[str]:
    """Syscalls of an strace log that name a path under `root`, counted by name."""
    calls: Counter[str] = Counter()
    for line in trace.splitlines():
        if f'"{root}/' in line or f'"{root}"' in line:
            name = re.match(r"(?:\d+\s+)?(\w+)\(", line)
            if name and name[1] != "execve":
                calls[name[1]] += 1
    return calls


def test_imagefolder_makes_no_per_file_stat(trees: Trees, tmp_path: Path) -> None:
    """Directory listings carry entry types, so the ImageFolder walk makes the same path
    syscalls on the mount as on a local disk: one open per file, a stat per class, no
    per-file stat."""
    if shutil.which("strace") is None:
        unprepared("no strace here (Debian's strace, which scripts/setup.sh installs)")
    if run(["strace", "-o", "/dev/null", "true"], check=False).returncode != 0:
        pytest.skip("strace cannot trace here (ptrace not permitted)")
    calls = []
    for root in trees.both:
        log = tmp_path / f"{root.name}.strace"
        script = PROGRAMS / "imagefolder.py"
        run(["strace", "-f", "-qq", "-o", log, sys.executable, script, root, "train"])
        calls.append(_path_syscalls(log.read_text(), root))
    assert calls[0] == calls[1]
    stats = sum(n for name, n in calls[0].items() if "stat" in name)
    assert stats <= CLASSES + 2, calls[0]
