"""Requests per image of one cold pipeline epoch through imagenetfs (its own counters)."""
import sys, json
from pathlib import Path
sys.path.insert(0, "/work/wt-perf-pipeline/scripts")
from benchlib import contenders as C, data, pipeline
W = Path("/var/tmp/imagenetfs-bench-pipeline")
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
listing, n = pipeline.subset(W, data.QUICK_READ, 3000)
probe = next(f for f in data.files(W, data.QUICK_READ) if f.split == "train")
ep = pipeline.Epochs(Path("/opt/imagenetfs/test-venv/bin/python"), W)
mounts = C.Mounts()
try:
    for v in ("quick5k-real", "quick5k-real-noD-noF"):
        prom = out / f"pipeline-{v}.prom"
        prom.unlink(missing_ok=True)
        C.drop_caches()
        m = mounts.add(C.Imagenetfs(W, None).mount(W / v, W / "mnt" / "count", probe, extra=["--metrics", str(prom)]))
        ep.ask(root=str(m.roots["train"]), subset=str(listing))
        r = ep.ask(epoch=0, workers=2, batch=32)
        mounts.release(m)
        c = {}
        for line in prom.read_text().splitlines():
            if line.startswith("imagenetfs_") and "bucket" not in line and not line.startswith("#"):
                name = line.split("{")[0]; lab = line.split("{")[1].split("}")[0]
                lab = ",".join(x for x in lab.split(",") if not x.startswith("mountpoint"))
                c[f"{name}{{{lab}}}"] = float(line.rsplit(" ", 1)[1])
        per = {k: round(v / n, 3) for k, v in c.items() if "requests_total" in k or "reads" in k or "cache" in k}
        print(v, json.dumps(r), json.dumps(per), flush=True)
finally:
    mounts.close(); ep.close()
