#!/usr/bin/env python3
"""Index build over the official tars (issue 15): ratarmount against imagenetfs, same run.

    scripts/bench_tar_index.py                        # full-tiny-official, 3 rounds
    scripts/bench_tar_index.py --repeat 1 --together  # and all three tars at once
    scripts/bench_tar_index.py --set quick100k-tiny-official --who ratarmount

The set is an official layout made by the generator (`<work>/<set>`: see benchlib/data.py;
`make_fake_imagenet.py OUT --layout official --full --tiny` for the full entry count).
Each round, caches dropped before each measurement (root; else said so):

- ratarmount, each tar on its own, as a user serves ImageNet's downloads with it:
  `ratarmount -f --recursive --index-folders <work>/ratarmount-index/<set> TAR MP` (its
  defaults otherwise: one decoder, no hashes, recursive tars named `<wnid>.tar/`), timed from
  the start until the tar's first member stats through the mount: ratarmount indexes, writes
  its index, then mounts (and, recursive, walks every indexed file for archives to mount
  before the mount shows: on every mount). Its index removed before, unmounted after; then
  mounted again with that index, timed the same way (mount ready, built index). And the index
  alone: `ratarmount --recursive --no-mount --index-folders ... TAR` until it exits;
- with --together: the three tars at once, one daemon each (what scripts/bench.py's
  ratarmount-tar does), until all three are ready;
- imagenetfs: `imagenetfs index -q --source <set> --index <work>/index/tar-index-<set>.lmdb`,
  from scratch, once imagenetfs serves the tars (asked of a probe set first; else reported
  unavailable).

Prints a table (per tar and in total, medians, load average before each measurement) and
writes the measurements to --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _venv  # noqa: F401  (re-executes with the imagenetfs environment if needed)
from benchlib import contenders as C
from benchlib import data


def note(msg: str) -> None:
    print(f"tar-index {time.strftime('%H:%M:%S')}: {msg}", file=sys.stderr, flush=True)


def load() -> float:
    return round(os.getloadavg()[0], 2)


class Ratarmount:
    def __init__(self, work: Path, setdir: Path) -> None:
        venv, problem = C.bench_venv(work)
        if problem:
            raise SystemExit(f"ratarmount: {problem}")
        self.exe = venv / "bin" / "ratarmount"
        self.folder = work / "ratarmount-index" / setdir.name
        self.setdir = setdir
        self.mnt = work / "mnt" / "tar-index"
        self.log = work / "logs" / "tar-index-ratarmount.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)

    def argv(self, split: str) -> list[str]:
        tar = data.tar_of(self.setdir, split)
        mp = self.mnt / split
        opts = ["-f", "--recursive", "--index-folders", str(self.folder)]
        return [str(self.exe), *opts, str(tar), str(mp)]

    def index_only(self, split: str) -> float:
        """Seconds for `ratarmount --recursive --no-mount ... TAR`: the index, written."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tar = data.tar_of(self.setdir, split)
        argv = [str(self.exe), "--recursive", "--no-mount", "--index-folders", str(self.folder)]
        t = time.perf_counter()
        with self.log.open("ab") as out:
            subprocess.run([*argv, str(tar)], stdout=out, stderr=out, check=True)
        return time.perf_counter() - t

    def index_files(self) -> list[Path]:
        return sorted(self.folder.glob("*.index.sqlite")) if self.folder.is_dir() else []

    def forget(self) -> None:
        for p in self.index_files():
            p.unlink()

    def mount(self, splits: Sequence[str]) -> float:
        """Seconds from starting one daemon per split until each one's tree shows."""
        self.folder.mkdir(parents=True, exist_ok=True)
        procs = []
        probes = []
        t = time.perf_counter()
        try:
            with self.log.open("ab") as out:
                for s in splits:
                    (self.mnt / s).mkdir(parents=True, exist_ok=True)
                    procs.append(subprocess.Popen(self.argv(s), stdout=out, stderr=out))
                    probes.append(self.mnt / s / C.first_member(data.tar_of(self.setdir, s)))
            C.wait_ready(probes, procs, self.log)
            return time.perf_counter() - t
        finally:
            for s in splits:
                if os.path.ismount(self.mnt / s):
                    subprocess.run(["fusermount3", "-u", str(self.mnt / s)], capture_output=True)
            for p in procs:
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def imagenetfs_index(inet: C.Imagenetfs, setdir: Path, index: Path) -> float:
    index.parent.mkdir(parents=True, exist_ok=True)
    index.unlink(missing_ok=True)
    cmd = [*inet.cmd, "index", "-q", "--source", str(setdir), "--index", str(index)]
    t = time.perf_counter()
    r = subprocess.run(cmd, env=inet.env, cwd=inet.cwd, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)}: {r.stderr.strip()[-300:]}")
    return dt


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/var/tmp/imagenetfs-bench"))
    p.add_argument("--set", default="full-tiny-official", help="official set under --work")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--who", default="ratarmount,imagenetfs")
    p.add_argument("--together", action="store_true", help="ratarmount: also all tars at once")
    p.add_argument("--imagenetfs-src", type=Path, help="as scripts/bench.py's")
    p.add_argument("--out", type=Path, help="measurements as JSON")
    args = p.parse_args()
    setdir = args.work / args.set
    if not all(data.tar_of(setdir, s).is_file() for s in data.SPLITS):
        raise SystemExit(f"{setdir}: not an official set (no ILSVRC2012_img_*.tar)")
    who = args.who.split(",")
    rat = Ratarmount(args.work, setdir)
    inet = C.ImagenetfsTar(args.work, args.imagenetfs_src)
    why = inet.unavailable() if "imagenetfs" in who else None
    if why:
        note(f"imagenetfs: unavailable: {why}")
    index = args.work / "index" / f"tar-index-{setdir.name}.lmdb"
    runs: list[dict[str, Any]] = []
    doc: dict[str, Any] = {
        "command": "scripts/bench_tar_index.py " + shlex.join(sys.argv[1:]),
        "set": str(setdir),
        "tar_bytes": {s: data.tar_of(setdir, s).stat().st_size for s in data.SPLITS},
        "ratarmount": {s: shlex.join(rat.argv(s)) for s in data.SPLITS},
        "imagenetfs_unavailable": why,
        "nproc": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "runs": runs,
    }
    dropped = True

    def measure(what: str, fn: Any) -> None:
        nonlocal dropped
        dropped = C.drop_caches() and dropped
        before = load()
        try:
            v = fn()
        except (RuntimeError, OSError, C.MountFailed, subprocess.SubprocessError) as e:
            note(f"{what}: FAILED: {e}")
            runs.append({"what": what, "error": str(e), "load_before": before})
            return
        runs.append({"what": what, "s": v, "load_before": before, "load_after": load()})
        note(f"{what}: {v:.2f} s (load average {before} before, {load()} after)")

    for r in range(args.repeat):
        note(f"round {r + 1} of {args.repeat}")
        if "ratarmount" in who:
            for s in data.SPLITS:
                rat.forget()
                measure(f"ratarmount {s}: index alone (--no-mount)", lambda s=s: rat.index_only(s))
                rat.forget()
                measure(f"ratarmount {s}: index + mount", lambda s=s: rat.mount([s]))
                sizes = {p.name: p.stat().st_size for p in rat.index_files()}
                runs[-1]["index_files"] = sizes
                measure(f"ratarmount {s}: mount ready, built index", lambda s=s: rat.mount([s]))
            if args.together:
                rat.forget()
                measure("ratarmount all 3 at once: index + mount", lambda: rat.mount(data.SPLITS))
        if "imagenetfs" in who and not why:
            measure("imagenetfs: index", lambda: imagenetfs_index(inet, setdir, index))
            runs[-1]["index_bytes"] = index.stat().st_size if index.exists() else None
    doc["caches_dropped"] = dropped
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1))

    by: dict[str, list[float]] = {}
    loads: dict[str, list[float]] = {}
    for run in runs:
        if "s" in run:
            by.setdefault(run["what"], []).append(run["s"])
            loads.setdefault(run["what"], []).append(run["load_before"])
    print(f"command: {doc['command']}")
    print(
        f"set: {setdir} (tars: "
        + ", ".join(f"{s} {b / 1e9:.2f} GB" for s, b in doc["tar_bytes"].items())
        + f"); caches {'dropped' if dropped else 'NOT dropped'}"
    )
    print(f"{args.repeat} round(s); {os.cpu_count()} cores\n")
    print("| measurement | median (s) | runs (s) | load average before each |")
    print("|---|---|---|---|")
    for what, vals in by.items():
        runs_s = ", ".join(f"{v:.1f}" for v in vals)
        print(f"| {what} | {statistics.median(vals):.1f} | {runs_s} | {loads[what]} |")
    for what in ("index alone (--no-mount)", "index + mount", "mount ready, built index"):
        builds = [by.get(f"ratarmount {s}: {what}") for s in data.SPLITS]
        if all(builds):
            total = sum(statistics.median(v) for v in builds if v)
            print(f"| ratarmount {what}: the three tars, sum of medians | {total:.1f} | | |")
    if why:
        print(f"\nimagenetfs: not measured: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
