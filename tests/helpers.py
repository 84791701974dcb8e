"""Small helpers shared by test modules (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import stat
from collections.abc import Iterator
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
