#!/usr/bin/env python3
"""Does the first request into shards/ hold up other requests under pyfuse3 (`--workers 0`)?

    loop.py SET INDEX MP      (VENV, WORK as for measure.py; the caller takes the locks)

Mounts SET with `--shards --workers 0`, then in one thread lists `shards/wds` (the layout is
made for it) while this thread, meanwhile, stats a file of the tree every 10 ms (a LOOKUP
each: files of `train_files.txt`, in directories the kernel has not listed); prints one JSON
line: the listing's time, and how many stats ran during it and the slowest of them.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import do_mount, umount


def main() -> None:
    src, ix, mp = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    out: dict[str, object] = {"mount": round(do_mount(src, ix, mp, True, "--workers", "0"), 3)}
    try:
        # paths the kernel has not seen (no listing of their directories: pyfuse3 lists with
        # READDIRPLUS, whose entries the kernel keeps), so each stat is a LOOKUP
        rels = (Path(src) / "train_files.txt").read_text().splitlines()[:5000]
        names = [mp / "train" / rel for rel in rels]
        done: list[float] = []

        def lister() -> None:
            started = time.monotonic()
            os.listdir(mp / "shards" / "wds")
            done.append(time.monotonic() - started)

        thread = threading.Thread(target=lister)
        thread.start()
        slowest, count = 0.0, 0
        while not done and count < len(names):
            started = time.monotonic()
            os.stat(names[count])
            slowest = max(slowest, time.monotonic() - started)
            count += 1
            time.sleep(0.01)
        thread.join()
        out.update(ls_wds=round(done[0], 3), stats_meanwhile=count, slowest_stat=round(slowest, 3))
    finally:
        umount(mp)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
