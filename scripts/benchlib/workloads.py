"""The workloads, each timed as training code would see it (Python, through the VFS).

- `walk`: `os.walk` of the mount (entry types from readdir, no per-file stat);
- `stat_all`: `os.stat` of every file, in listing order;
- `epoch`: every file read whole with `open(p, 'rb').read()` (what PIL's `Image.open` does),
  in a fresh random order per epoch (the same order for every contender), by 1 reader process
  or split round-robin over N reader processes of a pool forked before any mount.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path


def walk(tops: list[Path]) -> tuple[float, int]:
    """Seconds to walk every top, and the number of entries seen."""
    t = time.perf_counter()
    entries = 0
    for top in tops:
        for _, dirs, files in os.walk(top):
            entries += len(dirs) + len(files)
    return time.perf_counter() - t, entries


def stat_all(paths: list[str]) -> float:
    t = time.perf_counter()
    for p in paths:
        os.stat(p)
    return time.perf_counter() - t


def read_all(paths: list[str]) -> int:
    """Bytes read, reading each file whole as training code does (`open(p, 'rb').read()`)."""
    total = 0
    for p in paths:
        with open(p, "rb") as f:
            total += len(f.read())
    return total


def _reader_signals() -> None:
    """Readers die quietly on the pool's SIGTERM; Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Readers:
    """A pool of reader processes, forked once (before any mount) and reused."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.pool = multiprocessing.get_context("fork").Pool(n, initializer=_reader_signals)

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()

    def epoch(self, paths: list[str], readers: int, seed: int) -> tuple[float, int]:
        """Seconds to read every path once, and the bytes read."""
        order = paths[:]
        random.Random(seed).shuffle(order)
        t = time.perf_counter()
        if readers == 1:
            nbytes = self.pool.apply(read_all, (order,))
        else:
            chunks = [order[i :: readers * 8] for i in range(readers * 8)]
            nbytes = sum(self.pool.map(read_all, chunks, chunksize=1))
        return time.perf_counter() - t, nbytes
