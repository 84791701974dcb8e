"""Named goals of speed and memory, checked on a live mount: `scripts/bench.py --check NAME`.

They were assertions in the test suite, where a shared machine's load made them fail for no
fault of the code (a test must fail only for the bug it is named after). Here each one is
measured on its own, with its numbers printed, and passes or fails:

- `open-files-rss`: a client opens 50,000 files of a mount and closes them, twice, for each
  way of serving (worker processes, `--workers 0`): the daemon's memory (VmRSS of it and its
  workers) with the files open the second time, and after closing them, is within 2 MiB of
  the first round's peak -- nothing per open file is left behind. (The suite keeps the coarse
  bound: under 100 B per open file, tests/test_reliability.py.)
- `readers-share-cpu`: two mounts of one source (two users' private mounts on one node), one
  reader each, reading at once: each reads at least a third of what one reader alone reads
  (this machine's cores shared by both readers and both daemons).
- `crafted-zip-reads`: Kaggle's zip with deflated members of 16 MiB (and over 64 MiB, left
  out): two readers each read a 16 MiB member three times, pages dropped before each read,
  in under 30 s (each member is inflated once per read of it, not once per READ request).

Each check builds its small data set under `<work>/checks/`, mounts with a state directory of
its own there, and unmounts when done.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchlib.contenders import evict

MiB = 1 << 20
CLI = str(Path(sys.executable).with_name("imagenetfs"))


class Check:
    """What one check measured, and whether it met its goal."""

    def __init__(self, name: str, goal: str) -> None:
        self.name, self.goal = name, goal
        self.measured: dict[str, Any] = {}
        self.ok = True

    def require(self, condition: bool, what: str) -> None:
        if not condition:
            self.ok = False
            self.measured.setdefault("missed", []).append(what)

    def line(self) -> str:
        verdict = "PASS" if self.ok else "FAIL"
        return f"check {self.name}: {verdict} ({self.goal}) {json.dumps(self.measured)}"


class Mount:
    """`imagenetfs mount` with a state directory of its own; unmounted on exit."""

    def __init__(self, work: Path, source: Path, index: Path, *options: str) -> None:
        self.env = {**os.environ, "IMAGENETFS_STATE_DIR": str(work / "state")}
        self.mp = work / f"mp-{time.monotonic_ns()}"
        self.mp.mkdir(parents=True)
        argv = [CLI, "mount", "--source", str(source), "--index", str(index), *options]
        subprocess.run([*argv, str(self.mp)], env=self.env, check=True, capture_output=True)
        state = next(
            json.loads(p.read_text())
            for p in (work / "state").glob("*.json")
            if json.loads(p.read_text()).get("mountpoint") == str(self.mp)
        )
        self.pid = int(state["pid"])

    def family_rss(self) -> int:
        """VmRSS of the daemon and its workers, bytes."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        total = 0
        for pid in [self.pid, *map(int, children)]:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        return total

    def close(self) -> None:
        subprocess.run([CLI, "umount", "--force", str(self.mp)], env=self.env, capture_output=True)
        with contextlib.suppress(OSError):
            self.mp.rmdir()

    def __enter__(self) -> Mount:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _dataset(work: Path, name: str, **spec: Any) -> tuple[Path, Path]:
    """A generated source under `work`/`name` and its index (built once)."""
    from imagenetfs import generate

    root = work / name
    index = root / "imagenetfs.lmdb"
    if not index.exists():
        shutil.rmtree(root, ignore_errors=True)
        generate.generate(root, generate.Spec(progress=False, **spec))
        subprocess.run([CLI, "index", "-q", "--source", str(root), "--index", str(index)],
                       check=True)  # fmt: skip
    return root, index


# --- open-files-rss ---------------------------------------------------------------------------

HANDLES = 50_000

#: A client: opens its share of the files (argv: share, then the paths as JSON on stdin's
#: first line), says "held", and closes them all when told (a second line).
HOLDER = """
import json, os, resource, sys
share = int(sys.argv[1])
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
paths = json.loads(sys.stdin.readline())
fds = [os.open(paths[i % len(paths)], os.O_RDONLY) for i in range(share)]
print("held", flush=True)
sys.stdin.readline()
for fd in fds:
    os.close(fd)
"""


def _hold_round(paths: list[str], measure: Callable[[], int]) -> int:
    """50,000 files opened by as few client processes as RLIMIT_NOFILE allows; `measure()`
    while they are open; then closed."""
    budget = resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 200
    shares = [min(budget, HANDLES - i) for i in range(0, HANDLES, budget)]
    clients = [
        subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(share)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for share in shares
    ]
    try:
        for client in clients:
            assert client.stdin is not None and client.stdout is not None
            client.stdin.write(json.dumps(paths) + "\n")
            client.stdin.flush()
        for client in clients:
            assert client.stdout is not None and client.stdout.readline() == "held\n"
        value = measure()
        for client in clients:
            client.communicate("close\n", timeout=120)
        return value
    finally:
        for client in clients:
            client.kill()
            client.wait()


def open_files_rss(work: Path) -> Check:
    check = Check("open-files-rss", "50k open files, second round within 2 MiB of the first")
    root, index = _dataset(work, "tiny", classes=20, train_per_class=100, val_per_class=5,
                           test=50, tiny=True)  # fmt: skip
    for way, options in (("workers", ()), ("pyfuse3", ("--workers", "0"))):
        with Mount(work, root, index, *options) as mount:
            paths = [str(p) for p in (mount.mp / "train").rglob("*.JPEG")]

            def settled(mount: Mount = mount) -> int:
                time.sleep(3)  # RELEASEs are asynchronous; a publish or two goes by
                return mount.family_rss()

            _hold_round(paths, lambda: 0)  # warm up: the index's pages
            baseline = settled()
            rounds = []
            for _ in range(2):
                held = _hold_round(paths, mount.family_rss)
                rounds.append((held, settled()))
            (held1, _), (held2, after2) = rounds
            check.measured[way] = {
                "baseline_kib": baseline >> 10,
                "open1_kib": held1 >> 10,
                "open2_kib": held2 >> 10,
                "closed2_kib": after2 >> 10,
            }
            check.require(held2 <= held1 + 2 * MiB, f"{way}: a second round peaks higher")
            check.require(after2 <= held1 + 2 * MiB, f"{way}: closing leaves more")
    return check


# --- readers-share-cpu ------------------------------------------------------------------------


#: One reader process: every file of MP's train/, pages dropped, for SECONDS; prints MB/s.
READER = """
import os, sys, time
from pathlib import Path
files = sorted(Path(sys.argv[1], "train").rglob("*.JPEG"))
done, started = 0, time.monotonic()
while time.monotonic() - started < float(sys.argv[2]):
    for path in files:
        with open(path, "rb") as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            done += len(f.read())
print(done / 1e6 / (time.monotonic() - started))
"""


def _read_rates(mps: list[Path], seconds: float) -> list[float]:
    """MB/s of one reader process per mount point, all reading at once."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", READER, str(mp), str(seconds)], stdout=subprocess.PIPE, text=True
        )
        for mp in mps
    ]
    return [float(proc.communicate()[0]) for proc in procs]


def readers_share_cpu(work: Path, seconds: float = 4.0) -> Check:
    check = Check("readers-share-cpu", "two mounts read at once, each >= 1/3 of one alone")
    root, index = _dataset(work, "realistic", classes=4, train_per_class=40, val_per_class=2,
                           test=2)  # fmt: skip
    with Mount(work, root, index) as a, Mount(work, root, index) as b:
        [solo] = _read_rates([a.mp], seconds)
        together = _read_rates([a.mp, b.mp], seconds)
    check.measured = {"alone_mbps": round(solo, 1), "together_mbps": [round(r) for r in together]}
    check.require(min(together) >= solo / 3, "a reader of two got less than a third")
    return check


# --- crafted-zip-reads ------------------------------------------------------------------------

CRAFTED = {"big-1.JPEG": 200 * MiB, "mid-1.JPEG": 16 * MiB, "mid-2.JPEG": 16 * MiB,
           "top.JPEG": 64 * MiB}  # fmt: skip


def crafted_zip_reads(work: Path) -> Check:
    check = Check("crafted-zip-reads", "two readers, 3 x 16 MiB deflated members each, < 30 s")
    from imagenetfs import generate, source

    root = work / "crafted-zip"
    index = root / "imagenetfs.lmdb"
    if not index.exists():
        shutil.rmtree(root, ignore_errors=True)
        generate.generate(root, generate.Spec(classes=2, train_per_class=3, val_per_class=2,
                                              test=2, tiny=True, layout="kaggle",
                                              kaggle_zip=True, progress=False))  # fmt: skip
        with zipfile.ZipFile(root / source.KAGGLE_ZIP, "a", zipfile.ZIP_DEFLATED) as z:
            for name, size in CRAFTED.items():
                with z.open(f"ILSVRC/Data/CLS-LOC/train/n01440764/{name}", "w") as f:
                    for _ in range(size // MiB):
                        f.write(bytes(MiB))
        subprocess.run([CLI, "index", "-q", "--source", str(root), "--index", str(index)],
                       check=True, capture_output=True)  # fmt: skip
    with Mount(work, root, index, "--workers", "2") as mount:
        folder = mount.mp / "train" / "n01440764"

        def read(name: str) -> None:
            for _ in range(3):
                evict(folder / name)
                data = (folder / name).read_bytes()
                assert data == bytes(CRAFTED[name]), name

        started = time.monotonic()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(read, ("mid-1.JPEG", "mid-2.JPEG")))
        took = time.monotonic() - started
    check.measured = {"seconds": round(took, 1)}
    check.require(took < 30, "two readers took 30 s or more")
    return check


CHECKS: dict[str, Callable[[Path], Check]] = {
    "open-files-rss": open_files_rss,
    "readers-share-cpu": readers_share_cpu,
    "crafted-zip-reads": crafted_zip_reads,
}


def run(names: list[str], work: Path) -> int:
    """Run the named checks (`all`: every one); print a line each; 1 if one failed."""
    wanted = list(CHECKS) if names == ["all"] else names
    unknown = [n for n in wanted if n not in CHECKS]
    if unknown:
        print(f"unknown check {', '.join(unknown)}: one of {', '.join(CHECKS)}, or all")
        return 2
    (work / "checks").mkdir(parents=True, exist_ok=True)
    failed = 0
    for name in wanted:
        result = CHECKS[name](work / "checks")
        print(result.line(), flush=True)
        failed += not result.ok
    return 1 if failed else 0
