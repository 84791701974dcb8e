"""`imagenetfs warm`: fill the resize cache ahead of a job, on every core, with a progress bar.

A batch job, not a server: a pool of forked processes, each with its own index and cache
environments (LMDB environments do not cross a fork) and an operation core (ops.py) to resize
through -- so a warmed file is exactly what a mount with the same specs, quality and cache
serves, and the cache keys agree.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from imagenetfs.errors import ImagenetfsError, NoSuchEntry
from imagenetfs.index import DIR, ROOT_INO, Index
from imagenetfs.ops import Core
from imagenetfs.resize import ResizeCache, ResizeSpec
from imagenetfs.views import VIEW_SHIFT, Tree


@dataclass(frozen=True)
class WarmJob:
    index_path: Path
    source: Path | None  # where the images are (None: where the index was built from)
    specs: tuple[ResizeSpec, ...]
    quality: int
    cache_dir: Path
    cache_size: int


_core: Core | None = None


def _start(job: WarmJob) -> None:
    """In each pool process: its own index and cache, and a core over them."""
    global _core
    cache = ResizeCache(job.cache_dir, job.cache_size)
    tree = Tree(Index.open(job.index_path, source=job.source), job.specs, quality=job.quality)
    _core = Core(tree, uid=os.getuid(), gid=os.getgid(), cache=cache, blocking_reads=True)


def _warm_one(ino: int) -> int:
    """Resize one view file into the cache: 1 if resized now, 0 if cached, -1 if it failed."""
    assert _core is not None
    node = _core.tree.getattr(ino)
    spec = _core.tree.spec_of(node)
    if spec is None or _core.known_size(node, spec) is not None:
        return 0
    try:
        _core.resized_bytes(node)
    except ImagenetfsError:
        return -1
    return 1


def _view_files(job: WarmJob, splits: Sequence[str]) -> list[int]:
    """The inode of every file of `splits` in every view that would be resized."""
    with Index.open(job.index_path, source=job.source) as index:
        tree = Tree(index, job.specs, quality=job.quality)
        inos: list[int] = []
        for split in splits:
            try:
                top = index.lookup(ROOT_INO, split.encode())
            except NoSuchEntry:
                continue
            stack = [top.ino]
            while stack:
                for node in index.readdir(stack.pop()):
                    if node.kind == DIR:
                        stack.append(node.ino)
                        continue
                    for view in range(1, len(job.specs) + 1):
                        ino = (view << VIEW_SHIFT) | node.ino
                        if tree.spec_of(tree.getattr(ino)) is not None:
                            inos.append(ino)
    return inos


def warm(job: WarmJob, splits: Sequence[str], jobs: int, progress: bool) -> dict[str, int]:
    """Fill the resize cache for every image file of `splits` in every spec, in parallel."""
    inos = _view_files(job, splits)
    from tqdm import tqdm

    counts = {"resized": 0, "cached": 0, "failed": 0}
    names = {1: "resized", 0: "cached", -1: "failed"}
    context = multiprocessing.get_context("fork")
    with (
        context.Pool(max(1, jobs), _start, (job,)) as pool,
        tqdm(
            total=len(inos), unit="img", desc="warming", disable=None if progress else True
        ) as bar,
    ):
        for result in pool.imap_unordered(_warm_one, inos, chunksize=16):
            counts[names[result]] += 1
            bar.update()
    return counts
