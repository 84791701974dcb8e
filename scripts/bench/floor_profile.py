#!/usr/bin/env python3
"""Where an 8-reader epoch on a fresh mount with the images cached goes: imagenetfs against
the FUSE floor, round by round, with counters and profiles.

    scripts/bench/floor_profile.py --work W --set SET --tree TREE [--rounds 3]
        [--who imagenetfs,floor] [--profile none|perf|py-spy|strace] [--out DIR]
        [--cold] [--readers N]

SET is an image set of scripts/bench.py (`<work>/quick5k-real-noD-noF`), TREE its unpacked
tree (`<work>/unpacked/quick5k-real`), W its work directory. Each round, for each contender
(in alternating order): mount, read every file once (the images, imagenetfs's index and the
floor's data file come into the page cache), unmount, mount again, and time one epoch of 8
reader processes over every file in random order (benchlib/workloads.py, as bench.py's
`read 8 fresh cached`; with `--cold`, caches dropped instead of the first read: as
`read 8 cold`; `--readers`: other than 8; `--who` may also name squashfuse_ll or kernel), with
- the daemon's CPU (user and system apart, its children included) and the readers', per file;
- imagenetfs's requests by kind, from its metrics file (`mount --metrics`);
- `--profile perf`: `perf record -a -g` over the epoch (`perf.<who>.<round>.data`; read with
  `perf report -i ... --sort comm,dso`); `py-spy`: `py-spy record --subprocesses --native`
  of imagenetfs's supervisor over the epoch (speedscope JSON); `strace`: `strace -c -f` of the
  daemon over the epoch (its system calls, counted; slows the epoch: its time is not kept).
Prints one line per epoch and the medians; writes everything to `--out` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import _venv  # noqa: F401
from benchlib import contenders as C
from benchlib import data
from benchlib.workloads import Readers


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """(user, system) seconds of `pids` and their descendants (reaped children included)."""
    user = system = 0
    for pid in C._tree_pids(pids) if pids else []:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(f[11]) + int(f[13])
        system += int(f[12]) + int(f[14])
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


def files_of(setdir: Path, tree: Path) -> list[data.File]:
    out = []
    labels = dict(
        line.split() for line in (setdir / "val_labels.txt").read_text().splitlines() if line
    )
    for s in data.SPLITS:
        for rel in (setdir / f"{s}_files.txt").read_text().splitlines():
            size = (tree / s / rel).stat().st_size
            out.append(data.File(s, rel, labels.get(rel, "") if s == "val" else "", size))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--set", type=Path, required=True)
    p.add_argument("--tree", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--who", default="imagenetfs,floor")
    p.add_argument("--profile", choices=["none", "perf", "py-spy", "strace"], default="none")
    p.add_argument("--out", type=Path, default=Path("floor-profile"))
    p.add_argument("--cold", action="store_true", help="caches dropped before each epoch")
    p.add_argument("--readers", type=int, default=8)
    a = p.parse_args()
    a.out = a.out.resolve()  # the daemons run elsewhere: --metrics must be absolute
    a.out.mkdir(parents=True, exist_ok=True)
    readers = Readers(8)
    mounts = C.Mounts()
    files = files_of(a.set, a.tree)
    nbytes = sum(f.size for f in files)
    metrics = a.out / "imagenetfs.prom"
    who: dict[str, C.Contender] = {
        "imagenetfs": C.Imagenetfs(a.work, None),
        "floor": C.Floor(a.work, a.tree),
        "squashfuse_ll": C.SquashfuseLL(a.work),
        "kernel": C.Kernel(a.work),
    }
    names = a.who.split(",")
    results: dict[str, list[dict[str, object]]] = {n: [] for n in names}

    def mount(name: str) -> C.Mounted:
        mp = a.work / "mnt" / f"profile-{name}"
        c = who[name]
        if isinstance(c, C.Imagenetfs):
            return mounts.add(c.mount(a.set, mp, files[0], extra=["--metrics", str(metrics)]))
        return mounts.add(c.mount(a.set, mp, files[0]))

    try:
        for r in range(a.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                if a.cold:
                    C.drop_caches()
                else:
                    m = mount(name)
                    paths = [m.path(f) for f in files]
                    readers.epoch(paths, 8, 7)  # everything into the page cache
                    mounts.release(m)
                metrics.unlink(missing_ok=True)
                m = mount(name)
                paths = [m.path(f) for f in files]
                tool = None
                tag = f"{name}{'.cold' if a.cold else ''}.{r}"
                if a.profile == "perf":
                    tool = subprocess.Popen(
                        ["perf", "record", "-a", "-g", "-q", "-o", str(a.out / f"perf.{tag}.data")],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                elif a.profile == "py-spy" and name == "imagenetfs":
                    tool = subprocess.Popen(
                        [str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
                         str(m.pids[0]), "--subprocesses", "--native", "--rate", "250",
                         "--format", "speedscope", "-o", str(a.out / f"py-spy.{tag}.json")],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                elif a.profile == "strace":
                    pids = C._tree_pids(m.pids)
                    argv = ["strace", "-c", "-f", "-o", str(a.out / f"strace.{tag}.txt")]
                    for pid in pids:
                        argv += ["-p", str(pid)]
                    tool = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
                if tool is not None:
                    time.sleep(1.0)  # the profiler attached
                u0, s0 = cpu_split(m.pids)
                dt, got = readers.epoch(paths, a.readers, 1000 + r)
                u1, s1 = cpu_split(m.pids)
                if tool is not None:
                    tool.send_signal(signal.SIGINT)
                    tool.wait(timeout=300)
                mounts.release(m)
                if got != nbytes:
                    raise RuntimeError(f"{name}: read {got:,} bytes, expected {nbytes:,}")
                n = len(files)
                row: dict[str, object] = {
                    "seconds": dt,
                    "files_per_s": n / dt,
                    "daemon_user_us_per_file": 1e6 * (u1 - u0) / n,
                    "daemon_sys_us_per_file": 1e6 * (s1 - s0) / n,
                    "readers_us_per_file": 1e6 * readers.last_cpu / n,
                }
                if name == "imagenetfs" and metrics.exists():
                    reqs: dict[str, float] = {}
                    for line in metrics.read_text().splitlines():
                        if line.startswith("imagenetfs_requests_total{"):
                            op = line.split('op="', 1)[1].split('"', 1)[0]
                            reqs[op] = round(float(line.rsplit(" ", 1)[1]) / n, 3)
                    row["requests_per_file"] = reqs
                results[name].append(row)
                print(f"round {r + 1} {name}: {json.dumps(row)}", flush=True)
    finally:
        mounts.close()
        readers.close()
    summary = {
        name: {
            k: statistics.median(float(x[k]) for x in rows)  # type: ignore[arg-type]
            for k in rows[0]
            if k != "requests_per_file"
        }
        for name, rows in results.items()
        if rows
    }
    for name, med in summary.items():
        print(f"median {name}: " + ", ".join(f"{k} {v:,.4g}" for k, v in med.items()))
    (a.out / f"profile-{a.profile}{'-cold' if a.cold else ''}.json").write_text(
        json.dumps({"argv": sys.argv, "rounds": results, "medians": summary}, indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
