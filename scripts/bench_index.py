#!/usr/bin/env python3
"""Benchmark the LMDB index and the SquashFS reader, without FUSE.

For each dataset (generated with the project's generator if missing), prints: index build time
and entries/s, index size on disk (bytes per file), index open time (with image verification),
lookup+getattr µs, readdir µs/entry, and read µs/file over a random sample of files.

    scripts/bench_index.py                       # full-entry-count --tiny, gzip and -noD -noF
    scripts/bench_index.py --quick               # 100 classes x 100 tiny files instead
    scripts/bench_index.py --work /var/tmp/bench --repeat 5

Medians over --repeat runs (build: over --build-repeat). Page cache is warm (no dropping):
these are CPU costs of our code, not of the disk.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from pathlib import Path

import _venv  # noqa: F401  (re-executes with the imagenetfs environment if needed)

from imagenetfs import generate, index, source
from imagenetfs.index import Index

VARIANTS = {"gzip": "", "noD-noF": "-noD -noF"}


def dataset(work: Path, name: str, args: str, quick: bool) -> Path:
    out = work / f"{'quick' if quick else 'full'}-tiny-{name}"
    if not (out / "train.squashfs").is_file():
        spec = (
            generate.Spec(classes=100, train_per_class=100, tiny=True)
            if quick
            else generate.Spec(tiny=True, test=100_000)
        )
        spec = generate.Spec(**{**spec.__dict__, "mksquashfs_args": tuple(args.split())})
        print(f"generating {out} ...", file=sys.stderr)
        generate.generate(out, spec)
    return out


def median_time(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench(data: Path, repeat: int, build_repeat: int, sample: int) -> dict[str, float]:
    src = source.open_source(data)
    path = data / "bench-index.lmdb"

    def build() -> None:
        index.build(path, src.image_list, src.placer(), progress=False)

    build_s = median_time(build, build_repeat)
    opened = Index.open(path)
    stats = opened.stats
    opened.close()
    open_s = median_time(lambda: Index.open(path).close(), repeat)

    with Index.open(path) as ix:
        files: list[tuple[int, bytes]] = []
        t = time.perf_counter()
        entries = 0
        stack = [index.ROOT_INO]
        while stack:
            ino = stack.pop()
            for node in ix.readdir(ino):
                entries += 1
                if node.kind == index.DIR:
                    stack.append(node.ino)
                else:
                    files.append((ino, node.name))
        readdir_us = (time.perf_counter() - t) / entries * 1e6
        rng = random.Random(0)
        picked = rng.sample(files, min(sample, len(files)))

        def lookups() -> None:
            for parent, name in picked:
                ix.getattr(ix.lookup(parent, name).ino)

        lookup_us = median_time(lookups, repeat) / len(picked) * 1e6
        nodes = [ix.lookup(parent, name) for parent, name in picked]

        def reads() -> None:
            for node in nodes:
                ix.read(node, 0, node.size)

        read_us = median_time(reads, repeat) / len(nodes) * 1e6
    return {
        "files": stats.files,
        "entries": stats.entries,
        "build_s": build_s,
        "entries_per_s": stats.entries / build_s,
        "index_mb": path.stat().st_size / 1e6,
        "bytes_per_file": path.stat().st_size / stats.files,
        "open_ms": open_s * 1e3,
        "lookup_getattr_us": lookup_us,
        "readdir_us": readdir_us,
        "read_us": read_us,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/var/tmp/imagenetfs-bench"))
    p.add_argument("--quick", action="store_true", help="10k tiny files instead of 1.43M")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--build-repeat", type=int, default=3)
    p.add_argument("--sample", type=int, default=20_000, help="files for lookup/read timings")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, mk_args in VARIANTS.items():
        data = dataset(args.work, name, mk_args, args.quick)
        rows[name] = bench(data, args.repeat, args.build_repeat, args.sample)
    print(f"command: {' '.join(sys.argv)}")
    print(f"medians of {args.repeat} runs (build: {args.build_repeat}); warm page cache\n")
    keys = list(next(iter(rows.values())))
    print("| metric | " + " | ".join(rows) + " |")
    print("|---|" + "---|" * len(rows))
    for key in keys:
        cells = [
            f"{r[key]:,.1f}" if isinstance(r[key], float) else f"{r[key]:,}" for r in rows.values()
        ]
        print(f"| {key} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
