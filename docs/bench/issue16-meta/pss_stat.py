"""(issue16-meta/) PSS of the mount after a walk and a stat of every file, full entry count (gzip images)."""
import json, os, subprocess, sys
sys.path.insert(0, "/work/main/scripts")
from benchlib.workloads import walk, stat_all
from benchlib.contenders import memory
W = "/var/tmp/imagenetfs-bench"; SET = f"{W}/full-tiny-gzip"; PY = "/opt/imagenetfs/venv/bin/python"
src = sys.argv[1]; env = dict(os.environ, PYTHONPATH=src); top = "/tmp/st/inet"
idx = f"/tmp/st/full-{os.path.basename(src)}.lmdb"
os.sync(); open("/proc/sys/vm/drop_caches", "w").write("3\n")
subprocess.run([PY, "-m", "imagenetfs.cli", "mount", top, "--source", SET, "--index", idx], check=True, env=env, cwd="/", capture_output=True)
pid = json.loads(subprocess.run([PY, "-m", "imagenetfs.cli", "status", top, "--json"], env=env, cwd="/", capture_output=True, text=True).stdout)["pid"]
print("mounted", {k: round(v, 1) for k, v in memory([pid]).items()})
t, n = walk([top]); print(f"walk {t:.2f}", {k: round(v, 1) for k, v in memory([pid]).items()})
labels = dict(l.split() for l in open(f"{SET}/val_labels.txt").read().splitlines())
ps = [f"{top}/train/{r}" for r in open(f"{SET}/train_files.txt").read().split()]
ps += [f"{top}/val/{labels[n]}/{n}" for n in open(f"{SET}/val_files.txt").read().split()]
ps += [f"{top}/test/{r}" for r in open(f"{SET}/test_files.txt").read().split()]
s = stat_all(ps); print(f"stat {s:.1f}", {k: round(v, 1) for k, v in memory([pid]).items()})
subprocess.run([PY, "-m", "imagenetfs.cli", "umount", top], env=env, cwd="/", capture_output=True)
