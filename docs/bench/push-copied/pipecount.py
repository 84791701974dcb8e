"""Requests, block-cache lookups and pushes per image of one cold pipeline epoch through
imagenetfs (its own counters), for the imagenetfs sources given (A and B), on gzip images.
After docs/bench/issue28-pipeline/counters/pipecount.py.

    flock /tmp/imagenetfs-bench.lock flock /tmp/imagenetfs-pytest.lock \
      /opt/imagenetfs-push-copied/venv/bin/python docs/bench/push-copied/pipecount.py \
      OUTDIR /var/tmp/pc-src/zng /var/tmp/pc-src/push
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))
from benchlib import contenders as C
from benchlib import data, pipeline

W = Path("/var/tmp/imagenetfs-bench-pipeline")
out = Path(sys.argv[1]).resolve()
out.mkdir(parents=True, exist_ok=True)
listing, n = pipeline.subset(W, data.QUICK_READ, 3000)
probe = next(f for f in data.files(W, data.QUICK_READ) if f.split == "train")
ep = pipeline.Epochs(Path("/opt/imagenetfs/test-venv/bin/python"), W)
mounts = C.Mounts()
try:
    for src in map(Path, sys.argv[2:]):
        prom = out / f"pipeline-gzip-{src.name}.prom"
        prom.unlink(missing_ok=True)
        C.drop_caches()
        contender = C.Imagenetfs(W, src)
        m = mounts.add(
            contender.mount(W / "quick5k-real", W / "mnt" / "count", probe,
                            extra=["--metrics", str(prom)])
        )  # fmt: skip
        ep.ask(root=str(m.roots["train"]), subset=str(listing))
        r = ep.ask(epoch=0, workers=2, batch=32)
        mounts.release(m)
        c = {}
        for line in prom.read_text().splitlines():
            if line.startswith("imagenetfs_") and "bucket" not in line:
                name = line.split("{")[0]
                lab = line.split("{")[1].split("}")[0]
                lab = ",".join(x for x in lab.split(",") if not x.startswith("mountpoint"))
                c[f"{name}{{{lab}}}"] = float(line.rsplit(" ", 1)[1])
        keys = ("requests_total", "reads", "cache", "pushed")
        per = {k: round(v / n, 3) for k, v in c.items() if any(s in k for s in keys)}
        print(src.name, json.dumps(r), json.dumps(per), flush=True)
finally:
    mounts.close()
    ep.close()
