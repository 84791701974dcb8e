#!/usr/bin/env python3
"""Daemon memory across epochs: mount, read every file N times, print RSS and files/s.

    scripts/bench_rss.py                         # 100 classes x 100 realistic, 3 epochs, 8 readers
    scripts/bench_rss.py --data DIR --epochs 5 --readers 4

Each epoch reads every file whole, in a fresh random order, from `--readers` processes. After
each epoch the daemon's VmRSS and VmHWM (peak) are read from /proc. The first epoch fetches
from the images; later ones mostly hit the kernel's page cache (keep_cache), so the daemon only
sees LOOKUP/OPEN/RELEASE -- what matters is that its memory does not grow with the epochs.
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

from imagenetfs import generate, registry


def read_all(paths: list[str]) -> int:
    total = 0
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                total += len(chunk)
    return total


def memory(pid: int) -> tuple[float, float]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("/var/tmp/imagenetfs-bench/real-100x100"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--readers", type=int, default=8)
    args = p.parse_args()
    if not (args.data / "train.squashfs").is_file():
        print(f"generating {args.data} ...", file=sys.stderr)
        generate.generate(args.data, generate.Spec(classes=100, train_per_class=100))
    mp = Path(tempfile.mkdtemp(prefix="imagenetfs-rss-"))
    index = args.data / "bench-rss.lmdb"
    cmd = ["imagenetfs", "mount", "--source", str(args.data), "--index", str(index), str(mp)]
    subprocess.run(cmd, check=True)
    try:
        pid = int(json.loads(registry.state_file(mp).read_text())["pid"])
        files = [os.path.join(d, f) for d, _, fs in os.walk(mp) for f in fs]
        print(f"command: {' '.join(sys.argv)}")
        print(f"{len(files):,} files, {args.readers} readers, daemon pid {pid}")
        rss0, _ = memory(pid)
        print(f"after mount + walk: RSS {rss0:.1f} MiB\n")
        print("| epoch | files/s | MB/s | daemon RSS MiB | peak RSS MiB |")
        print("|---|---|---|---|---|")
        rng = random.Random(0)
        with multiprocessing.Pool(args.readers) as pool:
            for epoch in range(1, args.epochs + 1):
                order = files[:]
                rng.shuffle(order)
                chunks = [order[i :: args.readers * 8] for i in range(args.readers * 8)]
                t = time.perf_counter()
                nbytes = sum(pool.map(read_all, chunks))
                dt = time.perf_counter() - t
                rss, peak = memory(pid)
                print(
                    f"| {epoch} | {len(files) / dt:,.0f} | {nbytes / dt / 1e6:,.0f} "
                    f"| {rss:.1f} | {peak:.1f} |"
                )
    finally:
        subprocess.run(["imagenetfs", "umount", str(mp)], check=False)
        mp.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
