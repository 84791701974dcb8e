"""Stands in for training in the Slurm tests: reads every file of $IMAGENET the way
torchvision's ImageFolder / ImageNet find them (sorted class directories, sorted files, the
label = the class's position) and checks each file's bytes against a manifest.

    python job_reader.py MANIFEST [--hold SECONDS] [--stagger SECONDS] [--shard]

MANIFEST: JSON, file name -> sha256 of its bytes (names are unique in ImageNet). `--hold`:
read the tree again until that many seconds have passed (a job that trains for a while);
`--stagger`: each task of a node reads that much longer than the one before it
($SLURM_LOCALID), so the tasks of a node end at different times; `--shard`: read only this
task's share of the files, as DistributedSampler gives them (rank $SLURM_PROCID of
$SLURM_NTASKS: every WORLD-th file from the RANK-th, of a seeded permutation).
Prints one line "ok: N files, M bytes, labels L, P passes, R MB/s, node NODE rank R/W"
(R: the rate over all passes) and exits 0, or names what is wrong and exits 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path


def samples(root: Path) -> list[tuple[Path, int]]:
    """(path, label) of train/ and val/ like ImageFolder, then test/ with label -1."""
    out = []
    for split in ("train", "val"):
        classes = sorted(e.name for e in os.scandir(root / split) if e.is_dir())
        for label, wnid in enumerate(classes):
            for name in sorted(os.listdir(root / split / wnid)):
                out.append((root / split / wnid / name, label))
    out += [(root / "test" / name, -1) for name in sorted(os.listdir(root / "test"))]
    return out


def main() -> int:
    try:
        return read()
    except OSError as e:  # the mount failed under us: one line, as training would say it
        node = os.environ.get("SLURMD_NODENAME", "-")
        rank = os.environ.get("SLURM_PROCID", "0")
        print(f"error: node {node} rank {rank}: {e.filename}: {e.strerror}", flush=True)
        return 1


def read() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--hold", type=float, default=0.0)
    parser.add_argument("--stagger", type=float, default=0.0)
    parser.add_argument("--shard", action="store_true")
    args = parser.parse_args()
    manifest = json.loads(args.manifest.read_text())
    root = Path(os.environ["IMAGENET"])
    rank, world = int(os.environ.get("SLURM_PROCID", 0)), int(os.environ.get("SLURM_NTASKS", 1))
    hold = args.hold + args.stagger * int(os.environ.get("SLURM_LOCALID", 0))
    started = time.monotonic()
    passes = read = 0
    while True:
        found = samples(root)
        share = found
        if args.shard:
            order = list(range(len(found)))
            random.Random(0).shuffle(order)
            share = [found[i] for i in order[rank::world]]
        total = 0
        for path, _label in share:
            try:
                data = path.read_bytes()
            except OSError as e:  # (a read of an open file names no file)
                raise OSError(e.errno, e.strerror, str(path)) from None
            if hashlib.sha256(data).hexdigest() != manifest.get(path.name):
                print(f"wrong bytes: {path}", flush=True)
                return 1
            total += len(data)
        passes, read = passes + 1, read + total
        if len(found) != len(manifest):
            print(f"{len(found)} files, the manifest has {len(manifest)}", flush=True)
            return 1
        if time.monotonic() - started >= hold:
            break
    rate = read / 1e6 / (time.monotonic() - started)
    labels = len({label for _, label in share if label >= 0})
    node = os.environ.get("SLURMD_NODENAME", "-")
    print(
        f"ok: {len(share)} files, {total} bytes, labels {labels}, {passes} passes, "
        f"{rate:.1f} MB/s, node {node} rank {rank}/{world}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
