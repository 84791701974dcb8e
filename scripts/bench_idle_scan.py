#!/usr/bin/env python3
"""What `--idle-timeout`'s look for users costs: one full scan of /proc (holders.Scan) with
thousands of processes on the machine, none of them using the mount (the case that unmounts:
every process is looked at to the end).

    python scripts/bench_idle_scan.py [--sleepers 3000] [--readers 50] [--fds 200] [MOUNTPOINT]

Starts `--sleepers` `sleep` processes (3 descriptors, a few mappings each: a login node's
shells and daemons) and `--readers` Python processes holding `--fds` files open each plus
their interpreter's mappings (a data loader's workers), then times `--repeat` scans for the
device of MOUNTPOINT (default: a tmpfs it mounts on a temporary directory, which nobody
uses). Prints one JSON line. Run it as root to scan every process, as the daemon of a root
mount does; as a user it scans that user's processes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _venv  # noqa: F401  (re-executes with the imagenetfs environment if needed)

from imagenetfs import holders

HOLD = """
import os, sys, time
files = [open(os.path.join(sys.argv[1], f"f{i}"), "rb") for i in range(int(sys.argv[2]))]
sys.stdout.write("ready\\n"); sys.stdout.flush()
time.sleep(3600)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mountpoint", nargs="?", type=Path)
    parser.add_argument("--sleepers", type=int, default=3000)
    parser.add_argument("--readers", type=int, default=50)
    parser.add_argument("--fds", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        point = args.mountpoint
        if point is None:
            point = Path(tmp, "mnt")
            point.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(point)], check=True)
        files = Path(tmp, "files")
        files.mkdir()
        for i in range(args.fds):
            (files / f"f{i}").write_bytes(b"x")
        started: list[subprocess.Popen[bytes]] = []
        try:
            for _ in range(args.sleepers):
                started.append(subprocess.Popen(["sleep", "3600"]))
            for _ in range(args.readers):
                started.append(
                    subprocess.Popen(
                        [sys.executable, "-c", HOLD, str(files), str(args.fds)],
                        stdout=subprocess.PIPE,
                    )
                )
            for process in started[args.sleepers :]:
                assert process.stdout is not None and process.stdout.readline() == b"ready\n"
            device = holders.device_of(Path(os.path.realpath(point)))
            assert device is not None, f"{point} is not a mount point"
            uid = None if os.getuid() == 0 else os.getuid()
            times, looked, user = [], 0, None
            for _ in range(args.repeat):
                scan = holders.Scan(device, uid, frozenset({os.getpid()}))
                t0 = time.perf_counter()
                user = scan.holder()
                times.append(time.perf_counter() - t0)
                looked = scan.processes
            best = min(times)
            print(
                json.dumps(
                    {
                        "processes": looked,
                        "fds_held": args.readers * args.fds,
                        "holder": user,
                        "seconds": [round(t, 3) for t in times],
                        "us_per_process": round(best / looked * 1e6, 1),
                        "cpus": os.cpu_count(),
                    }
                )
            )
        finally:
            for process in started:
                process.kill()
            for process in started:
                process.wait()
            if args.mountpoint is None:
                subprocess.run(["umount", str(point)], check=False)


if __name__ == "__main__":
    main()
