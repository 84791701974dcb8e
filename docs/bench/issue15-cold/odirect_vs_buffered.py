import os, sys, tarfile, random, time, threading, mmap, resource
W = "/var/tmp/imagenetfs-bench/real-100x100-official"
tars = [f"{W}/ILSVRC2012_img_val.tar", f"{W}/ILSVRC2012_img_test_v10102019.tar"]
members = []
for t in tars:
    with tarfile.open(t) as tf:
        for m in tf:
            if m.isfile(): members.append((t, m.offset_data, m.size))
random.Random(1).shuffle(members)
mode, nthreads = sys.argv[1], int(sys.argv[2])
def drop(): os.sync(); open("/proc/sys/vm/drop_caches", "w").write("3\n")
drop()
fds = {t: os.open(t, os.O_RDONLY | (os.O_DIRECT if mode == "direct" else 0)) for t in tars}
nullfd = os.open("/dev/null", os.O_WRONLY)
def work(part):
    buf = mmap.mmap(-1, 4 << 20)
    mv = memoryview(buf)
    for t, off, size in part:
        fd = fds[t]
        if mode == "direct":
            start = off & ~4095; end = (off + size + 4095) & ~4095
            n = os.preadv(fd, [mv[: end - start]], start)
        else:
            for pos in range(off, off + size, 131072):
                n = os.preadv(fd, [mv[: min(131072, off + size - pos)]], pos)
r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.perf_counter()
ths = [threading.Thread(target=work, args=(members[i::nthreads],)) for i in range(nthreads)]
[t.start() for t in ths]; [t.join() for t in ths]
dt = time.perf_counter() - t0; r1 = resource.getrusage(resource.RUSAGE_SELF)
print(f"{mode} threads={nthreads}: {dt:.2f} s, user {r1.ru_utime-r0.ru_utime:.2f} sys {r1.ru_stime-r0.ru_stime:.2f}, {sum(m[2] for m in members)/1e9:.2f} GB, {len(members)} files")
