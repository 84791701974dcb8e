"""Scratch: one cold reader over the official tars with imagenetfs: files/s and the mount's counters,
by reading order (the tars' order, name order) and env (read-ahead / push on or off)."""
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, "/work/wt-perf-leftovers/scripts")
from benchlib import contenders as C, data
from benchlib.workloads import read_all
from imagenetfs import registry

work = Path("/var/tmp/imagenetfs-bench-pipeline")
setdir = data.official_dir(work, data.QUICK_READ)
files = data.files(work, data.QUICK_READ)
members = data.tar_members(setdir)
splits = ["train", "val", "test"]
orders = {
    "tar": sorted(files, key=lambda f: (splits.index(f.split), members[(f.split, f.relpath)][0])),
    "name": files,
}
configs = {
    "default": {},
    "noahead": {"IMAGENETFS_READ_AHEAD": "0"},
    "nopush": {"IMAGENETFS_PUSH": "0"},
}
wanted = sys.argv[1].split(",") if len(sys.argv) > 1 else list(configs)
which = sys.argv[2].split(",") if len(sys.argv) > 2 else list(orders)
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 1

def counters(mp):
    state = registry.state_file(mp)
    t = time.time()
    while True:
        s = json.loads(state.read_text())
        if s.get("updated", 0) > t:
            return s["stats"]["fs"]
        time.sleep(0.2)

for r in range(rounds):
    for cfg in wanted:
        for order in which:
            c = C.ImagenetfsTar(work, None)
            c.env.update(configs[cfg])
            mp = work / "mnt" / "tarcount"
            m = c.mount(setdir, mp, files[0])
            try:
                paths = [m.path(f) for f in orders[order]]
                C.drop_caches()
                before = counters(mp)
                t = time.perf_counter()
                n = read_all(paths)
                dt = time.perf_counter() - t
                after = counters(mp)
            finally:
                m.unmount()
            d = {k: after[k] - before[k] for k in after if after[k] != before[k]}
            keep = ("reads", "reads_spliced", "reads_cold", "reads_ahead", "bytes_ahead", "files_pushed", "ioctls", "lookups")
            print(f"round {r} {cfg:8s} {order:5s} {len(paths)/dt:7,.0f} files/s  "
                  + " ".join(f"{k}={d.get(k, 0)}" for k in keep), flush=True)
