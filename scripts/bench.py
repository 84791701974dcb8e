#!/usr/bin/env python3
"""imagenetfs against its peers, on the same data, in one run (issue 6 parts 1 and 2).

    scripts/bench.py --quick              # a few minutes: 100k tiny entries, 5k realistic files
    scripts/bench.py                      # full: 1.43M tiny entries, 25k realistic files, 3 repeats
    scripts/bench.py --only imagenetfs,squashfuse_ll --variants gzip --no-storm
    scripts/bench.py --quick --tars       # and the official tars as a source (issue 15)
    scripts/bench.py --quick --variants tars --no-storm --no-shared   # the tars alone
    scripts/bench.py --quick --variants tars --only imagenetfs-tar,ratarmount-tar --no-meta \
        --no-storm --no-shared --sorted-only     # one reader in the tars' order
    scripts/bench.py --quick --pipeline --no-meta --no-reads --no-storm --no-shared --repeat 3
                                          # the input pipeline alone (torch from the test env)

Contenders: imagenetfs; the kernel's SquashFS (loop mount, root only); squashfuse and
squashfuse_ll (one daemon per image); ratarmount (PyPI, in the benchmark's own venv
`<work>/bench-venv`, made on first use together with matplotlib for the plot); the unpacked
tree on local disk; the FUSE floor (scripts/bench/floorfs.c: a minimal libfuse 3 server with
imagenetfs's protocol choices and no other work, serving the unpacked tree's bytes from one
file; like the unpacked tree measured once for all variants). Every contender serves the same
files: each split's image root (train `<wnid>/<file>`, flat val and test), which imagenetfs
serves as `train/`, `val/<wnid>/` and `test/`.

Workloads, on fresh mounts with caches dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`,
root only) unless said otherwise:
- metadata, on the metadata set (full ImageNet entry count, tiny files): first-mount build
  (contenders with an index: imagenetfs, ratarmount), mount-ready time (from the mount command
  to a successful stat), `os.walk` of the whole tree, `os.stat` of every file after that walk
  (same mount) and on a fresh mount;
- reads, on the realistic set: every file read whole in random order by 1 and by 8 reader
  processes, cold (fresh mount, caches dropped) and warm (the next epoch on the same mount),
  then an epoch of 8 readers on a fresh mount with the images (and any index) still in the page
  cache (`read 8 fresh cached`: the per-file cost of a first epoch without the disk's), each
  epoch also as a fraction of the floor's; each with its MB/s and CPU seconds per GB read: the
  daemon's (user + system of the processes serving the mount and their children, from
  /proc/<pid>/stat; none for the kernel mount and the unpacked tree) and the readers' (their own
  user + system, which holds the kernel's work on their behalf); the daemons' memory after each
  of 3 epochs of 8 readers: RSS, peak RSS (VmHWM), PSS and USS (/proc/<pid>/smaps_rollup),
  summed over the daemon and its children (imagenetfs: the supervisor and its workers); the same
  memory after the walk and stat of the metadata set (in a full run: at ImageNet's entry count);
- one reader, every file in the order its images store them, fresh mount, caches dropped
  (`read 1 sorted cold`: what `cp -r` or a loop over sorted paths does; over the official tars
  served as they are, the tars' order); `--sorted-only` runs this row alone of the reads;
- the metadata storm (scripts/storm/stormfs.c, see benchlib/storm.py), once per
  --storm-delay-ms value (default 0.5 and 5 ms per metadata operation);
- the shared filesystem (issue 13, benchlib/shared.py): the images behind stormfs with its
  metadata delay and a read bandwidth cap (--shared-mbps), served by imagenetfs as they are
  (`none`), staging them to local disk (`stage`: `mount --stage`), and after the user's `cp`
  to local disk (`manual`): time to first file, two epochs, bytes read from the shared
  filesystem. Just this scenario: `scripts/bench.py --quick --no-meta --no-reads --no-storm`.
- the input pipeline (`--pipeline`, benchlib/pipeline.py): torchvision's ImageFolder,
  RandomResizedCrop(224), flip, ToTensor, Normalize and a DataLoader with a worker per core
  over ~3,000 real-size train JPEGs (`--pipeline-images`), on the unpacked tree, the kernel's
  mount, squashfuse_ll, imagenetfs and the floor, cold and warm, in interleaved rounds
  (--repeat): images/s, and the daemon's CPU seconds per 1,000 images. torch and
  torchvision come from the test environment (`bash scripts/test.sh` makes it); without
  them the pipeline is reported not run, with the reason.
Both image variants: mksquashfs's default gzip and `-noD -noF` (uncompressed). Medians over
--repeat runs; every ratio is contender / imagenetfs (above 1: imagenetfs is faster/smaller).

The official tars (issue 15, opt-in: `--tars`, i.e. the variant "tars" added to --variants):
each scale's sets again as the ILSVRC2012 downloads (benchlib/data.py: the same files, bytes
checked), served by ratarmount-tar (`ratarmount --recursive`, its home ground),
imagenetfs-tar (`imagenetfs mount --source <the tars>`) and imagenetfs-packed (`imagenetfs
pack` of the tars, or of the gzip images with `--pack-from images`, then a mount of the
packed set); the unpacked tree beside them. The same workloads and file lists, each file at
its path inside each mount (benchlib/contenders.py); the first-mount build is each one's index
build from the tars (imagenetfs-packed: pack + first mount, the pack alone in a row of its
own). A contender that cannot run yet is reported unavailable, with its reason. Ratios in
that table are contender / imagenetfs-tar.
Results: `<out>/results.md`, `results.json`, `results.png`. Everything mounted is unmounted
on any exit, including Ctrl-C and SIGTERM.

Goals of speed and memory, pass or fail, instead of the benchmark (benchlib/checks.py): the
daemon's memory under 50,000 open files, two private mounts read side by side, a crafted zip's
members read quickly. `scripts/bench.py --check all`, or `--check open-files-rss`,
`--check readers-share-cpu`, `--check crafted-zip-reads` (comma-separated for several);
one line each, exit status 1 if one missed its goal.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _venv  # noqa: F401  (re-executes with the imagenetfs environment if needed)
from benchlib import checks, data, pipeline, report, shared, storm
from benchlib import contenders as C
from benchlib.workloads import Readers, read_timed, stat_all, walk

REPO = Path(__file__).resolve().parent.parent
#: What a contender's failure raises: recorded, and the run goes on.
FAILURES = (C.MountFailed, OSError, RuntimeError, subprocess.SubprocessError)
ORDER = ["imagenetfs", "kernel", "squashfuse", "squashfuse_ll", "ratarmount", "unpacked", "floor"]
#: Served the same for every image variant: measured once, shown under each variant.
ONCE = ("unpacked", "floor")
TARS = "tars"  # the variant of the official tars, and its contenders (--tars)
TAR_ORDER = [*report.TAR_WHO, "unpacked"]
SERVE_TARS = ("imagenetfs-tar", "ratarmount-tar")  # (imagenetfs-packed serves its own images)


def note(msg: str) -> None:
    print(f"bench {time.strftime('%H:%M:%S')}: {msg}", file=sys.stderr, flush=True)


class Run:
    """One benchmark run: the registry of mounts, the reader pool and the results."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work: Path = args.work
        self.mounts = C.Mounts()
        self.readers = Readers(8)
        self.dropped = True
        # results[variant][row][contender] = list of values; extra[...] = anything else
        self.results: dict[str, dict[str, dict[str, list[float]]]] = {}
        self.extra: dict[str, Any] = {"entries": {}, "rss_by_epoch": {}, "errors": []}
        self.tar_members: dict[Path, dict[tuple[str, str], tuple[int, int]]] = {}

    def drop(self) -> None:
        if not C.drop_caches():
            self.dropped = False

    def record(self, variant: str, row: str, who: str, value: float | None) -> None:
        if value is not None:
            self.results.setdefault(variant, {}).setdefault(row, {}).setdefault(who, []).append(
                value
            )

    def error(self, variant: str, who: str, what: str, e: BaseException) -> None:
        msg = f"{who} ({variant}, {what}): {type(e).__name__}: {e}"
        note(f"FAILED {msg}")
        self.extra["errors"].append(msg)

    def mounted(self, c: C.Contender, setdir: Path, probe: data.File) -> tuple[C.Mounted, float]:
        mp = self.work / "mnt" / c.name
        t = time.perf_counter()
        m = self.mounts.add(c.mount(setdir, mp, probe))
        return m, time.perf_counter() - t

    # --- metadata workloads --------------------------------------------------------------

    def meta(self, variant: str, setdir: Path, c: C.Contender, files: list[data.File], rep: int):
        probe = files[0]
        if c.has_index and rep == 0:
            c.forget_index(setdir)
            self.drop()
            m, built = self.mounted(c, setdir, probe)
            self.mounts.release(m)
            self.record(variant, "first-mount build", c.name, built)
            packed = getattr(c, "last_pack", None)  # imagenetfs-packed: the pack alone
            self.record(variant, "pack", c.name, packed)
            more = f" (pack {packed:.2f} s)" if packed is not None else ""
            note(f"[{variant}] {c.name}: first-mount build {built:.2f} s{more}")
        self.drop()
        m, ready = self.mounted(c, setdir, probe)
        if c.name != "unpacked":
            self.record(variant, "mount ready", c.name, ready)
        t_walk, entries = walk(m.walk_tops)
        self.extra["entries"][c.name] = entries
        paths = [m.path(f) for f in files]
        t_stat = stat_all(paths)
        mem = C.memory(m.pids) if m.pids else None
        self.mounts.release(m)
        if mem is not None:  # the daemon with every entry looked up once
            for row, what in report.META_MEM_ROWS.items():
                self.record(variant, row, c.name, mem[what])
        self.record(variant, "walk", c.name, t_walk)
        self.record(variant, "stat after walk", c.name, t_stat)
        self.drop()
        m, _ = self.mounted(c, setdir, probe)
        t_fresh = stat_all(paths)
        self.mounts.release(m)
        self.record(variant, "stat fresh mount", c.name, t_fresh)
        note(
            f"[{variant}] {c.name}: ready {ready:.3f} s, walk {t_walk:.2f} s ({entries:,} "
            f"entries), stat after walk {t_stat:.2f} s, stat fresh {t_fresh:.2f} s"
            + (
                f"; RSS/PSS/USS {mem['rss']:.1f}/{mem['pss']:.1f}/{mem['uss']:.1f} MiB"
                if mem
                else ""
            )
        )

    # --- read workloads ------------------------------------------------------------------

    def reads(self, variant: str, setdir: Path, c: C.Contender, files: list[data.File], rep: int):
        if self.args.sorted_only:
            self.sorted_reads(variant, setdir, c, files)
            return
        total = sum(f.size for f in files)
        seed = 1000 * rep
        key = f"{variant}/{c.name}"

        def epoch(m: C.Mounted, paths: list[str], readers: int, s: int, row: str | None) -> float:
            """One epoch; with `row` (report.READ_ROWS), its time, MB/s and CPU s per GB."""
            cpu0 = C.cpu_seconds(m.pids)
            dt, nbytes = self.readers.epoch(paths, readers, s)
            daemon = C.cpu_seconds(m.pids) - cpu0 if m.pids else None
            if nbytes != total:
                raise RuntimeError(f"read {nbytes:,} bytes, expected {total:,}")
            if row is not None:
                self.record(variant, row, c.name, dt)
                gb = nbytes / 1e9
                readers_cpu = self.readers.last_cpu
                for what, v in (
                    ("MB/s", nbytes / 1e6 / dt),
                    ("daemon CPU s/GB", None if daemon is None else daemon / gb),
                    ("readers CPU s/GB", readers_cpu / gb),
                    ("CPU s/GB", ((daemon or 0.0) + readers_cpu) / gb),
                ):
                    self.record(variant, report.cpu_row(row, what), c.name, v)
            return dt

        self.drop()
        m, _ = self.mounted(c, setdir, files[0])
        paths = [m.path(f) for f in files]
        cold1 = epoch(m, paths, 1, seed + 1, "read 1 cold")
        warm1 = epoch(m, paths, 1, seed + 2, "read 1 warm")
        self.mounts.release(m)
        self.drop()
        m, _ = self.mounted(c, setdir, files[0])
        times, mem = [], []
        for e, row in enumerate(["read 8 cold", "read 8 warm", None]):
            times.append(epoch(m, paths, 8, seed + 3 + e, row))
            mem.append(C.memory(m.pids))
        self.mounts.release(m)
        # a fresh mount, the images (and an index) still in the page cache: the kernel's
        # and the daemon's per-file work without the disk's
        m, _ = self.mounted(c, setdir, files[0])
        fresh = epoch(m, paths, 8, seed + 6, "read 8 fresh cached")
        self.mounts.release(m)
        self.sorted_reads(variant, setdir, c, files)
        if m.pids:
            last = mem[-1]
            for row, what in report.MEM_ROWS.items():
                self.record(variant, row, c.name, last[what])
            for what in ("rss", "pss", "uss", "pss_anon"):
                by_epoch = self.extra.setdefault(f"{what}_by_epoch", {}).setdefault(key, [])
                by_epoch.append([x[what] for x in mem])
            self.extra.setdefault("daemon_procs", {})[key] = int(last["procs"])
        n = len(files)
        mb = total / 1e6
        note(
            f"[{variant}] {c.name}: 1 reader {n / cold1:,.0f}/{n / warm1:,.0f} files/s "
            f"cold/warm, 8 readers {n / times[0]:,.0f}/{n / times[1]:,.0f} "
            f"({mb / times[0]:,.0f}/{mb / times[1]:,.0f} MB/s), fresh mount cached "
            f"{n / fresh:,.0f}"
            + (
                f", {int(mem[-1]['procs'])} daemon process(es), RSS/PSS/USS by epoch "
                + ", ".join(f"{x['rss']:.1f}/{x['pss']:.1f}/{x['uss']:.1f}" for x in mem)
                + f" MiB, peak RSS {mem[-1]['hwm']:.1f}"
                if m.pids
                else ""
            )
        )

    def sorted_reads(self, variant: str, setdir: Path, c: C.Contender, files: list[data.File]):
        """One reader, every file in the order its images store them, on a fresh mount,
        caches dropped: row "read 1 sorted cold". For images, the order the set lists them
        (mksquashfs stores a directory's files sorted by name: what `cp -r`, `tar` or a loop
        over sorted paths read); for the official tars served as they are, the tars' own
        order (`tar tf`: the class tars' members need not be sorted by name)."""
        total = sum(f.size for f in files)
        if variant == TARS and c.name in SERVE_TARS:
            files = self.tar_order(setdir, files)
        self.drop()
        m, _ = self.mounted(c, setdir, files[0])
        paths = [m.path(f) for f in files]
        self.drop()
        t = time.perf_counter()
        nbytes, _ = read_timed(paths)
        dt = time.perf_counter() - t
        self.mounts.release(m)
        if nbytes != total:
            raise RuntimeError(f"read {nbytes:,} bytes, expected {total:,}")
        self.record(variant, "read 1 sorted cold", c.name, dt)
        note(f"[{variant}] {c.name}: 1 reader, sorted order, cold: {len(files) / dt:,.0f} files/s")

    def tar_order(self, setdir: Path, files: list[data.File]) -> list[data.File]:
        """`files` in the order their split's tar stores them, split by split."""
        if setdir not in self.tar_members:
            self.tar_members[setdir] = data.tar_members(setdir)
        where = self.tar_members[setdir]
        splits = list(dict.fromkeys(f.split for f in files))
        return sorted(files, key=lambda f: (splits.index(f.split), where[(f.split, f.relpath)]))

    # --- the metadata storm --------------------------------------------------------------

    def storm(self, scale: data.Scale, setdir: Path, files: list[data.File], rep: int) -> None:
        """The storm once per --storm-delay-ms value: the first one's results in
        extra["storm"] (as before there were several), the others' in extra["more_storms"]."""
        a = self.args
        exe = storm.build(self.work)
        storm.link_images(self.work, setdir)
        smp = self.work / "mnt" / "storm"
        images = smp / "storm-images" / setdir.name
        inet = C.Imagenetfs(self.work, a.imagenetfs_src, tag="storm-")
        tree = smp / "unpacked" / scale.name
        for i, delay in enumerate(a.storm_delays):
            cfg = storm.Config(delay, a.storm_inflight, a.storm_timeout)

            def backing(cfg: storm.Config = cfg) -> storm.Stormfs:
                s = storm.Stormfs(exe, self.work, smp, cfg)
                self.mounts.add(C.Mounted("stormfs", {}, [], unmount=s.unmount))
                return s

            if rep == 0 and i == 0:  # the index, on local disk, built through the passthrough
                inet.forget_index(images)
                backing()
                cmd = [*inet.cmd, "index", "-q", "--source", str(images)]
                cmd += ["--index", str(inet.index_path(images))]
                subprocess.run(cmd, env=inet.env, cwd=inet.cwd, check=True, capture_output=True)
                self.mounts.close()
            fresh = {"config": cfg.__dict__, "files": len(files), "variant": a.storm_variant}
            if i == 0:
                out = self.extra.setdefault("storm", fresh)
            else:
                more = self.extra.setdefault("more_storms", [])
                if len(more) < i:  # the first repeat
                    more.append(fresh)
                out = more[i - 1]
            for who in ("unpacked", "imagenetfs"):
                self.storm_side(who, out, backing, inet, images, tree, files, rep)

    def storm_side(
        self,
        who: str,
        out: dict[str, Any],
        backing: Callable[[], storm.Stormfs],
        inet: C.Imagenetfs,
        images: Path,
        tree: Path,
        files: list[data.File],
        rep: int,
    ) -> None:
        n = len(files)

        def rec(row: str, v: Any) -> None:
            out.setdefault(row, {}).setdefault(who, []).append(v)

        def unpacked_path(f: data.File) -> str:
            return f"{tree}/{f.split}/{f.relpath}"

        def start() -> tuple[storm.Stormfs, Callable[[data.File], str], list[Path]]:
            self.drop()
            s = backing()
            if who == "unpacked":
                return s, unpacked_path, [tree]
            c0 = s.counts()
            m, ready = self.mounted(inet, images, files[0])
            rec("mount ready (s)", ready)
            rec("mount: backing metadata ops", storm.metadata_ops(storm.delta(c0, s.counts())))
            return s, m.path, m.walk_tops

        s, path, tops = start()
        c0 = s.counts()
        t_walk, _ = walk(tops)
        d = storm.delta(c0, s.counts())
        rec("walk (s)", t_walk)
        rec("walk: backing metadata ops", storm.metadata_ops(d))
        self.mounts.close()
        delay = f"{out['config']['delay_ms']:g} ms"
        ops = storm.metadata_ops(d)
        note(f"storm {delay} {who}: walk {t_walk:.2f} s, {ops} backing metadata ops")
        for readers, epochs in ((1, 1), (8, 2)):
            s, path, _ = start()
            paths = [path(f) for f in files]
            for e in range(epochs):
                c0 = s.counts()
                dt, _ = self.readers.epoch(paths, readers, 1000 * rep + 10 + e)
                d = storm.delta(c0, s.counts())
                label = f"epoch {readers} reader{'s' if readers > 1 else ''} " + (
                    "cold" if e == 0 else "warm"
                )
                per_file = storm.metadata_ops(d) / n
                rec(f"{label} (s)", dt)
                rec(f"{label}: backing metadata ops per file", per_file)
                rec(f"{label}: ops by kind", d)
                note(f"storm {delay} {who}: {label} {dt:.2f} s, {per_file:.3f} ops/file, {d}")
            self.mounts.close()

    # --- the shared filesystem (issue 13) -------------------------------------------------

    def shared(self, variant: str, setdir: Path, files: list[data.File], rep: int) -> None:
        """The shared-filesystem scenario on one set (see benchlib/shared.py)."""
        a = self.args
        exe = storm.build(self.work)
        storm.link_images(self.work, setdir)
        smp = self.work / "mnt" / "shared"
        images = smp / setdir.name  # the set on the "shared filesystem"
        local = self.work / "shared-local"
        manual_dir = local / "manual" / setdir.name
        cfg = storm.Config(a.storm_delays[0], a.storm_inflight, a.storm_timeout, a.shared_mbps)
        out = self.extra.setdefault(
            "shared",
            {
                "config": {**cfg.__dict__, "stage_rate": a.shared_stage_rate, "local": str(local)},
                "files": len(files),
                "bytes": sum(f.size for f in files),
                "image_bytes": {},
                "results": {},
                "failed": {},
                "staging": {},
                "index": {},
            },
        )
        out["image_bytes"][variant] = shared.image_bytes(setdir)

        def backing(c: storm.Config = cfg) -> storm.Stormfs:
            s = storm.Stormfs(exe, self.work / "storm-images", smp, c)
            self.mounts.add(C.Mounted("stormfs", {}, [], unmount=s.unmount))
            return s

        # The index, built once per set and run of the bench: from the local images when this
        # imagenetfs has the relocatable index (one index for every --source), else one per
        # source path, the shared one built through an uncapped stormfs.
        # TODO: once every imagenetfs benched has the relocatable index, drop the per-path
        # indexes (inet_local, the "shared-local-" tag) and `shared.relocatable`.
        inet_shared = C.Imagenetfs(self.work, a.imagenetfs_src, tag="shared-")
        inet_local = C.Imagenetfs(self.work, a.imagenetfs_src, tag="shared-local-")
        if rep == 0 or variant not in out["index"]:
            index = shared.build_index(inet_shared, setdir)
            if shared.relocatable(inet_shared, index):
                out["index"][variant] = "one relocatable index, built from the local set"
            else:
                out["index"][variant] = "one index per source path (not relocatable)"
                backing(storm.Config(0, a.storm_inflight, a.storm_timeout))
                shared.build_index(inet_shared, images)
                self.mounts.close()
                shared.copy_set(setdir, shared.empty_dir(manual_dir))
                shared.build_index(inet_local, manual_dir)
            note(f"shared [{variant}]: {out['index'][variant]}")
        if out["index"][variant].startswith("one relocatable"):
            inet_local = inet_shared
        for who in a.shared_who.split(","):
            try:
                self.shared_side(
                    who,
                    variant,
                    out,
                    backing,
                    inet_shared,
                    inet_local,
                    images,
                    manual_dir,
                    files,
                    rep,
                )
            except FAILURES as e:
                out["failed"].setdefault(variant, {})[who] = f"{type(e).__name__}: {e}"
                self.error(variant, f"shared {who}", "shared", e)
            finally:
                self.mounts.close()
                for d in (local / "stage", manual_dir):
                    shutil.rmtree(d, ignore_errors=True)

    def shared_side(
        self,
        who: str,
        variant: str,
        out: dict[str, Any],
        backing: Callable[[], storm.Stormfs],
        inet_shared: C.Imagenetfs,
        inet_local: C.Imagenetfs,
        images: Path,
        manual_dir: Path,
        files: list[data.File],
        rep: int,
    ) -> None:
        a = self.args
        total = sum(f.size for f in files)
        mp = self.work / "mnt" / "imagenetfs"
        mp.mkdir(parents=True, exist_ok=True)
        seed = 1000 * rep + 20

        def epoch(paths: list[str], s: int) -> float:
            dt, nbytes = self.readers.epoch(paths, 8, s)
            if nbytes != total:
                raise RuntimeError(f"read {nbytes:,} bytes, expected {total:,}")
            return dt

        extra: list[str] = []
        inet, source = inet_shared, images
        if who == "stage":
            extra = ["--stage", str(shared.empty_dir(self.work / "shared-local" / "stage"))]
            if a.shared_stage_rate:
                extra += ["--stage-rate", a.shared_stage_rate]
        elif who == "manual":
            inet, source = inet_local, shared.empty_dir(manual_dir)
        elif who != "none":
            raise RuntimeError(f"unknown contender {who!r} (--shared-who: none,stage,manual)")
        row: dict[str, float] = {}  # recorded once the run is whole
        self.drop()
        s = backing()
        b0 = s.stats()
        t0 = time.perf_counter()
        if who == "manual":
            shared.copy_set(images, manual_dir)
            row["local copy"] = time.perf_counter() - t0
        m = self.mounts.add(inet.mount(source, mp, files[0], extra=extra, rebuild=False))
        watch = None
        if who == "stage":  # from the mount on: staging may be done before epoch 1 is
            watch = shared.Watch(mp, timeout=300 + 10 * total / (a.shared_mbps * 1e6 or 1e9))
        try:
            with open(m.path(files[0]), "rb") as f:
                f.read()
            row["first file"] = time.perf_counter() - t0
            paths = [m.path(f) for f in files]
            row["epoch 1"] = epoch(paths, seed)
            if watch is not None:
                done_at, st = watch.result()
                row["local copy"] = done_at - t0
                out["staging"][variant] = st
                note(
                    f"shared [{variant}] stage: seen staged {done_at - t0:.1f} s after the "
                    f"mount command (staging says {st.get('seconds', 0):.1f} s); "
                    f"{shared.describe(st)}"
                )
        finally:
            if watch is not None:
                watch.stop()
        self.drop()
        b1 = s.stats()
        row["epoch 2"] = epoch(paths, seed + 1)
        b2 = s.stats()
        row["shared GB"] = (b2["read_bytes"] - b0["read_bytes"]) / 1e9
        row["shared GB epoch 2"] = (b2["read_bytes"] - b1["read_bytes"]) / 1e9
        row["shared metadata ops"] = storm.metadata_ops(storm.delta(b0["ops"], b2["ops"]))
        for key, v in row.items():
            out["results"].setdefault(variant, {}).setdefault(key, {}).setdefault(who, []).append(v)
        note(f"shared [{variant}] {who}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items()))

    # --- the input pipeline ----------------------------------------------------------------

    def pipeline(
        self,
        epochs: pipeline.Epochs,
        sets: dict[str, Path],
        scale: data.Scale,
        who: dict[str, C.Contender],
        rounds: int,
    ) -> None:
        """Interleaved rounds of the input pipeline (benchlib/pipeline.py), every variant
        of `sets`, every contender of `who` (the unpacked tree and the floor once, as they
        do not depend on the variant)."""
        a = self.args
        workers = a.pipeline_workers or os.cpu_count() or 2
        listing, n = pipeline.subset(self.work, scale, a.pipeline_images)
        probe = next(f for f in data.files(self.work, scale) if f.split == "train")
        out = self.extra.setdefault("pipeline", {"results": {}, "runs": {}, "failed": {}})
        out["config"] = {
            "images": n,
            "set": scale.name,
            "batch": a.pipeline_batch,
            "workers": workers,
            "rounds": rounds,
            "python": a.pipeline_python_said,
        }
        order = [(v, w) for v in sets for w in who if w not in ONCE or v == next(iter(sets))]
        for r in range(rounds):
            k = r % len(order)
            for variant, name in order[k:] + order[:k]:
                c = who[name]
                try:
                    self.drop()
                    m, _ = self.mounted(c, sets[variant], probe)
                    got = pipeline.one(epochs, m, listing, n, 100 * r, workers, a.pipeline_batch)
                except FAILURES as e:
                    self.error(variant, name, "pipeline", e)
                    out["failed"][name] = f"{type(e).__name__}: {e}"
                    continue
                finally:
                    self.mounts.close()
                variants = list(sets) if name in ONCE else [variant]
                for v in variants:
                    res = out["results"].setdefault(v, {})
                    for row, value in got.items():
                        res.setdefault(row, {}).setdefault(name, []).append(value)
                    runs = out["runs"].setdefault(v, [])
                    while len(runs) <= r:
                        runs.append({})
                    runs[r][name] = got
                cpu = got.get("cold daemon CPU s/1k")
                note(
                    f"pipeline [{variant}] {name}, round {r + 1}: "
                    f"{got['cold images/s']:,.0f} / {got['warm images/s']:,.0f} images/s "
                    "cold / warm"
                    + (f", daemon {cpu:.2f} / {got['warm daemon CPU s/1k']:.2f} CPU s per 1k"
                       if cpu is not None else "")
                )  # fmt: skip


def machine(args: argparse.Namespace, venv: Path) -> dict[str, Any]:
    def sh(*cmd: str) -> str:
        """The first line a command prints, "n/a" if it fails (e.g. git in a snapshot)."""
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return "n/a"
        out = r.stdout or r.stderr
        return out.strip().splitlines()[0] if r.returncode == 0 and out.strip() else "n/a"

    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    src = args.imagenetfs_src or REPO
    dirty = sh("git", "-C", str(REPO), "status", "--short", "--", "imagenetfs")
    return {
        "nproc": os.cpu_count(),
        "ram_gib": round(int(mem) / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "libfuse": sh("pkg-config", "--modversion", "fuse3"),
        "squashfuse": sh("dpkg-query", "-W", "-f=${Version}", "squashfuse"),
        "ratarmount": sh(str(venv / "bin" / "ratarmount"), "--version"),
        "imagenetfs_src": str(src),
        "imagenetfs_commit": sh("git", "-C", str(REPO), "rev-parse", "--short", "HEAD"),
        "imagenetfs_dirty": bool(dirty) if args.imagenetfs_src is None else "snapshot",
        "loadavg_start": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/var/tmp/imagenetfs-bench"))
    p.add_argument("--out", type=Path, help="results dir (default docs/bench, or docs/bench/quick)")
    p.add_argument("--quick", action="store_true", help="small sets, 1 repeat")
    p.add_argument("--repeat", type=int, help="runs per measurement (default 3; --quick: 1)")
    p.add_argument(
        "--meta-repeat", type=int, help="runs of the metadata workloads (default: --repeat)"
    )
    p.add_argument("--only", help="comma-separated contenders (default: all)")
    p.add_argument(
        "--variants", default="gzip,noD-noF", help=f"of gzip, noD-noF, {TARS} (see --tars)"
    )
    p.add_argument(
        "--tars",
        action="store_true",
        help=f"also the official tars: the variant {TARS!r}, contenders "
        + ", ".join(report.TAR_WHO),
    )
    p.add_argument(
        "--pack-from",
        choices=["tars", "images"],
        default="tars",
        help="imagenetfs-packed packs the official tars (default) or the gzip images",
    )
    p.add_argument("--no-meta", action="store_true")
    p.add_argument("--no-reads", action="store_true")
    p.add_argument(
        "--sorted-only",
        action="store_true",
        help="of the read workloads, only `read 1 sorted cold` (one reader in the images' order)",
    )
    p.add_argument("--no-storm", action="store_true")
    p.add_argument(
        "--storm-delay-ms",
        default="0.5,5",
        help="metadata storm: comma-separated delays per metadata operation, ms, one storm "
        "each (default 0.5,5); the shared-filesystem scenario uses the first",
    )
    p.add_argument(
        "--storm-variant",
        choices=list(data.VARIANTS),
        default="gzip",
        help="metadata storm: the images imagenetfs serves (default gzip)",
    )
    p.add_argument("--storm-inflight", type=int, default=4, help="metadata ops served at once")
    p.add_argument("--storm-timeout", type=float, default=1.0, help="entry/attr timeout, s")
    p.add_argument("--no-shared", action="store_true", help="skip the shared-filesystem scenario")
    p.add_argument(
        "--shared-mbps",
        type=float,
        default=200.0,
        help="shared filesystem: read bandwidth cap, MB/s (metadata: the --storm-* settings, "
        "the first --storm-delay-ms)",
    )
    p.add_argument(
        "--shared-who", default="none,stage,manual", help="shared filesystem: contenders"
    )
    p.add_argument(
        "--shared-stage-rate", help="shared filesystem: `mount --stage-rate` for stage (e.g. 150M)"
    )
    p.add_argument(
        "--imagenetfs-src",
        type=Path,
        help="dir holding the imagenetfs package to run "
        "(e.g. a `git archive` snapshot; default: the installed checkout)",
    )
    p.add_argument(
        "--pipeline",
        action="store_true",
        help="also the input pipeline (torchvision ImageFolder + augmentations, DataLoader): "
        "unpacked, kernel, squashfuse_ll, imagenetfs, floor; alone: with --no-meta "
        "--no-reads --no-storm --no-shared",
    )
    p.add_argument(
        "--pipeline-python",
        type=Path,
        help="an interpreter with torch and torchvision (default: this one, else the test "
        "environment, $IMAGENETFS_PREFIX/test-venv or /opt/imagenetfs/test-venv)",
    )
    p.add_argument(
        "--pipeline-images",
        type=int,
        help="train images per pipeline epoch (default 3,000; full: 10,000)",
    )
    p.add_argument("--pipeline-batch", type=int, default=32, help="DataLoader batch size")
    p.add_argument("--pipeline-workers", type=int, help="DataLoader workers (default: cores)")
    p.add_argument("--note", action="append", default=[], help="a line for the report")
    p.add_argument("--render", type=Path, metavar="JSON", help="only re-render a results.json")
    p.add_argument(
        "--check",
        metavar="NAME[,NAME]",
        help=f"only check these goals (of {', '.join(checks.CHECKS)}, or all): pass or fail",
    )
    args = p.parse_args()
    if args.check:
        return checks.run(args.check.split(","), args.work)
    try:
        args.storm_delays = [float(d) for d in args.storm_delay_ms.split(",") if d.strip()]
    except ValueError:
        p.error(f"--storm-delay-ms: not numbers: {args.storm_delay_ms!r}")
    if not args.storm_delays or min(args.storm_delays) < 0:
        p.error(f"--storm-delay-ms: give delays >= 0, e.g. 0.5,5 (not {args.storm_delay_ms!r})")
    if args.render:
        print(report.write(args.render, C.bench_venv(args.work)[0]))
        return 0
    repeat = args.repeat or (1 if args.quick else 3)
    meta_repeat = args.meta_repeat or repeat
    out_dir = args.out or REPO / "docs" / "bench" / ("quick" if args.quick else "")
    variants = [v for v in args.variants.split(",") if v]
    if args.tars and TARS not in variants:
        variants.append(TARS)
    for v in variants:
        if v not in (*data.VARIANTS, TARS):
            p.error(f"--variants: unknown {v!r} (gzip, noD-noF, {TARS})")
    meta_scale = data.QUICK_META if args.quick else data.FULL_META
    read_scale = data.QUICK_READ if args.quick else data.FULL_READ
    command = "scripts/bench.py " + shlex.join(sys.argv[1:])
    args.work.mkdir(parents=True, exist_ok=True)

    main_pid = os.getpid()

    def on_signal(signum: int, frame: object) -> None:
        if os.getpid() != main_pid:  # a forked worker (generator, readers): just go
            os._exit(1)
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    venv, rat_problem = C.bench_venv(args.work)
    meta_sets = data.ensure(args.work, meta_scale, variants) if not args.no_meta else {}
    storm_sets = [args.storm_variant] if not args.no_storm else []
    read_sets = data.ensure(args.work, read_scale, [*variants, *storm_sets])
    # the official tars: per scale, the set each tar contender is given (imagenetfs-packed:
    # what it packs), the cluster set ensured first (the file lists are its)
    tar_sets: dict[str, dict[str, Path]] = {}
    if TARS in variants:
        for what, scale, sets in (
            ("meta", meta_scale, meta_sets),
            ("reads", read_scale, read_sets),
        ):
            if what == "meta" and args.no_meta:
                continue
            official = data.ensure_official(args.work, scale)
            sets[TARS] = official
            tar_sets[what] = {c: official for c in report.TAR_WHO}
            if args.pack_from == "images":
                tar_sets[what]["imagenetfs-packed"] = sets["gzip"]
    if args.pipeline_images is None:
        args.pipeline_images = 3000 if args.quick else 10_000
    epochs: pipeline.Epochs | None = None
    if args.pipeline:
        exe, args.pipeline_python_said = pipeline.python(args.pipeline_python)
        note(f"pipeline: {args.pipeline_python_said}")
        if exe is not None:  # torch imported before any mount and any cache drop
            epochs = pipeline.Epochs(exe, args.work)
    all_c: dict[str, C.Contender] = {
        "imagenetfs": C.Imagenetfs(args.work, args.imagenetfs_src),
        "kernel": C.Kernel(args.work),
        "squashfuse": C.Squashfuse(args.work),
        "squashfuse_ll": C.SquashfuseLL(args.work),
        "ratarmount": C.Ratarmount(args.work, venv, rat_problem),
        "floor": C.Floor(args.work, data.unpacked_dir(args.work, read_scale)),
    }
    if TARS in variants:
        all_c["imagenetfs-tar"] = C.ImagenetfsTar(args.work, args.imagenetfs_src)
        all_c["ratarmount-tar"] = C.RatarmountTar(args.work, venv, rat_problem)
        all_c["imagenetfs-packed"] = C.ImagenetfsPacked(args.work, args.imagenetfs_src)
    if args.only:
        chosen = args.only.split(",")
    else:
        chosen = [*ORDER, *(n for n in TAR_ORDER if n not in ORDER)] if TARS in variants else ORDER
    facts = machine(args, venv)
    unavailable = {n: c.unavailable() for n, c in all_c.items() if c.unavailable()}
    for n, why in unavailable.items():
        note(f"skipping {n}: {why}")
    run = Run(args)
    started = time.monotonic()
    try:
        for rep in range(max(repeat, meta_repeat)):
            for variant in variants:
                groups = []
                if not args.no_meta and rep < meta_repeat:
                    groups.append(("meta", meta_sets[variant], meta_scale, run.meta))
                if not args.no_reads and rep < repeat:
                    groups.append(("reads", read_sets[variant], read_scale, run.reads))
                for what, setdir, scale, fn in groups:
                    files = data.files(args.work, scale)
                    tree = C.Unpacked(args.work, data.unpacked_dir(args.work, scale))
                    floor = C.Floor(args.work, data.unpacked_dir(args.work, scale))
                    for name in chosen:
                        if name in unavailable:
                            continue
                        if (name in TAR_ORDER) != (variant == TARS) and name not in ONCE:
                            continue  # the tar contenders serve the tars, the others images
                        if name in ONCE and variant != variants[0]:
                            continue  # the same tree for every variant: measured once
                        c = {"unpacked": tree, "floor": floor}.get(name) or all_c[name]
                        given = setdir
                        if variant == TARS and name not in ONCE:
                            given = tar_sets[what][name]
                        try:
                            fn(variant, given, c, files, rep)
                        except FAILURES as e:
                            run.error(variant, name, what, e)
                        finally:
                            run.mounts.close()
            if not args.no_storm and rep < repeat:
                try:
                    run.storm(
                        read_scale,
                        read_sets[args.storm_variant],
                        data.files(args.work, read_scale),
                        rep,
                    )
                except FAILURES as e:
                    run.error(args.storm_variant, "storm", "storm", e)
                finally:
                    run.mounts.close()
            if not args.no_shared and rep < repeat:
                for variant in variants:
                    if variant == TARS:
                        continue  # the shared-filesystem scenario is about images
                    try:
                        run.shared(
                            variant, read_sets[variant], data.files(args.work, read_scale), rep
                        )
                    except FAILURES as e:
                        run.error(variant, "shared", "shared", e)
                    finally:
                        run.mounts.close()
        if epochs is not None:
            who = [w for w in pipeline.WHO if w in chosen and w not in unavailable]
            by = {w: all_c.get(w) or C.Unpacked(args.work, data.unpacked_dir(args.work, read_scale))
                  for w in who}  # fmt: skip
            image_sets = {v: read_sets[v] for v in variants if v != TARS}
            run.pipeline(epochs, image_sets, read_scale, by, repeat)
        elif args.pipeline:
            unavailable["pipeline"] = args.pipeline_python_said
    finally:
        run.mounts.close()
        run.readers.close()
        if epochs is not None:
            epochs.close()
    facts["loadavg_end"] = os.getloadavg()
    facts["wall_s"] = round(time.monotonic() - started)
    facts["caches_dropped"] = run.dropped

    # unpacked was measured on the first variant only: show it in every table
    first = variants[0]
    for variant in variants[1:]:
        for row, by in run.results.get(first, {}).items():
            for name in ONCE:
                if name in by:
                    run.results.setdefault(variant, {}).setdefault(row, {})[name] = by[name]
    meta_desc = (
        f"{meta_scale.name} ({len(data.files(args.work, meta_scale)):,} files)"
        if not args.no_meta
        else "not run"
    )
    if TARS in variants and args.pack_from == "images":
        args.note.append("imagenetfs-packed packed the gzip images (--pack-from images)")
    read_files = data.files(args.work, read_scale)
    read_desc = (
        f"{read_scale.name} ({len(read_files):,} files, "
        f"{sum(f.size for f in read_files) / 1e9:.2f} GB)"
    )
    doc = {
        "command": command,
        "quick": args.quick,
        "machine": facts,
        "repeat": repeat,
        "meta_repeat": meta_repeat,
        "variants": variants,
        "contenders": [c for c in chosen if c not in unavailable],
        "sets": {"meta": meta_desc, "reads": read_desc},
        "unavailable": unavailable,
        "notes": args.note,
        "results": run.results,
        **run.extra,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(doc, indent=1))
    print(report.write(out_dir / "results.json", venv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
