"""The metadata storm: the backing store charges a fixed latency per metadata operation.

`scripts/storm/stormfs.c` (built here with gcc against libfuse3 on first use) is a read-only
passthrough that sleeps DELAY per LOOKUP/GETATTR/OPENDIR/READDIR/OPEN/STATFS/READLINK, with at
most INFLIGHT of them served at once (a metadata server's queue), reads for free (or, with
`Config.read_mbps`, at a capped total bandwidth: the shared-filesystem scenario,
benchlib/shared.py), and counts every operation and the bytes read. It is mounted over the
work directory, which holds both the unpacked tree (`unpacked/<set>/`) and hard links to the
set's images (`storm-images/<set>/`: the set directory itself may be a symlink, which a
passthrough would leave pointing outside).

Compared: the unpacked tree read through the passthrough, and imagenetfs whose `--source` is
the images through the passthrough (index on local disk, built through the passthrough
beforehand, since the index records image paths). Every measurement starts from a fresh
passthrough mount and dropped caches; the passthrough's counters are read before and after.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib.contenders import MountFailed

SOURCE = Path(__file__).resolve().parent.parent / "storm" / "stormfs.c"
METADATA_OPS = ("LOOKUP", "GETATTR", "OPENDIR", "READDIR", "OPEN", "STATFS", "READLINK")


def build(work: Path) -> Path:
    exe = work / "bin" / "stormfs"
    if exe.exists() and exe.stat().st_mtime >= SOURCE.stat().st_mtime:
        return exe
    exe.parent.mkdir(parents=True, exist_ok=True)
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True, check=True
    ).stdout.split()
    cmd = ["gcc", "-O2", "-Wall", "-o", str(exe), str(SOURCE), *flags, "-lpthread"]
    subprocess.run(cmd, check=True)
    return exe


def link_images(work: Path, setdir: Path) -> Path:
    """Hard links to the set's images and listings under `<work>/storm-images/<set>/`."""
    out = work / "storm-images" / setdir.name
    out.mkdir(parents=True, exist_ok=True)
    for src in setdir.resolve().iterdir():
        if src.suffix in (".squashfs", ".txt") and not (out / src.name).exists():
            try:
                os.link(src, out / src.name)
            except OSError:
                shutil.copy2(src, out / src.name)
    return out


@dataclass(frozen=True)
class Config:
    delay_ms: float = 0.5
    inflight: int = 4
    timeout_s: float = 1.0
    read_mbps: float = 0.0  # total READ bandwidth cap, 10^6 bytes/s; 0: none
    read_ms: float = 0.0  # a round trip per READ, after its transfer (not holding the link)


class Stormfs:
    """One mount of the passthrough; `counts()` reads its per-opcode counters and `stats()`
    everything it reports, `read_bytes` included (SIGUSR1 -> stats file)."""

    def __init__(self, exe: Path, source: Path, mp: Path, cfg: Config) -> None:
        self.mp = mp
        self.stats_file = mp.parent / f"{mp.name}.stats.json"
        self.stats_file.unlink(missing_ok=True)
        mp.mkdir(parents=True, exist_ok=True)
        argv = [str(exe), "-f", "-d", str(cfg.delay_ms), "-q", str(cfg.inflight)]
        argv += ["-t", str(cfg.timeout_s), "-b", str(cfg.read_mbps), "-l", str(cfg.read_ms)]
        argv += ["-s", str(self.stats_file), str(source), str(mp)]
        self.proc = subprocess.Popen(argv)
        end = time.monotonic() + 30
        while not os.path.ismount(mp):
            if self.proc.poll() is not None or time.monotonic() > end:
                self.unmount()
                raise MountFailed("stormfs did not mount")
            time.sleep(0.005)
        self._seq = 0

    def stats(self) -> dict[str, Any]:
        """A fresh copy of the stats file: {"ops": {...}, "read_bytes": n, ...}."""
        self.proc.send_signal(signal.SIGUSR1)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                data: dict[str, Any] = json.loads(self.stats_file.read_text())
                if data["seq"] > self._seq:
                    self._seq = data["seq"]
                    return data
            except (OSError, ValueError):
                pass
            time.sleep(0.002)
        raise MountFailed("stormfs did not write its counters")

    def counts(self) -> dict[str, int]:
        return dict(self.stats()["ops"])

    def unmount(self) -> None:
        if os.path.ismount(self.mp):
            r = subprocess.run(["fusermount3", "-u", str(self.mp)], capture_output=True)
            if r.returncode != 0:
                subprocess.run(["fusermount3", "-u", "-z", str(self.mp)], capture_output=True)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


def metadata_ops(d: dict[str, int]) -> int:
    return sum(d.get(k, 0) for k in METADATA_OPS)
