#!/usr/bin/env python3
"""What a page-cache-warm epoch still asks of the daemon, and what it costs (issue 16, part 3).

    scripts/bench_warm.py [--set DIR] [--rounds 5] [--out FILE.md]

Mounts one image set (default: the `--quick` read set of scripts/bench.py with `-noD -noF`
images) twice -- imagenetfs (worker processes, the code of this checkout) and the kernel's
own squashfs (loop mounts of the three images; needs root) -- warms both with one epoch, then
times warm epochs of 8 reader processes over the train and val files, in rounds that
alternate the order of the mounts. Two kinds of readers, both reading each file whole:

- `open(p, 'rb')` -- the benchmark's readers, and PIL's: Python before 3.14 calls `isatty()`
  on every file it opens with default buffering, one TCGETS ioctl, which the kernel sends to
  a FUSE daemon every time (fs/fuse/ioctl.c keeps no note of a daemon that has none);
- `open(p, 'rb', buffering=N)` -- an explicit buffer size skips that `isatty()` (CPython since
  3.8), which is what Python 3.14's `open()` does by default for regular files (gh-90102).

For imagenetfs it also prints the requests each warm epoch sent, per file, from the mount's
own counters (`imagenetfs status --json`).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import _venv  # noqa: F401  (re-executes with the imagenetfs environment if needed)

from imagenetfs.supervisor import PUBLISH_INTERVAL

WORK = Path("/var/tmp/imagenetfs-bench")
READERS = 8
BUFFER = 1 << 17


def read(job: tuple[list[str], int]) -> int:
    paths, buffering = job
    total = 0
    for path in paths:
        with open(path, "rb", buffering=buffering) as f:
            total += len(f.read())
    return total


def epoch(pool: Pool, paths: list[str], buffering: int) -> float:  # type: ignore[type-arg]
    order = paths[:]
    random.shuffle(order)
    started = time.perf_counter()
    pool.map(read, [(order[i::READERS], buffering) for i in range(READERS)])
    return time.perf_counter() - started


def imagenetfs(*args: str, capture: bool = False) -> str:
    cmd = [sys.executable, "-m", "imagenetfs.cli", *args]
    done = subprocess.run(cmd, check=True, text=True, capture_output=capture, cwd="/")
    return done.stdout if capture else ""


def requests(mountpoint: Path) -> dict[str, int]:
    """The mount's request counts, as its supervisor last published them (it does every
    `PUBLISH_INTERVAL` seconds: waited for first)."""
    time.sleep(PUBLISH_INTERVAL + 0.5)
    doc = json.loads(imagenetfs("status", "--json", str(mountpoint), capture=True))
    mount = doc[0] if isinstance(doc, list) else doc
    return dict(mount["requests"])


def files(setdir: Path, top: Path, kernel: bool) -> list[str]:
    """train/<wnid>/<f> and val files, as each mount names them."""
    out = [str(top / "train" / r) for r in (setdir / "train_files.txt").read_text().split()]
    labels = dict(line.split() for line in (setdir / "val_labels.txt").read_text().splitlines())
    for name in (setdir / "val_files.txt").read_text().split():
        out.append(str(top / "val" / name) if kernel else str(top / "val" / labels[name] / name))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--set", type=Path, default=WORK / "quick5k-real-noD-noF")
    p.add_argument("--index", type=Path, help="(default: <work>/index/<set>.lmdb)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, help="also write the table here (markdown)")
    a = p.parse_args()
    index = a.index or WORK / "index" / f"{a.set.name}.lmdb"
    times: dict[tuple[str, str], list[float]] = {}
    per_file: dict[str, list[dict[str, float]]] = {"open(p, 'rb')": [], "buffering=N": []}
    readers = {"open(p, 'rb')": -1, "buffering=N": BUFFER}
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp, Pool(READERS) as pool:
        inet, kern = Path(tmp, "inet"), Path(tmp, "kernel")
        inet.mkdir()
        for split in ("train", "val", "test"):
            (kern / split).mkdir(parents=True)
        imagenetfs("mount", str(inet), "--source", str(a.set), "--index", str(index))
        try:
            for split in ("train", "val", "test"):
                image = a.set / f"{split}.squashfs"
                cmd = ["mount", "-t", "squashfs", "-o", "loop,ro", str(image), str(kern / split)]
                subprocess.run(cmd, check=True)
            mounts = {"imagenetfs": files(a.set, inet, False), "kernel": files(a.set, kern, True)}
            for paths in mounts.values():
                epoch(pool, paths, -1)  # warm the page cache (and the dentries)
            for r in range(a.rounds):
                order = list(mounts) if r % 2 == 0 else list(mounts)[::-1]
                for name in order:
                    for kind, buffering in readers.items():
                        before = requests(inet) if name == "imagenetfs" else {}
                        t = epoch(pool, mounts[name], buffering)
                        times.setdefault((name, kind), []).append(t)
                        if before:
                            after = requests(inet)
                            n = len(mounts[name])
                            asked = {k: (after[k] - v) / n for k, v in before.items()}
                            per_file[kind].append(asked)
        finally:
            imagenetfs("umount", str(inet))
            for split in ("train", "val", "test"):
                subprocess.run(["umount", str(kern / split)], check=False)
    n = len(mounts["kernel"])
    lines = [
        f"Warm epochs, {READERS} readers, {n} files of {a.set.name}, medians of {a.rounds} "
        f"interleaved rounds (`scripts/bench_warm.py --set {a.set} --rounds {a.rounds}`):",
        "",
        "| readers | imagenetfs (s) | kernel squashfs (s) | imagenetfs speed / kernel's | "
        "requests per file (imagenetfs) |",
        "|---|---|---|---|---|",
    ]
    for kind in readers:
        ours = statistics.median(times[("imagenetfs", kind)])
        theirs = statistics.median(times[("kernel", kind)])
        counts = {k: statistics.median(d[k] for d in per_file[kind]) for k in per_file[kind][0]}
        asked = ", ".join(f"{k} {v:.2f}" for k, v in counts.items() if v) or "none"
        lines.append(f"| `{kind}` | {ours:.3f} | {theirs:.3f} | {theirs / ours:.2f}x | {asked} |")
    rounds = {f"{m} {k}": [round(t, 3) for t in v] for (m, k), v in times.items()}
    lines += ["", "Each round, in seconds: " + json.dumps(rounds)]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
