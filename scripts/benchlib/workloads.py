"""The workloads, each timed as training code would see it (Python, through the VFS).

- `walk`: `os.walk` of the mount (entry types from readdir, no per-file stat);
- `stat_all`: `os.stat` of every file, in listing order;
- `epoch`: every file read whole with `open(p, 'rb').read()` (what PIL's `Image.open` does),
  in a fresh random order per epoch (the same order for every contender), by 1 reader process
  or split round-robin over N reader processes of a pool forked before any mount; each
  reader also reports the CPU time it spent (`read_timed`).
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


def read_timed(paths: list[str]) -> tuple[int, float]:
    """`read_all`, and the CPU seconds (user + system) this reader process spent on it: its
    system time holds what the kernel did on its behalf (page cache copies, FUSE requests
    queued, a kernel SquashFS mount's decompression)."""
    t = time.process_time()
    nbytes = read_all(paths)
    return nbytes, time.process_time() - t


def _reader_signals() -> None:
    """Readers die quietly on the pool's SIGTERM; Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Readers:
    """A pool of reader processes, forked once (before any mount) and reused."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.pool = multiprocessing.get_context("fork").Pool(n, initializer=_reader_signals)
        self.last_cpu = 0.0  # the readers' CPU seconds in the last epoch

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()

    def epoch(self, paths: list[str], readers: int, seed: int) -> tuple[float, int]:
        """Seconds to read every path once, and the bytes read. The readers' CPU seconds
        (user + system, summed over the reader processes) are left in `last_cpu`."""
        order = paths[:]
        random.Random(seed).shuffle(order)
        t = time.perf_counter()
        if readers == 1:
            done = [self.pool.apply(read_timed, (order,))]
        else:
            chunks = [order[i :: readers * 8] for i in range(readers * 8)]
            done = self.pool.map(read_timed, chunks, chunksize=1)
        dt = time.perf_counter() - t
        self.last_cpu = sum(c for _, c in done)
        return dt, sum(n for n, _ in done)
