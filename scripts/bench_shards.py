#!/usr/bin/env python3
"""The shard view against the same shards as real files, and against the tree, in one run.

    scripts/bench_shards.py --quick      # ~2,000 realistic train files, shards of 100
    scripts/bench_shards.py              # 25,000 files, shards of 1,252 (ImageNet's size)

One generated dataset (realistic JPEGs, gzip images), mounted with `--shards`. Workloads, each
with `--readers` processes (default 8), cold (a fresh mount, and the images and copies evicted
from the page cache with POSIX_FADV_DONTNEED -- only this run's files: the machine is shared)
and warm (the same again on that mount), medians of `--repeat`:

- view: one pass over all train shards of the view with the `webdataset` library (decode off:
  the samples' bytes only), the shards dealt to the readers in turn;
- local: the same with the shards copied to local disk as real files (`cp` of the view);
- tree: every train file read whole through the same mount, in the shards' sample order, the
  files dealt to the readers in turn; and its requests to the daemon per sample (lookups,
  getattrs, opens, reads, listings: `imagenetfs status --json`) against the view's;
- tree-contiguous: the same in path order (the images' own order): what the shuffle costs;
- tfrecord view / tfrecord local: one pass over all train shards of `shards/tfrecord/` (a mount
  over an index built with `--image-info`, the CRCs' pass, made once beside the source), raw
  records (framing parsed, CRCs not checked: the bytes only), against the same shards copied
  to local disk (`bench_tfrecord`).

Rows: samples/s of each, the ratios view/local (goal >= 0.9) and view/tree, and the requests
per sample of tree/view (goal >= 10x fewer for the view). Results in `<work>/results.json`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import _venv  # noqa: F401  (re-executes with the imagenetfs environment if needed)
from benchlib.contenders import evict

from imagenetfs import generate

CLI = str(Path(sys.executable).with_name("imagenetfs"))
REQUESTS = ("lookup", "getattr", "readdir", "open", "read")


def read_shards(urls: list[str]) -> tuple[int, int]:
    import webdataset

    samples = size = 0
    if urls:
        for sample in webdataset.WebDataset(urls, shardshuffle=False, empty_check=False):
            samples += 1
            size += len(sample["jpg"])
    return samples, size


def read_files(paths: list[str]) -> tuple[int, int]:
    size = 0
    for path in paths:
        with open(path, "rb") as f:
            size += len(f.read())
    return len(paths), size


def read_records(paths: list[str]) -> tuple[int, int]:
    """Raw TFRecord records, in order: length, its CRC, the data, its CRC (not checked)."""
    records = size = 0
    for path in paths:
        with open(path, "rb", buffering=1 << 20) as f:
            while head := f.read(12):
                length = int.from_bytes(head[:8], "little")
                data = f.read(length + 4)
                if len(head) != 12 or len(data) != length + 4:
                    raise RuntimeError(f"{path}: a record cut short at {f.tell()}")
                records += 1
                size += length
    return records, size


def bench_tfrecord(
    source: Path, work: Path, per_shard: int, readers: int, repeat: int
) -> dict[str, list[float]]:
    """The tfrecord rows: the view against its shards copied to local disk, cold and warm."""
    index = work / f"index-info-{source.name}.lmdb"
    if not index.is_file():
        subprocess.run([CLI, "index", "--source", str(source), "--index", str(index),
                        "--image-info", "-q"], check=True)  # fmt: skip
    local = work / f"local-tfrecord-{source.name}-{per_shard}"
    images = sorted(source.glob("*.squashfs"))
    mp = Path(tempfile.mkdtemp(prefix="bench-tfrecord-"))

    def mount_info() -> None:
        subprocess.run([CLI, "mount", "--source", str(source), "--index", str(index), "--shards",
                        "--shard-samples", str(per_shard), str(mp)], check=True)  # fmt: skip

    rows: dict[str, list[float]] = {}
    try:
        mount_info()
        shards = sorted(str(p) for p in (mp / "shards" / "tfrecord").glob("train-*"))
        if not local.is_dir():
            local.mkdir(parents=True)
            for path in shards:
                shutil.copy(path, local)
        copies = sorted(str(p) for p in local.glob("train-*"))
        umount(mp)
        for _ in range(repeat):
            for name, items in (("tfrecord view", shards), ("tfrecord local", copies)):
                for image in images:
                    evict(image)
                for copy in copies:
                    evict(Path(copy))
                mount_info()
                try:
                    parts = [items[i::readers] for i in range(readers)]
                    for temperature in ("cold", "warm"):
                        seconds, records = timed(read_records, parts)
                        rows.setdefault(f"{name} {temperature}", []).append(records / seconds)
                finally:
                    umount(mp)
    finally:
        if os.path.ismount(mp):
            umount(mp)
        mp.rmdir()
    return rows


def timed(work: Any, parts: list[list[str]]) -> tuple[float, int]:
    """(seconds, samples) of `work` over `parts`, one process each."""
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(len(parts)) as pool:
        done = pool.map(work, parts)
    return time.perf_counter() - started, sum(n for n, _ in done)


def status(mp: Path) -> dict[str, Any]:
    out = subprocess.run([CLI, "status", "--json", str(mp)], capture_output=True, text=True)
    state = json.loads(out.stdout)
    if isinstance(state, list):
        state = next(s for s in state if s.get("mountpoint") == str(mp))
    assert isinstance(state, dict)
    return state


def requests(mp: Path) -> int:
    return sum(int(status(mp)["requests"][k]) for k in REQUESTS)


def daemon_cpu(pid: int) -> float:
    """CPU seconds of the daemon and its workers (its children) so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        pids += [int(p) for p in f.read().split()]
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def mount(source: Path, mp: Path, per_shard: int) -> None:
    subprocess.run([CLI, "mount", "--source", str(source), "--shards", "--shard-samples",
                    str(per_shard), str(mp)], check=True)  # fmt: skip


def umount(mp: Path) -> None:
    subprocess.run([CLI, "umount", str(mp)], check=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="~2,000 files, shards of 100, 1 run")
    p.add_argument("--work", type=Path, default=Path("/var/tmp/imagenetfs-bench-shards"))
    p.add_argument("--readers", type=int, default=8)
    p.add_argument("--repeat", type=int, default=None)
    p.add_argument(
        "--mksquashfs-args", default="", help="for the generated images, e.g. '-noD -noF'"
    )
    args = p.parse_args()
    # imported once here, before the readers are forked: where torch is installed, webdataset
    # imports it (~1.5 s a process), which each reader would otherwise pay inside its timing
    import webdataset  # noqa: F401

    repeat = args.repeat or (1 if args.quick else 3)
    classes, per_class, per_shard = (20, 100, 100) if args.quick else (100, 250, 1252)
    flavour = "-".join(args.mksquashfs_args.replace("-", "").split()) or "gzip"
    source = args.work / f"src-{classes}x{per_class}-{flavour}"
    if not (source / "train.squashfs").is_file():
        spec = generate.Spec(
            classes=classes,
            train_per_class=per_class,
            val_per_class=0,
            test=0,
            mksquashfs_args=tuple(args.mksquashfs_args.split()),
        )
        generate.generate(source, spec)
    images = sorted(source.glob("*.squashfs"))
    mp = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    local = args.work / f"local-{classes}x{per_class}-{per_shard}"
    rows: dict[str, list[float]] = {}
    per_sample: dict[str, float] = {}
    cpu: dict[str, list[float]] = {}  # the daemon's CPU seconds per 1,000 samples
    try:
        mount(source, mp, per_shard)
        view = mp / "shards" / "wds"
        shards = sorted(str(p) for p in view.glob("imagenet1k-train-*.tar"))
        if not local.is_dir():
            local.mkdir(parents=True)
            for path in shards:
                shutil.copy(path, local)
        copies = sorted(str(p) for p in local.glob("*.tar"))
        rels = (mp / "train_files.txt").read_text().split()
        by_key = {Path(rel).stem: str(mp / rel) for rel in rels}
        files = []  # the tree's files in the shards' sample order
        for path in shards:
            with tarfile.open(path) as tar:
                files += [by_key[m.name[:-4]] for m in tar if m.name.endswith(".jpg")]
        umount(mp)
        n = args.readers
        for _ in range(repeat):
            for name, work, items in (
                ("view", read_shards, shards),
                ("local", read_shards, copies),
                ("tree", read_files, files),
                ("tree-contiguous", read_files, sorted(files)),
            ):
                for image in images:
                    evict(image)
                for copy in copies:
                    evict(Path(copy))
                mount(source, mp, per_shard)
                try:
                    parts = [items[i::n] for i in range(n)]
                    for temperature in ("cold", "warm"):
                        before = requests(mp)
                        pid = int(status(mp)["pid"])
                        cpu_before = daemon_cpu(pid)
                        seconds, samples = timed(work, parts)
                        rows.setdefault(f"{name} {temperature}", []).append(samples / seconds)
                        cpu.setdefault(f"{name} {temperature}", []).append(
                            (daemon_cpu(pid) - cpu_before) * 1000 / samples
                        )
                        if name in ("view", "tree") and temperature == "cold":
                            time.sleep(2.5)  # the counters are published every 2 s
                            per_sample[name] = (requests(mp) - before) / samples
                finally:
                    umount(mp)
    finally:
        if os.path.ismount(mp):
            umount(mp)
        mp.rmdir()
    rows.update(bench_tfrecord(source, args.work, per_shard, args.readers, repeat))
    medians = {k: statistics.median(v) for k, v in rows.items()}
    print(f"{len(files):,} train samples in {len(shards)} shards, {args.readers} readers, "
          f"medians of {repeat}")  # fmt: skip
    cpu_medians = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"images: {flavour}")
    print(
        "| workload | cold samples/s | warm samples/s | daemon CPU s per 1,000 cold, warm |\n"
        "|---|---|---|---|"
    )
    for name in ("view", "local", "tree", "tree-contiguous"):
        print(
            f"| {name} | {medians[f'{name} cold']:,.0f} | {medians[f'{name} warm']:,.0f} | "
            f"{cpu_medians[f'{name} cold']:.2f}, {cpu_medians[f'{name} warm']:.2f} |"
        )
    for t in ("cold", "warm"):
        print(f"view/local {t}: {medians[f'view {t}'] / medians[f'local {t}']:.2f}x; "
              f"view/tree {t}: {medians[f'view {t}'] / medians[f'tree {t}']:.2f}x")  # fmt: skip
    print(f"requests per sample: tree {per_sample['tree']:.2f}, view {per_sample['view']:.3f} "
          f"({per_sample['tree'] / per_sample['view']:.0f}x fewer)")  # fmt: skip
    for name in ("tfrecord view", "tfrecord local"):
        print(f"| {name} | {medians[f'{name} cold']:,.0f} | {medians[f'{name} warm']:,.0f} |")
    for t in ("cold", "warm"):
        ratio = medians[f"tfrecord view {t}"] / medians[f"tfrecord local {t}"]
        print(f"tfrecord view/local {t}: {ratio:.2f}x")
    (args.work / "results.json").write_text(
        json.dumps(
            {
                "images": flavour,
                "rows": rows,
                "medians": medians,
                "requests_per_sample": per_sample,
                "daemon_cpu_per_1000": cpu,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
