"""`imagenetfs warm`: fill the resize cache ahead of a job, on every core, with a progress bar.

A batch job, not a server: a pool of forked processes (`concurrent.futures.ProcessPoolExecutor`),
each with its own index and cache environments (LMDB environments do not cross a fork) and an
operation core (ops.py) to resize through -- so a warmed file is exactly what a mount with the
same specs, quality and cache serves, and the cache keys agree.

A worker that cannot start (its cache or index will not open) stops the warm: its start-up
never raises (an initializer that raises makes a pool start the next worker, and the next, for
ever), it keeps the reason, and the first task it is given fails with it (`WarmError`); the
pool is then shut down. A worker that dies (killed, out of memory) breaks the executor, and the
warm stops with one line too, rather than wait for ever for the tasks it held.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import lmdb

from imagenetfs.errors import ImagenetfsError, NoSuchEntry
from imagenetfs.index import DIR, ROOT_INO, Index
from imagenetfs.ops import Core
from imagenetfs.views.resize import ResizeCache, ResizeSpec
from imagenetfs.views.tree import VIEW_SHIFT, Tree

#: View files per task handed to a worker.
CHUNK = 16
#: Tasks queued per worker: enough to keep them busy, never the whole list at once.
AHEAD = 4


class WarmError(ImagenetfsError):
    """The warm cannot go on: a worker process could not start, or died."""


@dataclass(frozen=True)
class WarmJob:
    index_path: Path
    source: Path | None  # where the images are (None: where the index was built from)
    specs: tuple[ResizeSpec, ...]
    quality: int
    cache_dir: Path
    cache_size: int


_core: Core | None = None
_start_error: str | None = None  # why this worker could not start (see the module docstring)


def _start(job: WarmJob) -> None:
    """In each pool process: its own index and cache, and a core over them. Never raises."""
    global _core, _start_error
    try:
        cache = ResizeCache(job.cache_dir, job.cache_size)
    except (OSError, lmdb.Error) as e:
        reason = e.strerror if isinstance(e, OSError) else str(e).rsplit(": ", 1)[-1]
        _start_error = (
            f"the resize cache {job.cache_dir} cannot be opened ({reason}); give --cache-dir "
            "a directory you can write"
        )
        return
    try:
        tree = Tree(Index.open(job.index_path, source=job.source), job.specs, quality=job.quality)
        _core = Core(tree, uid=os.getuid(), gid=os.getgid(), cache=cache, blocking_reads=True)
    except Exception as e:  # (ImagenetfsError: one line already; anything else, named)
        _start_error = str(e) if isinstance(e, ImagenetfsError) else f"{type(e).__name__}: {e}"


def _warm_chunk(inos: list[int]) -> list[int]:
    """`_warm_one` of each; WarmError if this worker could not start."""
    if _core is None:
        raise WarmError(f"a warm worker could not start: {_start_error}")
    return [_warm_one(ino) for ino in inos]


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
    workers = max(1, jobs)
    chunks: Iterator[list[int]] = (inos[i : i + CHUNK] for i in range(0, len(inos), CHUNK))
    pool = ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("fork"), initializer=_start, initargs=(job,)
    )
    pending: set[Future[list[int]]] = set()
    try:
        with tqdm(
            total=len(inos), unit="img", desc="warming", disable=None if progress else True
        ) as bar:
            while True:
                for chunk in chunks:  # (at most AHEAD tasks per worker queued at a time)
                    pending.add(pool.submit(_warm_chunk, chunk))
                    if len(pending) >= AHEAD * workers:
                        break
                if not pending:
                    break
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    results = future.result()  # (a worker's WarmError is raised here)
                    for result in results:
                        counts[names[result]] += 1
                    bar.update(len(results))
    except BrokenProcessPool:
        raise WarmError(
            "a warm worker process died (killed, or out of memory?); run the warm again -- "
            "what it had cached is kept"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return counts
