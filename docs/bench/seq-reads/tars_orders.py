"""Scratch: one cold reader over the official tars (this branch): the tars' order against name order,
the index cold (dropped with the rest) or read back into the page cache after the drop;
interleaved, the first order alternating. argv: rounds."""
import json, statistics, sys, time
from pathlib import Path
sys.path.insert(0, "/work/wt-perf-leftovers/scripts")
from benchlib import contenders as C, data
from benchlib.workloads import read_all
from imagenetfs import registry

work = Path("/var/tmp/imagenetfs-bench-pipeline")
files = data.files(work, data.QUICK_READ)
setdir = data.official_dir(work, data.QUICK_READ)
members = data.tar_members(setdir)
splits = ["train", "val", "test"]
orders = {
    "tar": sorted(files, key=lambda f: (splits.index(f.split), members[(f.split, f.relpath)][0])),
    "name": files,
}
rounds = int(sys.argv[1])

def counters(mp):
    state = registry.state_file(mp)
    t = time.time()
    while True:
        s = json.loads(state.read_text())
        if s.get("updated", 0) > t:
            return s["stats"]["fs"]
        time.sleep(0.2)

speeds = {}
for r in range(rounds):
    names = ["tar", "name"] if r % 2 == 0 else ["name", "tar"]
    for index in ("cold", "warm"):
        for name in names:
            c = C.ImagenetfsTar(work, None)
            mp = work / "mnt" / "orders"
            m = c.mount(setdir, mp, files[0])
            try:
                paths = [m.path(f) for f in orders[name]]
                C.drop_caches()
                if index == "warm":
                    c.index_path(setdir).read_bytes()
                before = counters(mp)
                t = time.perf_counter()
                read_all(paths)
                dt = time.perf_counter() - t
                after = counters(mp)
            finally:
                m.unmount()
            d = {k: after[k] - before[k] for k in after}
            speeds.setdefault((name, index), []).append(len(paths) / dt)
            keep = ("reads", "reads_cold", "reads_ahead", "files_pushed")
            print(f"round {r} {name:5s} index {index} {len(paths)/dt:7,.0f} files/s  "
                  + " ".join(f"{k}={d.get(k, 0)}" for k in keep), flush=True)
for (name, index), v in sorted(speeds.items()):
    print(f"median {name:5s} index {index} {statistics.median(v):7,.0f} files/s of {[round(x) for x in v]}")
