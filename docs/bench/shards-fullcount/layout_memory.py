#!/usr/bin/env python3
"""One serving process's cost of the shard views' layout, in-process: the Tree a worker holds
over INDEX, then `shards/wds/` listed (the layout computed), then `shards/tfrecord/` listed.
Prints time, RSS and the peak (VmHWM, reset before each step) and, with --trace, tracemalloc's
peak and the largest allocation sites.

    layout_memory.py INDEX [--trace]
"""

from __future__ import annotations

import json
import sys
import time
import tracemalloc
from pathlib import Path

from imagenetfs.index import Index
from imagenetfs.views.tree import ShardSettings, Tree


def status() -> dict[str, float]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[name] = round(int(rest.split()[0]) / 1024, 1)
    return out


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def main() -> None:
    path = Path(sys.argv[1])
    trace = "--trace" in sys.argv
    import numpy  # noqa: F401  (its import counted apart from the layout)

    if "--worker-heap" in sys.argv:  # the malloc thresholds a worker sets
        from imagenetfs.wire import steady_heap

        steady_heap()

    index = Index.open(path, verify=False)
    tree = Tree(index, shards=ShardSettings())
    steps: dict[str, object] = {"start": status()}
    assert tree.shards is not None and tree.tfrecord is not None
    for name, step in (
        ("wds", lambda: tree.shards.layout),  # type: ignore[union-attr]
        ("tfrecord", lambda: tree.tfrecord.layout),  # type: ignore[union-attr]
    ):
        reset_peak()
        if trace:
            tracemalloc.start(5)
        started = time.monotonic()
        step()
        took = time.monotonic() - started
        row: dict[str, object] = {"seconds": round(took, 2), **status()}
        if trace:
            current, peak = tracemalloc.get_traced_memory()
            row["traced_now"] = round(current / 2**20, 1)
            row["traced_peak"] = round(peak / 2**20, 1)
            top = tracemalloc.take_snapshot().statistics("lineno")[:6]
            row["top_now"] = [f"{s.size / 2**20:.1f} MiB {s.traceback[0]}" for s in top]
            tracemalloc.stop()
        steps[name] = row
    print(json.dumps(steps, indent=1))


if __name__ == "__main__":
    main()
