#!/usr/bin/env python3
"""The FUSE floor: serve a directory's files through floorfs.c, the least a FUSE filesystem
can do, to measure what this kernel charges any FUSE filesystem per file.

    scripts/bench/floor.py TREE WORK MOUNTPOINT [-t THREADS]   # pack TREE, build, mount
    fusermount3 -u MOUNTPOINT                                  # unmount

TREE's files (sorted paths, symlinks and other non-regular files left out) are written one
after the other into WORK/floor.data with their list in WORK/floor.manifest; floorfs is
compiled into WORK/floorfs on first use (gcc, libfuse3's headers) and mounted at MOUNTPOINT,
serving TREE's tree with imagenetfs's protocol choices (see floorfs.c). scripts/bench.py uses
`pack`, `build` and `argv` to serve the floor as a contender (benchlib/contenders.py:
`Floor`), in the foreground, beside every epoch.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().with_name("floorfs.c")


def pack(tree: Path, work: Path) -> tuple[Path, Path]:
    """TREE's regular files into (DATA, MANIFEST) under WORK; reused when already there."""
    data, manifest = work / "floor.data", work / "floor.manifest"
    if data.exists() and manifest.exists():
        return data, manifest
    work.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    with open(f"{data}.tmp", "wb") as out, open(f"{manifest}.tmp", "w") as listing:
        for path in files:
            rel = str(path.relative_to(tree))
            if "\t" in rel or "\n" in rel:
                continue
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                shutil.copyfileobj(f, out, 1 << 20)
            listing.write(f"{rel}\t{size}\n")
    os.rename(f"{data}.tmp", data)
    os.rename(f"{manifest}.tmp", manifest)
    return data, manifest


def build(work: Path) -> Path:
    """floorfs, compiled into WORK (again when floorfs.c is newer)."""
    binary = work / "floorfs"
    if binary.exists() and binary.stat().st_mtime >= SOURCE.stat().st_mtime:
        return binary
    work.mkdir(parents=True, exist_ok=True)
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True, check=True
    ).stdout.split()
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-pthread", "-o", str(binary), str(SOURCE), *flags],
        check=True,
        timeout=120,
    )
    return binary


def argv(
    binary: Path, data: Path, manifest: Path, mountpoint: Path, threads: int = 2, fg: bool = False
) -> list[str]:
    """The command that serves DATA at MOUNTPOINT (`fg`: in the foreground, so that the caller
    knows the server's pid and can read its CPU time, as scripts/bench.py does)."""
    return [
        str(binary),
        "-t",
        str(threads),
        *(["-f"] if fg else []),
        str(data),
        str(manifest),
        str(mountpoint),
    ]


def mount(binary: Path, data: Path, manifest: Path, mountpoint: Path, threads: int = 2) -> None:
    """Mount; returns once the tree is served (floorfs daemonizes after mounting)."""
    subprocess.run(argv(binary, data, manifest, mountpoint, threads), check=True, timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tree", type=Path)
    parser.add_argument("work", type=Path)
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("-t", "--threads", type=int, default=2)
    args = parser.parse_args()
    data, manifest = pack(args.tree, args.work)
    mount(build(args.work), data, manifest, args.mountpoint, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
