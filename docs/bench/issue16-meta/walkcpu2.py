"""(issue16-meta/) CPU seconds of each daemon process during one walk of the full-count set on a fresh
mount (caches dropped): walkcpu2.py SNAPSHOT."""
import os, subprocess, sys, time
sys.path.insert(0, "/work/main/scripts")
from benchlib.workloads import walk
W = "/var/tmp/imagenetfs-bench"; SET = f"{W}/full-tiny-gzip"; PY = "/opt/imagenetfs/venv/bin/python"
def drop(): os.sync(); open("/proc/sys/vm/drop_caches", "w").write("3\n")
def cpu(pids):
    out = {}
    for p in pids:
        f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        out[p] = (int(f[11]) / 100, int(f[12]) / 100)
    return out
who = sys.argv[1]
drop()
top = "/tmp/st/inet"; env = dict(os.environ, PYTHONPATH=who)
idx = f"/tmp/st/full-{os.path.basename(who)}.lmdb"
subprocess.run([PY, "-m", "imagenetfs.cli", "mount", top, "--source", SET, "--index", idx], check=True, env=env, cwd="/")
pids = subprocess.run(["pgrep", "-f", f"imagenetfs.cli mount {top}"], capture_output=True, text=True).stdout.split()
pids += [c for p in pids for c in open(f"/proc/{p}/task/{p}/children").read().split()]
pids = sorted(set(pids))
print({p: open(f"/proc/{p}/cmdline").read().replace("\0", " ")[:80] for p in pids})
a = cpu(pids); time.sleep(2); b = cpu(pids)
print("idle 2 s:", {p: (round(b[p][0]-a[p][0], 2), round(b[p][1]-a[p][1], 2)) for p in pids})
t, n = walk([top]); c = cpu(pids)
print(f"walk {t:.2f}:", {p: (round(c[p][0]-b[p][0], 2), round(c[p][1]-b[p][1], 2)) for p in pids})
subprocess.run([PY, "-m", "imagenetfs.cli", "umount", top], env=env, cwd="/", capture_output=True)
