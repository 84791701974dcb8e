"""Interleaved rounds at the full entry count: os.walk (fresh mount, caches dropped) and os.stat of
every file (fresh mount, caches dropped), imagenetfs snapshots vs squashfuse_ll. Prints each reading."""
import json, os, statistics, subprocess, sys, time
sys.path.insert(0, "/work/main/scripts")
from benchlib.workloads import walk, stat_all
W = "/var/tmp/imagenetfs-bench"
SET = f"{W}/full-tiny-gzip"
PY = "/opt/imagenetfs/venv/bin/python"
labels = dict(l.split() for l in open(f"{SET}/val_labels.txt").read().splitlines())
def paths(top, inet):
    out = [f"{top}/train/{r}" for r in open(f"{SET}/train_files.txt").read().split()]
    out += [f"{top}/val/{labels[n]}/{n}" if inet else f"{top}/val/{n}" for n in open(f"{SET}/val_files.txt").read().split()]
    out += [f"{top}/test/{r}" for r in open(f"{SET}/test_files.txt").read().split()]
    return out
def drop():
    os.sync(); open("/proc/sys/vm/drop_caches", "w").write("3\n")
def mount(who):
    drop()
    if who == "squashfuse_ll":
        top = "/tmp/st/sqf"
        for s in ("train", "val", "test"):
            os.makedirs(f"{top}/{s}", exist_ok=True)
            subprocess.run(["squashfuse_ll", f"{SET}/{s}.squashfs", f"{top}/{s}"], check=True)
        return top, lambda: [subprocess.run(["fusermount3", "-u", f"{top}/{s}"]) for s in ("train", "val", "test")]
    top = "/tmp/st/inet"; os.makedirs(top, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=who)
    idx = f"/tmp/st/full-{os.path.basename(who)}.lmdb"
    subprocess.run([PY, "-m", "imagenetfs.cli", "mount", top, "--source", SET, "--index", idx], check=True, env=env, cwd="/")
    return top, lambda: subprocess.run([PY, "-m", "imagenetfs.cli", "umount", top], env=env, cwd="/", capture_output=True)
who = sys.argv[2:]
res = {}
for w in who:  # build the indexes first (not timed)
    if w != "squashfuse_ll":
        top, um = mount(w); um()
for rnd in range(int(sys.argv[1])):
    order = who if rnd % 2 == 0 else who[::-1]
    for w in order:
        top, um = mount(w)
        t, n = walk([top])
        um()
        if os.environ.get("WALK_ONLY"):
            s, ps = 0.0, []
        else:
            top, um = mount(w)
            ps = paths(top, w != "squashfuse_ll")
            s = stat_all(ps)
            um()
        res.setdefault(w, []).append((t, s))
        print(f"round {rnd} {os.path.basename(w)}: walk {t:.2f} s ({n:,} entries), stat {s:.1f} s ({len(ps):,} files)", flush=True)
for w, v in res.items():
    print(f"{os.path.basename(w)}: walk {[round(t, 2) for t, _ in v]} median {statistics.median(t for t, _ in v):.2f}; stat {[round(s, 1) for _, s in v]} median {statistics.median(s for _, s in v):.1f}")
