#!/usr/bin/env python3
"""Two versions of imagenetfs, A and B, on the same data, interleaved: did a change move them?

    scripts/bench_ab.py --a SRC_A --b SRC_B [--repeat 10] [--variant noD-noF] [--only meta]
                        [--b-option=--metrics=/tmp/b.prom]... [--alternate]

SRC_A and SRC_B are directories holding an `imagenetfs` package (e.g. `git archive` snapshots
of two commits). Each round mounts A, then B, on the `--quick` sets of scripts/bench.py
(generated on first use into `--work`), and measures on each fresh mount, caches dropped:

- `meta`: `os.walk` of the 100,000-entry tiny set, then `os.stat` of every file (one LOOKUP
  each: the request path of the worker processes);
- `reads`: an epoch of the 5,000 realistic files with 8 reader processes, cold, then warm.

Single runs of scripts/bench.py move by ±15% on this kind of shared machine; interleaving A and
B and taking medians of many rounds shows shifts of a few percent. Prints each round and the
medians, B ÷ A (above 1: B is slower). `--b-option` gives B's mounts an option A may not know.
The second of a pair can be favoured (an A/A run of 12 rounds here read 0.944 on cold epochs):
`--alternate` runs B first in every other round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _venv  # noqa: F401  (re-executes with the imagenetfs environment if needed)
from benchlib import contenders as C
from benchlib import data
from benchlib.workloads import Readers, stat_all, walk


def mount(
    src: Path, setdir: Path, work: Path, mp: Path, extra: list[str] | None = None
) -> C.Imagenetfs:
    contender = C.Imagenetfs(work, src)
    mp.mkdir(parents=True, exist_ok=True)
    index = contender.index_path(setdir)
    cmd = [*contender.cmd, "mount", "--source", str(setdir), "--index", str(index)]
    cmd += [*(extra or []), str(mp)]
    result = subprocess.run(cmd, env=contender.env, cwd=contender.cwd, capture_output=True)
    if result.returncode != 0 and b"--rebuild" in result.stderr:  # another schema's index
        contender.forget_index(setdir)
        result = subprocess.run(cmd, env=contender.env, cwd=contender.cwd, capture_output=True)
    if result.returncode != 0:
        raise SystemExit(f"mount of {src} failed: {result.stderr.decode(errors='replace')}")
    return contender


def umount(contender: C.Imagenetfs, mp: Path) -> None:
    cmd = [*contender.cmd, "umount", str(mp)]
    subprocess.run(cmd, env=contender.env, cwd=contender.cwd, check=True, capture_output=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--a", type=Path, required=True, help="imagenetfs source of version A")
    p.add_argument("--b", type=Path, required=True, help="imagenetfs source of version B")
    p.add_argument("--work", type=Path, default=Path("/var/tmp/imagenetfs-bench"))
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--variant", default="noD-noF", choices=sorted(data.VARIANTS))
    p.add_argument("--only", choices=["meta", "reads"], help="one of the two workloads")
    p.add_argument(
        "--b-option", action="append", default=[], metavar="OPTION", help="a mount option of B"
    )
    p.add_argument("--alternate", action="store_true", help="B first in every other round")
    args = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_ab.py: needs root (it drops the page cache between runs)")
    versions = {"A": args.a.resolve(), "B": args.b.resolve()}
    meta = data.ensure(args.work, data.QUICK_META, [args.variant])[args.variant]
    reads = data.ensure(args.work, data.QUICK_READ, [args.variant])[args.variant]
    mp = args.work / "mnt" / "ab"
    readers = Readers(8)
    rows: dict[str, dict[str, list[float]]] = {v: {} for v in versions}
    try:
        for rep in range(args.repeat):
            order = list(versions.items())
            for name, src in reversed(order) if args.alternate and rep % 2 else order:
                got = rows[name]
                extra = args.b_option if name == "B" else []
                if args.only != "reads":
                    C.drop_caches()
                    contender = mount(src, meta, args.work, mp, extra)
                    t_walk, _ = walk([mp / s for s in data.SPLITS])
                    paths = [os.path.join(d, f) for d, _, fs in os.walk(mp) for f in fs]
                    t_stat = stat_all(paths)
                    umount(contender, mp)
                    got.setdefault("walk", []).append(t_walk)
                    got.setdefault("stat", []).append(t_stat)
                if args.only != "meta":
                    C.drop_caches()
                    contender = mount(src, reads, args.work, mp, extra)
                    paths = [
                        os.path.join(d, f)
                        for s in data.SPLITS
                        for d, _, fs in os.walk(mp / s)
                        for f in fs
                    ]
                    cold, _ = readers.epoch(paths, 8, rep)
                    warm, _ = readers.epoch(paths, 8, rep + 1000)
                    umount(contender, mp)
                    got.setdefault("epoch cold", []).append(cold)
                    got.setdefault("epoch warm", []).append(warm)
                line = "  ".join(f"{k} {v[-1]:.3f}" for k, v in got.items())
                print(f"{time.strftime('%H:%M:%S')} round {rep + 1} {name}: {line}", flush=True)
    finally:
        readers.close()
    print(f"\nmedians of {args.repeat} rounds, {args.variant} images (seconds):")
    for row in rows["A"]:
        a, b = statistics.median(rows["A"][row]), statistics.median(rows["B"][row])
        print(f"  {row:12} A {a:.3f}  B {b:.3f}  B/A {b / a:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
