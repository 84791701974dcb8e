#!/usr/bin/env python3
"""Soak: N epochs of 8 readers over the realistic subset, on one mount. Not CI.

    scripts/soak.py                                   # real-100x100, 3 epochs, 8 readers
    scripts/soak.py --epochs 20 --readers 8 --source DIR --verify UNPACKED_DIR
    scripts/soak.py --no-evict                        # let later epochs hit the page cache

Mounts `--source` (default /var/tmp/imagenetfs-bench/real-100x100, 25k realistic JPEGs)
with the installed CLI, lists the tree once, then runs each epoch: every file of
train/val/test read whole exactly once, in a fresh random order, spread over `--readers`
processes. Every read is checked against `--verify` (an unpacked copy of the same images;
default /var/tmp/imagenetfs-bench/unpacked/<source name> when it exists), and each file's
pages are evicted from the kernel's cache first (`posix_fadvise(DONTNEED)`), so that every
epoch goes through the daemon, not just the first (the mount uses keep_cache).

Per epoch it prints files/s, MB/s, errors (by errno), wrong files, and the daemon's VmRSS,
RssAnon and thread count afterwards: what must stay flat over any number of epochs. Exit
status 1 if any read failed or differed, or the daemon died.
"""

from __future__ import annotations

import argparse
import errno
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import _venv  # noqa: F401  (re-executes with the imagenetfs environment if needed)

from imagenetfs import registry

BENCH = Path("/var/tmp/imagenetfs-bench")
CLI = str(Path(sys.executable).with_name("imagenetfs"))
SPLITS = ("train", "val", "test")

_job: dict[str, Any] = {}


def _init(mp: str, verify: str | None, evict: bool) -> None:
    _job.update(mp=mp, verify=verify, evict=evict)


def _oracle(verify: str, rel: str) -> str:
    """The unpacked file for a served path: val/<wnid>/<file> may be flat val/<file> there."""
    path = os.path.join(verify, rel)
    parts = rel.split("/")
    if parts[0] == "val" and len(parts) == 3 and not os.path.exists(path):
        return os.path.join(verify, "val", parts[2])
    return path


def _read_chunk(rels: list[str]) -> tuple[int, int, int, dict[str, int], list[str]]:
    """Read files whole: (files, bytes, wrong, errors by errno name, first problems)."""
    files = nbytes = wrong = 0
    errors: Counter[str] = Counter()
    problems: list[str] = []
    for rel in rels:
        path = os.path.join(_job["mp"], rel)
        try:
            with open(path, "rb", buffering=0) as f:
                if _job["evict"]:
                    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                data = f.read()
        except OSError as e:
            name = errno.errorcode.get(e.errno or 0, str(e.errno))
            errors[name] += 1
            if len(problems) < 5:
                problems.append(f"{rel}: {name}")
            continue
        files += 1
        nbytes += len(data)
        if _job["verify"] is not None:
            with open(_oracle(_job["verify"], rel), "rb") as f:
                if f.read() != data:
                    wrong += 1
                    if len(problems) < 5:
                        problems.append(f"{rel}: wrong bytes")
    return files, nbytes, wrong, dict(errors), problems


def status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    return out


def list_files(mp: Path) -> list[str]:
    rels = []
    for split in SPLITS:
        for dirpath, _, filenames in os.walk(mp / split):
            rels.extend(os.path.relpath(os.path.join(dirpath, f), mp) for f in filenames)
    return sorted(rels)


def run(args: argparse.Namespace, work: Path) -> int:
    env = {**os.environ, "XDG_CACHE_HOME": str(work / "cache")}
    env.pop("XDG_RUNTIME_DIR", None)
    os.environ.update(XDG_CACHE_HOME=env["XDG_CACHE_HOME"])
    os.environ.pop("XDG_RUNTIME_DIR", None)
    index = args.index or work / "index.lmdb"
    if not index.exists():
        started = time.monotonic()
        subprocess.run([CLI, "index", "--source", str(args.source), "--index", str(index), "-q"],
                       check=True, env=env, stdout=subprocess.DEVNULL)  # fmt: skip
        print(f"index built in {time.monotonic() - started:.1f} s: {index}")
    mp = work / "mp"
    mp.mkdir()
    subprocess.run([CLI, "mount", "--source", str(args.source), "--index", str(index),
                    str(mp)], check=True, env=env)  # fmt: skip
    pid = int(json.loads(registry.state_file(mp).read_text())["pid"])
    try:
        rels = list_files(mp)
        print(f"mounted {args.source} at {mp} (daemon pid {pid}): {len(rels):,} files; "
              f"{args.readers} readers, {args.epochs} epochs, verify "
              f"{args.verify or 'off'}, evict {'on' if args.evict else 'off'}")  # fmt: skip
        before = status(pid)
        print(f"daemon before: VmRSS {before['VmRSS'] / 1024:.1f} MiB, RssAnon "
              f"{before['RssAnon'] / 1024:.1f} MiB, {before['Threads']} threads\n")  # fmt: skip
        header = ("| epoch | files | files/s | MB/s | errors | wrong | VmRSS MiB | RssAnon MiB "
                  "| threads |")  # fmt: skip
        print(header)
        print("|---" * 9 + "|")
        failed = False
        context = multiprocessing.get_context("fork")
        verify = str(args.verify) if args.verify else None
        with context.Pool(args.readers, _init, (str(mp), verify, args.evict)) as pool:
            for epoch in range(1, args.epochs + 1):
                order = rels[:]
                random.Random(epoch).shuffle(order)
                chunks = [order[i : i + 64] for i in range(0, len(order), 64)]
                files = nbytes = wrong = 0
                errors: Counter[str] = Counter()
                problems: list[str] = []
                started = time.monotonic()
                for f, b, w, e, p in pool.imap_unordered(_read_chunk, chunks):
                    files, nbytes, wrong = files + f, nbytes + b, wrong + w
                    errors.update(e)
                    problems.extend(p)
                seconds = time.monotonic() - started
                if not registry.pid_alive(pid):
                    print(f"| {epoch} | the daemon died |")
                    return 1
                s = status(pid)
                error_text = ", ".join(f"{k} {v}" for k, v in errors.items()) or "0"
                print(f"| {epoch} | {files:,} | {files / seconds:,.0f} | "
                      f"{nbytes / seconds / 1e6:,.0f} | {error_text} | {wrong} | "
                      f"{s['VmRSS'] / 1024:.1f} | {s['RssAnon'] / 1024:.1f} | "
                      f"{s['Threads']} |", flush=True)  # fmt: skip
                for problem in problems[:5]:
                    print(f"  {problem}")
                failed |= bool(errors or wrong)
        after = status(pid)
        print(f"\ndaemon peak VmHWM {after['VmHWM'] / 1024:.1f} MiB")
        return 1 if failed else 0
    finally:
        subprocess.run([CLI, "umount", str(mp)], env=env, check=False)
        if os.path.ismount(mp):
            subprocess.run(["fusermount3", "-u", "-z", str(mp)], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=BENCH / "real-100x100")
    parser.add_argument("--index", type=Path, help="an index of --source (default: build one)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument(
        "--verify", type=Path, help="unpacked copy of the images to compare every read with"
    )
    parser.add_argument("--no-verify", action="store_true", help="do not compare bytes")
    parser.add_argument("--no-evict", dest="evict", action="store_false",
                        help="keep pages cached: later epochs mostly skip the daemon")  # fmt: skip
    args = parser.parse_args()
    if not (args.source / "train.squashfs").is_file():
        parser.error(f"--source {args.source}: no train.squashfs (generate one with "
                     "`python -m imagenetfs.generate`)")  # fmt: skip
    default_verify = BENCH / "unpacked" / args.source.name
    if args.no_verify:
        args.verify = None
    elif args.verify is None and default_verify.is_dir():
        args.verify = default_verify
    work = Path(tempfile.mkdtemp(prefix="imagenetfs-soak-"))
    try:
        return run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
