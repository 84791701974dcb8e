#!/usr/bin/env python3
"""Daemon memory across epochs: mount, read every file N times, print memory and files/s.

    scripts/bench_rss.py                         # 100 classes x 100 realistic, 3 epochs, 8 readers
    scripts/bench_rss.py --data DIR --index FILE --epochs 5 --readers 4

Each epoch reads every file whole, in a fresh random order, from `--readers` processes. After
the walk and after each epoch the memory of the daemon and its workers is read from /proc
(`benchlib.contenders.memory`): RSS summed, PSS (shared pages divided among the processes
mapping them), USS, and the PSS of anonymous memory apart from that of mapped files -- for
imagenetfs the pages of its LMDB index that the workers have touched, page cache that the
kernel drops under pressure like any file's. The first epoch fetches from the images; later
ones mostly hit the kernel's page cache, so the daemon only sees LOOKUPs (and, before Python
3.14, an ioctl per open) -- what matters is that its memory does not grow with the epochs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _venv  # noqa: F401  (re-executes with the imagenetfs environment if needed)
from benchlib.contenders import memory

from imagenetfs import generate, registry


def read_all(paths: list[str]) -> int:
    total = 0
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                total += len(chunk)
    return total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("/var/tmp/imagenetfs-bench/real-100x100"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--readers", type=int, default=8)
    p.add_argument("--index", type=Path, help="(default: DATA/bench-rss.lmdb)")
    args = p.parse_args()
    if not (args.data / "train.squashfs").is_file():
        print(f"generating {args.data} ...", file=sys.stderr)
        generate.generate(args.data, generate.Spec(classes=100, train_per_class=100))
    mp = Path(tempfile.mkdtemp(prefix="imagenetfs-rss-"))
    index = args.index or args.data / "bench-rss.lmdb"
    cmd = [
        sys.executable,
        "-m",
        "imagenetfs.cli",
        "mount",
        "--source",
        str(args.data),
        "--index",
        str(index),
        str(mp),
    ]
    subprocess.run(cmd, check=True)
    try:
        pid = int(json.loads(registry.state_file(mp).read_text())["pid"])
        files = [os.path.join(d, f) for d, _, fs in os.walk(mp) for f in fs]
        print(f"command: {' '.join(sys.argv)}")
        print(f"{len(files):,} files, {args.readers} readers, daemon pid {pid}")
        print(f"after mount + walk: {_memory(pid)}\n")
        print("| epoch | files/s | MB/s | RSS | PSS | USS | PSS anonymous | PSS files | (MiB) |")
        print("|---|---|---|---|---|---|---|---|---|")
        rng = random.Random(0)
        with multiprocessing.Pool(args.readers) as pool:
            for epoch in range(1, args.epochs + 1):
                order = files[:]
                rng.shuffle(order)
                chunks = [order[i :: args.readers * 8] for i in range(args.readers * 8)]
                t = time.perf_counter()
                nbytes = sum(pool.map(read_all, chunks))
                dt = time.perf_counter() - t
                m = memory([pid])
                print(
                    f"| {epoch} | {len(files) / dt:,.0f} | {nbytes / dt / 1e6:,.0f} "
                    f"| {m['rss']:.1f} | {m['pss']:.1f} | {m['uss']:.1f} | {m['pss_anon']:.1f} "
                    f"| {m['pss_file']:.1f} | |",
                    flush=True,
                )
    finally:
        subprocess.run([sys.executable, "-m", "imagenetfs.cli", "umount", str(mp)], check=False)
        mp.rmdir()
    return 0


def _memory(pid: int) -> str:
    m = memory([pid])
    return (
        f"{int(m['procs'])} processes, RSS {m['rss']:.1f}, PSS {m['pss']:.1f} (anonymous "
        f"{m['pss_anon']:.1f}, files {m['pss_file']:.1f}), USS {m['uss']:.1f} MiB"
    )


if __name__ == "__main__":
    sys.exit(main())
