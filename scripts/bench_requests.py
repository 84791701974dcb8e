#!/usr/bin/env python3
"""What one FUSE request costs a worker process, without FUSE: synthetic requests through
`wire.Worker.handle` (the same code a worker runs between its `read` and `write`).

    scripts/bench_requests.py INDEX [--kind lookup] [-n 20000]

prints microseconds per request (best of 5 passes over the first class directory of `INDEX`,
e.g. the --quick tiny set's index that scripts/bench.py builds under
/var/tmp/imagenetfs-bench/index/). Times on a shared machine move by tens of percent; to
compare two versions, count instructions instead, which callgrind repeats exactly:

    for n in 0 3000; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        scripts/bench_requests.py INDEX --kind lookup -n $n --once 2>&1 | grep Collected; done

(the difference of the two totals, divided by 3000, is the cost of one request).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import _venv  # noqa: F401  (re-executes with the imagenetfs environment if needed)

from imagenetfs import protocol as fuse
from imagenetfs import wire
from imagenetfs.index import ROOT_INO, Index
from imagenetfs.ops import Core
from imagenetfs.views.tree import Tree

KINDS = ("lookup", "getattr", "read", "readdir", "ioctl")


def request(opcode: int, nodeid: int, body: bytes) -> memoryview:
    header = fuse.IN_HEADER.pack(fuse.IN_HEADER.size + len(body), opcode, 1, nodeid, 0, 0, 0, 0, 0)
    return memoryview(header + body)


def requests(index: Index, kind: str) -> list[memoryview]:
    train = index.lookup(ROOT_INO, b"train")
    directory = next(iter(index.readdir(train.ino)))
    children = list(index.readdir(directory.ino))

    def read_in(offset: int, size: int) -> bytes:
        return fuse.READ_IN.pack(0, offset, size, 0, 0, 0, 0)

    if kind == "lookup":
        return [request(fuse.LOOKUP, directory.ino, c.name + b"\0") for c in children]
    if kind == "getattr":
        return [request(fuse.GETATTR, c.ino, bytes(16)) for c in children]
    if kind == "read":
        return [request(fuse.READ, c.ino, read_in(0, 1 << 17)) for c in children]
    if kind == "readdir":
        return [
            request(fuse.READDIR, directory.ino, read_in(offset, 4096))
            for offset in range(0, len(children), 50)
        ]
    return [request(fuse.IOCTL, c.ino, bytes(32)) for c in children]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("index", type=Path)
    p.add_argument("--kind", choices=KINDS, action="append", help="(default: all)")
    p.add_argument("-n", type=int, default=20_000, help="requests per pass")
    p.add_argument("--once", action="store_true", help="one pass, no output (for callgrind)")
    args = p.parse_args()
    with Index.open(args.index) as index:
        core = Core(Tree(index), uid=0, gid=0, blocking_reads=True)
        worker = wire.Worker(core, -1)
        for kind in args.kind or KINDS:
            reqs = requests(index, kind)
            best = float("inf")
            for _ in range(1 if args.once else 5):
                started, done = time.perf_counter(), 0
                while done < args.n:
                    for r in reqs[: args.n - done]:
                        worker.handle(r)
                    done += min(len(reqs), args.n - done)
                best = min(best, (time.perf_counter() - started) / max(args.n, 1))
            if not args.once:
                print(f"{kind}: {best * 1e6:.2f} µs per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
