"""(issue16-meta/) Cold epochs of N random files of the full-count set, 8 readers: imagenetfs snapshots interleaved."""
import os, random, statistics, subprocess, sys
sys.path.insert(0, "/work/main/scripts")
from benchlib.workloads import Readers
W = "/var/tmp/imagenetfs-bench"; SET = f"{W}/full-tiny-noD-noF"; PY = "/opt/imagenetfs/venv/bin/python"
def drop(): os.sync(); open("/proc/sys/vm/drop_caches", "w").write("3\n")
rounds, n, who = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
rels = open(f"{SET}/train_files.txt").read().split()
pick = random.Random(1).sample(rels, n)
readers = Readers(8)
res = {}
top = "/tmp/st/inet"
for w in who:
    env = dict(os.environ, PYTHONPATH=w); idx = f"/tmp/st/nodf-{os.path.basename(w)}.lmdb"
    subprocess.run([PY, "-m", "imagenetfs.cli", "index", "--source", SET, "--index", idx], env=env, cwd="/", capture_output=True)
for r in range(rounds):
    for w in (who if r % 2 == 0 else who[::-1]):
        env = dict(os.environ, PYTHONPATH=w); idx = f"/tmp/st/nodf-{os.path.basename(w)}.lmdb"
        drop()
        subprocess.run([PY, "-m", "imagenetfs.cli", "mount", top, "--source", SET, "--index", idx], check=True, env=env, cwd="/")
        t, b = readers.epoch([f"{top}/train/{p}" for p in pick], 8, r)
        subprocess.run([PY, "-m", "imagenetfs.cli", "umount", top], env=env, cwd="/", capture_output=True)
        res.setdefault(w, []).append(t)
        print(f"round {r} {os.path.basename(w)}: {t:.2f} s {b/1e6:.0f} MB", flush=True)
for w, v in res.items():
    print(os.path.basename(w), [round(x, 2) for x in v], "median", round(statistics.median(v), 2))
readers.close()
