#!/usr/bin/env python3
"""Resized views: images/s side by side, one run, on the realistic generated data.

    scripts/bench_resize.py                          # 64x64 and 256, 2000 train files
    scripts/bench_resize.py --spec 64x64 --files 5000 --data DIR

For each spec, over the same files in the same random order:
  (a) naive Pillow in one process: open, full decode, resize, encode (quality 90);
  (b) imagenetfs, first access through the mount (fresh cache), 1 and 8 reader processes;
  (c) imagenetfs, cache hit: remounted with the same cache, 8 readers;
  (d) original files through the mount, 8 readers (the page cache holds the images).
Medians over --repeat runs. Ratios as in issue 5: (b1)/(a), (c)/(d).
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _venv  # noqa: F401  (re-executes with the imagenetfs environment if needed)
from benchlib.workloads import read_all
from PIL import Image

from imagenetfs import generate
from imagenetfs.views.resize import parse_spec


def naive(paths: list[str], spec_text: str) -> None:
    spec = parse_spec(spec_text)
    for p in paths:
        with Image.open(p) as img:
            rgb = img.convert("RGB")
        target = spec.target(*rgb.size) or rgb.size
        rgb.resize(target, Image.Resampling.BILINEAR).save(io.BytesIO(), "JPEG", quality=90)


def timed_reads(paths: list[str], readers: int) -> float:
    """Images/s reading `paths` whole with `readers` processes."""
    chunks = [paths[i::readers] for i in range(readers)]
    start = time.perf_counter()
    if readers == 1:
        read_all(paths)
    else:
        with multiprocessing.get_context("fork").Pool(readers) as pool:
            pool.map(read_all, chunks)
    return len(paths) / (time.perf_counter() - start)


class Mount:
    def __init__(self, data: Path, spec: str, cache: Path) -> None:
        self.mp = Path(tempfile.mkdtemp(prefix="imagenetfs-bench-resize-"))
        index = data / "bench-resize.lmdb"
        subprocess.run(
            ["imagenetfs", "mount", "--source", str(data), "--index", str(index),
             "--resize", spec, "--cache-dir", str(cache), str(self.mp)],
            check=True,
        )  # fmt: skip

    def close(self) -> None:
        subprocess.run(["imagenetfs", "umount", "--lazy", str(self.mp)], check=False)
        self.mp.rmdir()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("/var/tmp/imagenetfs-bench/real-100x100"))
    p.add_argument("--spec", action="append", help="default: 64x64 and 256")
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--readers", type=int, default=8)
    args = p.parse_args()
    specs = args.spec or ["64x64", "256"]
    if not (args.data / "train.squashfs").is_file():
        print(f"generating {args.data} ...", file=sys.stderr)
        generate.generate(args.data, generate.Spec(classes=100, train_per_class=100))

    index = args.data / "bench-resize.lmdb"
    check = ["imagenetfs", "index", "--source", str(args.data), "--index", str(index)]
    if subprocess.run(check, capture_output=True).returncode != 0:  # e.g. an older schema
        subprocess.run([*check, "--rebuild"], check=True)

    print(f"command: {' '.join(sys.argv)}")
    print(f"{os.cpu_count()} cores; {args.files} train files; medians of {args.repeat} runs\n")
    print(
        "| spec | (a) naive Pillow, 1 proc | (b) first access, 1 reader | (b) 8 readers "
        "| (c) cache hit, 8 readers | (d) originals, 8 readers | (b1)/(a) | (c)/(d) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for spec in specs:
        runs: dict[str, list[float]] = {k: [] for k in ("a", "b1", "b8", "c", "d")}
        for _ in range(args.repeat):
            cache = Path(tempfile.mkdtemp(prefix="imagenetfs-bench-cache-"))
            try:
                first = Mount(args.data, spec, cache)
                try:
                    rel = sorted(
                        os.path.relpath(os.path.join(d, f), first.mp)
                        for d, _, fs in os.walk(first.mp / "train")
                        for f in fs
                    )
                    random.Random(0).shuffle(rel)
                    rel = rel[: args.files]
                    originals = [str(first.mp / r) for r in rel]
                    half = len(rel) // 2
                    resized = [str(first.mp / "resized" / spec / r) for r in rel]
                    read_all(originals)  # (a) decodes from the page cache, like (d) reads
                    start = time.perf_counter()
                    naive(originals, spec)
                    runs["a"].append(len(originals) / (time.perf_counter() - start))
                    runs["b1"].append(timed_reads(resized[:half], 1))
                    runs["b8"].append(timed_reads(resized[half:], args.readers))
                finally:
                    first.close()
                again = Mount(args.data, spec, cache)
                try:
                    runs["c"].append(
                        timed_reads([str(again.mp / "resized" / spec / r) for r in rel],
                                    args.readers)
                    )  # fmt: skip
                    runs["d"].append(timed_reads([str(again.mp / r) for r in rel], args.readers))
                finally:
                    again.close()
            finally:
                shutil.rmtree(cache)
        m = {k: statistics.median(v) for k, v in runs.items()}
        print(
            f"| {spec} | {m['a']:,.0f} | {m['b1']:,.0f} | {m['b8']:,.0f} | {m['c']:,.0f} "
            f"| {m['d']:,.0f} | {m['b1'] / m['a']:.2f}× | {m['c'] / m['d']:.2f}× |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
