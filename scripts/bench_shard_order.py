#!/usr/bin/env python3
"""What the shuffled order of the shard view costs cold, against a contiguous one.

    scripts/bench_shard_order.py [--flavour gzip|noD-noF] [--mbps 200] [--read-ms 1] [--repeat 5]

The view deals train's samples to the shards in a global shuffle, so one shard is ~1,250
reads scattered over the images; `--shard-order contiguous` keeps path order, the images' own,
so a shard is one stretch of them. One pass over all train shards with the `webdataset`
library (8 readers, decoding off), cold (a fresh mount, the images evicted), both orders in
turn, in three places:

- local: the images on this machine's disk;
- share: the images behind scripts/storm/stormfs.c (benchlib/storm.py): a READ bandwidth cap
  (`--mbps`) and a round trip per READ (`--read-ms`), as a Lustre or NFS client pays;
- stage: the same share, mounted with `--stage` (the images copied to local disk while served).

Samples/s and the daemon's CPU seconds per 1,000 samples, medians of `--repeat`. Uses
bench_shards.py's quick set (2,000 realistic JPEGs, shards of 100; made on first use).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import _venv  # noqa: F401  (re-executes with the imagenetfs environment if needed)
from bench_shards import CLI, daemon_cpu, read_shards, status, timed
from benchlib import storm
from benchlib.contenders import evict

from imagenetfs import generate

ORDERS = {"shuffled": "wds", "contiguous": "wds-contiguous"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=Path("/var/tmp/imagenetfs-bench-shards"))
    p.add_argument("--flavour", choices=("gzip", "noD-noF"), default="gzip")
    p.add_argument("--mbps", type=float, default=200.0, help="the share's READ bandwidth")
    p.add_argument("--read-ms", type=float, default=1.0, help="the share's round trip per READ")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--places", default="local,share,stage")
    args = p.parse_args()
    import webdataset  # noqa: F401  (before the readers fork: see bench_shards.py)

    source = args.work / f"src-20x100-{args.flavour}"
    if not (source / "train.squashfs").is_file():
        mksquashfs = ("-noD", "-noF") if args.flavour == "noD-noF" else ()
        spec = generate.Spec(classes=20, train_per_class=100, val_per_class=0, test=0,
                             mksquashfs_args=mksquashfs)  # fmt: skip
        generate.generate(source, spec)
    index = args.work / f"index-plain-{args.flavour}.lmdb"
    if not index.exists():
        subprocess.run([CLI, "index", "-q", "--source", str(source), "--index", str(index)],
                       check=True)  # fmt: skip
    exe = storm.build(args.work)
    linked = storm.link_images(args.work, source)
    images = sorted(source.glob("*.squashfs"))
    mp = Path(tempfile.mkdtemp(prefix="bench-order-"))
    share_mp, stage = args.work / "mnt-share", args.work / "stage"
    config = storm.Config(delay_ms=0.5, inflight=4, read_mbps=args.mbps, read_ms=args.read_ms)
    rows: dict[str, list[tuple[float, float]]] = {}
    try:
        for _ in range(args.repeat):
            for place in args.places.split(","):
                for order, directory in ORDERS.items():
                    for image in images:
                        evict(image)
                    share = None
                    served, extra = source, []
                    if place != "local":
                        share = storm.Stormfs(exe, linked.parent, share_mp, config)
                        served = share_mp / source.name
                    if place == "stage":
                        shutil.rmtree(stage, ignore_errors=True)
                        stage.mkdir()
                        extra = ["--stage", str(stage)]
                    try:
                        subprocess.run([CLI, "mount", "--source", str(served), "--index",
                                        str(index), "--shards", "--shard-samples", "100",
                                        "--shard-order", order, *extra, str(mp)],
                                       check=True)  # fmt: skip
                        try:
                            view = mp / "shards" / directory
                            shards = sorted(str(s) for s in view.glob("imagenet1k-train-*.tar"))
                            pid = int(status(mp)["pid"])
                            cpu = daemon_cpu(pid)
                            seconds, samples = timed(read_shards, [shards[i::8] for i in range(8)])
                            cpu = (daemon_cpu(pid) - cpu) * 1000 / samples
                        finally:
                            subprocess.run([CLI, "umount", str(mp)], check=True)
                    finally:
                        if share is not None:
                            share.unmount()
                    rows.setdefault(f"{place} {order}", []).append((samples / seconds, cpu))
                    print(f"{place} {order}: {samples / seconds:,.0f} samples/s, "
                          f"{cpu:.2f} s daemon CPU per 1,000", flush=True)  # fmt: skip
    finally:
        if os.path.ismount(mp):
            subprocess.run([CLI, "umount", str(mp)])
        mp.rmdir()
    print(f"images: {args.flavour}; share: {args.mbps:g} MB/s, {args.read_ms:g} ms per READ; "
          f"8 readers, cold, medians of {args.repeat}")  # fmt: skip
    print("| place | order | samples/s | daemon CPU s per 1,000 |\n|---|---|---|---|")
    for key, values in rows.items():
        place, order = key.split()
        speed = statistics.median(v for v, _ in values)
        cpu = statistics.median(c for _, c in values)
        print(f"| {place} | {order} | {speed:,.0f} | {cpu:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
