"""Scratch: one cold reader in image order, imagenetfs main (521eb94) against this branch, interleaved:
files/s and the mount's counters per round. argv: sets (tars,noD-noF,gzip) rounds."""
import json, statistics, sys, time
from pathlib import Path
sys.path.insert(0, "/work/wt-perf-leftovers/scripts")
from benchlib import contenders as C, data
from benchlib.workloads import read_all
from imagenetfs import registry

work = Path("/var/tmp/imagenetfs-bench-pipeline")
files = data.files(work, data.QUICK_READ)
kinds = sys.argv[1].split(",")
rounds = int(sys.argv[2])
srcs = {"main": Path("/tmp/perf-leftovers/main-src"), "branch": None}

def order(kind):
    if kind != "tars":
        return data.set_dir(work, data.QUICK_READ, kind), files
    setdir = data.official_dir(work, data.QUICK_READ)
    members = data.tar_members(setdir)
    splits = ["train", "val", "test"]
    return setdir, sorted(files, key=lambda f: (splits.index(f.split), members[(f.split, f.relpath)][0]))

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
    for kind in kinds:
        setdir, listed = order(kind)
        for who in (["main", "branch"] if r % 2 == 0 else ["branch", "main"]):
            cls = C.ImagenetfsTar if kind == "tars" else C.Imagenetfs
            c = cls(work, srcs[who])
            mp = work / "mnt" / "ab"
            C.drop_caches()
            m = c.mount(setdir, mp, listed[0])
            try:
                paths = [m.path(f) for f in listed]
                C.drop_caches()
                before = counters(mp)
                t = time.perf_counter()
                n = read_all(paths)
                dt = time.perf_counter() - t
                after = counters(mp)
            finally:
                m.unmount()
            d = {k: after[k] - before[k] for k in after}
            speeds.setdefault((kind, who), []).append(len(paths) / dt)
            keep = ("reads", "reads_cold", "reads_ahead", "files_pushed")
            print(f"round {r} {kind:8s} {who:6s} {len(paths)/dt:7,.0f} files/s  "
                  + " ".join(f"{k}={d.get(k, 0)}" for k in keep), flush=True)
for (kind, who), v in sorted(speeds.items()):
    print(f"median {kind:8s} {who:6s} {statistics.median(v):7,.0f} files/s  of {[round(x) for x in v]}")
