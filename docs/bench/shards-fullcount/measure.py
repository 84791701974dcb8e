#!/usr/bin/env python3
"""Measurements of the shard views at ImageNet's full entry count (docs/bench/shards-fullcount.md).

Each subcommand does one short measured stretch and prints one JSON line; the caller takes the
locks (`flock /tmp/imagenetfs-bench.lock flock /tmp/imagenetfs-pytest.lock ...`).

    measure.py index CODE SET OUT [--image-info]   one `imagenetfs index` by the code at CODE
    measure.py mount SET INDEX MP [--shards]       mount-ready: `imagenetfs mount` to a stat
    measure.py first SET INDEX MP                  first ls/stat into shards/wds (and tfrecord)
    measure.py memory SET INDEX MP [--shards]      daemon memory after mount and after a walk
    measure.py info SET INDEX [--cold]             the image pass on real-size files
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))
from benchlib.contenders import memory

VENV = Path(os.environ.get("VENV", "/opt/imagenetfs-fullcount/venv"))
CLI = str(VENV / "bin" / "imagenetfs")
WORK = Path(os.environ.get("WORK", "/var/tmp/imagenetfs-fullcount"))


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGENETFS_", "XDG_"))}
    e["IMAGENETFS_STATE_DIR"] = str(WORK / "state")
    e["XDG_CACHE_HOME"] = str(WORK / "cache")
    return e


def index(code: str, src: str, out: str, image_info: bool) -> dict[str, object]:
    Path(out).unlink(missing_ok=True)
    cmd = [str(VENV / "bin" / "python"), "-m", "imagenetfs.cli", "index", "--source", src]
    cmd += ["--index", out, "-q"] + (["--image-info"] if image_info else [])
    started = time.monotonic()
    p = subprocess.run(cmd, env={**env(), "PYTHONPATH": code}, capture_output=True, text=True)
    took = time.monotonic() - started
    if p.returncode:
        raise SystemExit(p.stderr)
    return {"code": code, "seconds": round(took, 2), "out": p.stdout.strip().splitlines()[-1]}


def daemon_pids(mp: Path) -> list[int]:
    """The processes holding /dev/fuse for `mp`'s mount: the supervisor (its workers are its
    children and `memory` counts them)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():  # (the runs logged counted this one)
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # (the CLI's processes only: not a `flock` or `sh -c` whose command line names the
        # mount point and a lock file called imagenetfs-*, and whose children include this
        # script -- the runs logged before once-*.log counted those too)
        if str(mp).encode() in cmdline and any(
            os.path.basename(a) == b"imagenetfs" for a in cmdline[:2]
        ):
            found.append(int(pid))
    # the top one: the one whose parent is not among them
    parents = {
        p: int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1]) for p in found
    }
    return [p for p in found if parents[p] not in found]


def do_mount(src: str, ix: str, mp: Path, shards: bool, *extra: str) -> float:
    mp.mkdir(parents=True, exist_ok=True)
    cmd = [CLI, "mount", "--source", src, "--index", ix, str(mp)] + (["--shards"] if shards else [])
    cmd += extra
    started = time.monotonic()
    subprocess.run(cmd, env=env(), check=True, capture_output=True)
    while True:
        try:
            os.stat(mp / "train")
            break
        except OSError:
            time.sleep(0.001)
    return time.monotonic() - started


def umount(mp: Path) -> None:
    subprocess.run([CLI, "umount", str(mp)], env=env(), check=True, capture_output=True)


def timed(f):  # type: ignore[no-untyped-def]
    started = time.monotonic()
    r = f()
    return round(time.monotonic() - started, 3), r


def first(src: str, ix: str, mp: Path) -> dict[str, object]:
    out: dict[str, object] = {"mount": round(do_mount(src, ix, mp, True), 3)}
    try:
        out["ls_wds"], names = timed(lambda: sorted(os.listdir(mp / "shards" / "wds")))
        out["wds_entries"] = len(names)
        tars = [n for n in names if n.endswith(".tar")]
        wds = mp / "shards" / "wds"
        out["stat_first_shard"], st = timed(lambda: os.stat(wds / tars[0]))
        out["first_shard_size"] = st.st_size
        out["stat_last_shard"], _ = timed(lambda: os.stat(wds / tars[-1]))
        out["ls_tfrecord"], tf = timed(lambda: sorted(os.listdir(mp / "shards" / "tfrecord")))
        out["tfrecord_entries"] = len(tf)
        if tf:
            out["stat_tf0"], _ = timed(lambda: os.stat(mp / "shards/tfrecord" / tf[0]))
        out["mem"] = memory(daemon_pids(mp))
    finally:
        umount(mp)
    return out


def read_whole(path: Path) -> int:
    n = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            n += len(chunk)
    return n


def per_process(pids: list[int]) -> dict[str, dict[str, float]]:
    """Each process's command and Pss_Anon, Pss_File (MiB): the supervisor and its children."""
    from benchlib.contenders import _tree_pids

    out = {}
    for pid in _tree_pids(pids):
        m = _own(pid)
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        out[str(pid)] = {"cmd": b" ".join(args[1:4]).decode(errors="replace"), **m}
    return out


def _own(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("Rss", "Pss_Anon", "Pss_File"):
            out[name.lower()] = round(int(rest.split()[0]) / 1024, 1)
    return out


def mem_run(src: str, ix: str, mp: Path, shards: bool) -> dict[str, object]:
    out: dict[str, object] = {"shards": shards, "mount": round(do_mount(src, ix, mp, shards), 3)}
    try:
        pids = daemon_pids(mp)
        time.sleep(1)  # (the workers' start-up settled)
        out["after_mount"] = memory(pids)
        started = time.monotonic()
        if shards:  # walk shards/wds, stat every entry, read one train shard whole
            d = mp / "shards" / "wds"
            names = os.listdir(d)
            for name in names:
                os.stat(d / name)
            out["read"] = read_whole(d / min(n for n in names if n.endswith(".tar")))
            out["entries"] = len(names)
            tf = mp / "shards" / "tfrecord"
            tfn = os.listdir(tf)
            for name in tfn:
                os.stat(tf / name)
            out["tf_entries"] = len(tfn)
            if len(tfn) > 1:
                out["tf_read"] = read_whole(tf / min(n for n in tfn if n.startswith("train-")))
        else:  # the same shape over the tree: list train/ and val/, one class whole
            names = os.listdir(mp / "train") + os.listdir(mp / "val")
            d = mp / "train" / sorted(os.listdir(mp / "train"))[0]
            files = os.listdir(d)
            for name in files:
                os.stat(d / name)
            out["read"] = sum(read_whole(d / name) for name in files)
            out["entries"] = len(names) + len(files)
        out["walk_s"] = round(time.monotonic() - started, 3)
        out["after_walk"] = memory(pids)
        out["per_process"] = per_process(pids)
    finally:
        umount(mp)
    return out


def evict(src: str) -> None:
    """The images' pages out of the page cache (POSIX_FADV_DONTNEED), for a cold pass."""
    for image in Path(src).glob("*.squashfs"):
        fd = os.open(image, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def info(src: str, out: str, cold: bool) -> dict[str, object]:
    """`imagenetfs index --image-info` on `src`, its images evicted first when `cold`."""
    if cold:
        evict(src)
    else:  # warm: the images read once before
        for image in Path(src).glob("*.squashfs"):
            read_whole(image)
    r = index(str(Path(__file__).resolve().parents[3]), src, out, True)
    return {"cold": cold, **r}


def main() -> None:
    what, *args = sys.argv[1:]
    flags = {a for a in args if a.startswith("--")}
    args = [a for a in args if not a.startswith("--")]
    if what == "index":
        r = index(args[0], args[1], args[2], "--image-info" in flags)
    elif what == "mount":
        mp = Path(args[2])
        r = {
            "shards": "--shards" in flags,
            "ready": round(do_mount(args[0], args[1], mp, "--shards" in flags), 3),
        }
        umount(mp)
    elif what == "first":
        r = first(args[0], args[1], Path(args[2]))
    elif what == "memory":
        r = mem_run(args[0], args[1], Path(args[2]), "--shards" in flags)
    elif what == "info":
        r = info(args[0], args[1], "--cold" in flags)
    else:
        raise SystemExit(__doc__)
    print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
