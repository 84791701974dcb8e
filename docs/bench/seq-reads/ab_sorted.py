"""Scratch: interleaved rounds: one reader, cold, sorted order; files/s per config."""
import os, sys, time, subprocess, json, statistics
sys.path.insert(0, "/work/wt-perf-seq/scripts")
from pathlib import Path
from benchlib import data, contenders as C
from benchlib.workloads import read_timed
work = Path("/var/tmp/perf-seq"); scale = data.QUICK_READ
files = data.files(work, scale)
variants = sys.argv[1].split(","); reps = int(sys.argv[2])
configs = {
  "off": ("imagenetfs", {"IMAGENETFS_PUSH": "0", "IMAGENETFS_READ_AHEAD": "0"}),
  "ahead": ("imagenetfs", {"IMAGENETFS_PUSH": "0"}),
  "push": ("imagenetfs", {"IMAGENETFS_READ_AHEAD": "0"}),
  "both": ("imagenetfs", {}),
  "kernel": ("kernel", {}), "squashfuse_ll": ("squashfuse_ll", {}),
}
pick = sys.argv[3].split(",") if len(sys.argv) > 3 else list(configs)
res = {}
for rep in range(reps):
    for v in variants:
        setdir = data.set_dir(work, scale, v)
        for name in pick:
            who, env = configs[name]
            c = {"imagenetfs": C.Imagenetfs, "kernel": C.Kernel, "squashfuse_ll": C.SquashfuseLL}[who](work, *([None] if who == "imagenetfs" else []))
            if who == "imagenetfs": c.env.update(env)
            C.drop_caches()
            m = c.mount(setdir, work / "mnt" / name, files[0])
            try:
                paths = [m.path(f) for f in files]
                C.drop_caches()
                t = time.perf_counter(); n, _ = read_timed(paths); dt = time.perf_counter() - t
            finally:
                m.unmount()
            res.setdefault(v, {}).setdefault(name, []).append(len(files) / dt)
            print(f"rep {rep} {v} {name}: {len(files)/dt:,.0f} files/s", flush=True)
for v, by in res.items():
    print(v, {k: f"{statistics.median(x):,.0f}" for k, x in by.items()})
