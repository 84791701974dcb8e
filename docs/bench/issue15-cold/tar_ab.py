"""(issue15-cold/) Cold and warm epochs, 8 readers, of the 25,000 files of real-100x100 served
from its official tars (or SET=<cluster-layout set>): imagenetfs snapshots interleaved, round by
round in alternating order; the daemon tree's CPU seconds over the cold epoch, its PSS after the
warm one. A contender is SNAPSHOT[@VAR=VALUE...] (environment of the mount, e.g.
@IMAGENETFS_WORKERS=3). PERF=1 records `perf record -a -g` over each cold epoch, PYSPY=1 py-spy
of each worker. Usage: tar_ab.py ROUNDS SNAPSHOT_A SNAPSHOT_B ..."""
import os, statistics, subprocess, sys, time
sys.path.insert(0, "/work/main/scripts")
from benchlib.workloads import Readers
W = "/var/tmp/imagenetfs-bench"; SET = os.environ.get("SET", f"{W}/real-100x100-official"); LISTS = f"{W}/real-100x100"
PY = "/opt/imagenetfs/venv/bin/python"
def drop(): os.sync(); open("/proc/sys/vm/drop_caches", "w").write("3\n")
rounds, who = int(sys.argv[1]), sys.argv[2:]
labels = dict(l.split() for l in open(f"{LISTS}/val_labels.txt"))
rels = []
for s in ("train", "val", "test"):
    for r in open(f"{LISTS}/{s}_files.txt").read().split():
        rels.append(f"{s}/{labels[r]}/{r}" if s == "val" else f"{s}/{r}")
readers = Readers(8)
top = "/tmp/st-inet"; os.makedirs(top, exist_ok=True)
def src(w): return w.split('@')[0]
def extra(w): return dict(kv.split('=') for kv in w.split('@')[1:])
def idx(w): return f"/var/tmp/st/{os.path.basename(SET)}-{os.path.basename(src(w).rstrip('/'))}.lmdb" if 'SET' in os.environ else f"/var/tmp/st/tar-{os.path.basename(src(w).rstrip('/'))}.lmdb"
for w in who:
    if not os.path.exists(idx(w)):
        subprocess.run([PY, "-m", "imagenetfs.cli", "index", "-q", "--source", SET, "--index", idx(w)], env=dict(os.environ, PYTHONPATH=src(w)), cwd="/", check=True)
def cpu_of_tree(pid):
    out = subprocess.run(["ps", "-o", "pid=,ppid=,times=", "-e"], capture_output=True, text=True).stdout
    rows = [l.split() for l in out.splitlines()]
    kids = {pid}; changed = True
    while changed:
        changed = False
        for p, pp, t in rows:
            if int(pp) in kids and int(p) not in kids: kids.add(int(p)); changed = True
    tot = 0.0
    for p in kids:
        try:
            st = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            tot += (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")
        except OSError: pass
    return tot
res = {}
for r in range(rounds):
    for w in (who if r % 2 == 0 else who[::-1]):
        env = dict(os.environ, PYTHONPATH=src(w), **extra(w))
        drop()
        subprocess.run([PY, "-m", "imagenetfs.cli", "mount", top, "--source", SET, "--index", idx(w)], check=True, env=env, cwd="/")
        pid = int(subprocess.run(["pgrep", "-f", f"imagenetfs.cli mount {top}"], capture_output=True, text=True).stdout.split()[0])
        c0 = cpu_of_tree(pid); s0 = os.times()
        perf = subprocess.Popen(['perf', 'record', '-a', '-g', '-e', 'cpu-clock', '-F', '499', '-o', f'/var/tmp/st/perf-{os.path.basename(w)}-{r}.data'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) if os.environ.get('PERF') else None
        spies = []
        if os.environ.get('PYSPY'):
            kids = subprocess.run(['pgrep', '-P', str(pid)], capture_output=True, text=True).stdout.split()
            spies = [subprocess.Popen(['/opt/imagenetfs/venv/bin/py-spy', 'record', '--pid', k, '-r', '250', '-f', 'raw', '--nonblocking', '-o', f'/var/tmp/st/spy-{os.path.basename(w)}-{r}-{k}.txt'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for k in kids]
        time.sleep(1 if perf or spies else 0)
        t, b = readers.epoch([f"{top}/{p}" for p in rels], 8, r)
        c1 = cpu_of_tree(pid)
        if perf: perf.send_signal(2); perf.wait()
        for sp in spies: sp.send_signal(2); sp.wait()
        t2, _ = readers.epoch([f"{top}/{p}" for p in rels], 8, r + 100)
        pss = subprocess.run(['python3', '-c', f'''
import subprocess,re
out=subprocess.run(['ps','-o','pid=','--ppid','{pid}'],capture_output=True,text=True).stdout.split()+['{pid}']
t=0
for p in out:
    for l in open(f'/proc/{{p}}/smaps_rollup'):
        if l.startswith('Pss:'): t+=int(l.split()[1])
print(t/1024)'''], capture_output=True, text=True).stdout.strip()
        subprocess.run([PY, "-m", "imagenetfs.cli", "umount", top], env=env, cwd="/", capture_output=True)
        res.setdefault(w, []).append((t, t2, c1 - c0, readers.last_cpu))
        print('pss', pss)
        print(f"round {r} {os.path.basename(w)}: cold {t:.2f} s warm {t2:.2f} s {b/1e6:.0f} MB daemon cpu {c1-c0:.2f} s", flush=True)
for w, v in res.items():
    print(os.path.basename(w), "cold", [round(x[0], 2) for x in v], "median", round(statistics.median(x[0] for x in v), 2),
          "warm median", round(statistics.median(x[1] for x in v), 2), "daemon cpu median", round(statistics.median(x[2] for x in v), 2))
readers.close()
