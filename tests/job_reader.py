"""Stands in for training in the Slurm tests: reads every file of $IMAGENET the way
torchvision's ImageFolder / ImageNet find them (sorted class directories, sorted files, the
label = the class's position) and checks each file's bytes against a manifest.

    python job_reader.py MANIFEST [--hold SECONDS]

MANIFEST: JSON, file name -> sha256 of its bytes (names are unique in ImageNet). `--hold`:
read the tree again until that many seconds have passed (a job that trains for a while).
Prints one line "ok: N files, M bytes, labels L, P passes, R MB/s" (R: the rate over all
passes) and exits 0, or names what is wrong and exits 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
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
    parser = argparse.ArgumentParser()
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--hold", type=float, default=0.0)
    args = parser.parse_args()
    manifest = json.loads(args.manifest.read_text())
    root = Path(os.environ["IMAGENET"])
    started = time.monotonic()
    passes = read = 0
    while True:
        found = samples(root)
        total = 0
        for path, _label in found:
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != manifest.get(path.name):
                print(f"wrong bytes: {path}", flush=True)
                return 1
            total += len(data)
        passes, read = passes + 1, read + total
        if len(found) != len(manifest):
            print(f"{len(found)} files, the manifest has {len(manifest)}", flush=True)
            return 1
        if time.monotonic() - started >= args.hold:
            break
    rate = read / 1e6 / (time.monotonic() - started)
    labels = len({label for _, label in found if label >= 0})
    print(
        f"ok: {len(found)} files, {total} bytes, labels {labels}, {passes} passes, {rate:.1f} MB/s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
