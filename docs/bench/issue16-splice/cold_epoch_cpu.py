"""One epoch of 8 reader processes over DIR's *.JPEG (random order), and the machine's CPU
split meanwhile (from /proc/stat). Drop caches first for a cold epoch:

    sync; echo 3 > /proc/sys/vm/drop_caches; python3 cold_epoch_cpu.py MOUNT/train
"""

import os
import random
import sys
import time
from multiprocessing import Pool

FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq")


def read(paths: list[str]) -> int:
    total = 0
    for path in paths:
        with open(path, "rb") as f:
            total += len(f.read())
    return total


def cpu() -> list[int]:
    with open("/proc/stat") as f:
        return [int(v) for v in f.readline().split()[1:8]]


def main() -> None:
    files = [
        os.path.join(d, f) for d, _, fs in os.walk(sys.argv[1]) for f in fs if f.endswith(".JPEG")
    ]
    random.Random(0).shuffle(files)
    before, started = cpu(), time.perf_counter()
    with Pool(8) as pool:
        total = sum(pool.map(read, [files[i::8] for i in range(8)]))
    seconds, after = time.perf_counter() - started, cpu()
    spent = [b - a for a, b in zip(before, after, strict=True)]
    shares = zip(FIELDS, spent, strict=True)
    split = ", ".join(f"{n} {100 * v / sum(spent):.0f}%" for n, v in shares)
    print(f"{len(files)} files {total / 1e6:.0f} MB in {seconds:.2f} s; cpu: {split}")


if __name__ == "__main__":
    main()
