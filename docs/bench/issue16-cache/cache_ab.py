"""(issue16-cache/) Block cache size A/B: gzip realistic set, 8 readers, 3 epochs (first cold), PSS and hit rates."""
import json, os, random, statistics, subprocess, sys
sys.path.insert(0, "/work/main/scripts")
from benchlib.workloads import Readers
from benchlib.contenders import memory
W = "/var/tmp/imagenetfs-bench"; SET = f"{W}/real-100x100"; PY = "/opt/imagenetfs/venv/bin/python"
def drop(): os.sync(); open("/proc/sys/vm/drop_caches", "w").write("3\n")
rounds, who = int(sys.argv[1]), sys.argv[2:]
readers = Readers(8); top = "/tmp/st/inet"; res = {}
for r in range(rounds):
    for w in (who if r % 2 == 0 else who[::-1]):
        env = dict(os.environ, PYTHONPATH=w); idx = f"/tmp/st/real-{os.path.basename(w)}.lmdb"
        drop()
        subprocess.run([PY, "-m", "imagenetfs.cli", "mount", top, "--source", SET, "--index", idx], check=True, env=env, cwd="/", capture_output=True)
        st = json.loads(subprocess.run([PY, "-m", "imagenetfs.cli", "status", top, "--json"], env=env, cwd="/", capture_output=True, text=True).stdout)
        files = [os.path.join(d, f) for d, _, fs in os.walk(top) for f in fs if "/train/" in d or "/val/" in d or "/test/" in d]
        line = []
        for e in range(3):
            t, b = readers.epoch(files, 8, 100 * r + e)
            m = memory([st["pid"]])
            line.append((round(t, 2), round(m["pss"], 1)))
        st = json.loads(subprocess.run([PY, "-m", "imagenetfs.cli", "status", top, "--json"], env=env, cwd="/", capture_output=True, text=True).stdout)
        subprocess.run([PY, "-m", "imagenetfs.cli", "umount", top], env=env, cwd="/", capture_output=True)
        c = st["caches"]["block"]
        print(f"round {r} {os.path.basename(w)}: {len(files)} files, (s, PSS MiB) per epoch {line}, block cache hits {c['hits']} misses {c['misses']}", flush=True)
        res.setdefault(w, []).append(line)
for w, v in res.items():
    print(os.path.basename(w), "epoch1 median", statistics.median(l[0][0] for l in v), "PSS after 3 median", statistics.median(l[2][1] for l in v))
readers.close()
