"""Small helpers shared by test modules (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def search_bits_needed(paths: list[Path]) -> list[Path]:
    """Directories on the way to `paths` that others cannot search (e.g. /root holding the
    checkout, or the venv's interpreter under a private home)."""
    needed: set[Path] = set()
    for path in paths:
        for parent in [path, *path.parents]:
            if parent.is_dir() and not parent.stat().st_mode & stat.S_IXOTH:
                needed.add(parent)
    return sorted(needed)


@contextmanager
def searchable_by_others(paths: list[Path]) -> Iterator[None]:
    """Let other users reach `paths` (search bit on the way), restoring the modes after."""
    changed = []
    try:
        for d in search_bits_needed(paths):
            mode = stat.S_IMODE(d.stat().st_mode)
            changed.append((d, mode))
            d.chmod(mode | stat.S_IXOTH)
        yield
    finally:
        for d, mode in reversed(changed):
            d.chmod(mode)


#: The virtual files at the root of every tree (views.root_files).
ROOT_FILES = (
    "LOC_synset_mapping.txt",
    "meta.bin",
    "train.txt",
    "val.txt",
    "test.txt",
    "train_files.txt",
    "val_files.txt",
    "test_files.txt",
)


def mount_points() -> list[str]:
    with open("/proc/mounts") as f:
        return [line.split()[1].encode().decode("unicode_escape") for line in f]


def is_mounted(mp: Path) -> bool:
    return str(mp) in mount_points()


def alive(pid: int) -> bool:
    """Running (a zombie, e.g. an orphan not reaped yet, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def force_unmount(mp: Path) -> None:
    subprocess.run(["fusermount3", "-u", "-z", "-q", str(mp)], capture_output=True, timeout=30)
    if is_mounted(mp):
        subprocess.run(["umount", "-l", str(mp)], capture_output=True, timeout=30)


def fuse_unusable(tools: tuple[str, ...], root_because: str | None = None) -> str | None:
    """Why tests that mount cannot run here (a skip reason), or None: no /dev/fuse, not root
    when `root_because` says the tests need it, or one of `tools` missing."""
    if sys.platform != "linux" or not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if root_because is not None and os.geteuid() != 0:
        return root_because
    for tool in tools:
        if shutil.which(tool) is None:
            return f"{tool} not found"
    return None
