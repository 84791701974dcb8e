"""The `imagenetfs` command: argument parsing and user-facing messages.

Each subcommand is a small function that takes the parsed arguments and returns an exit code.
Every error a user can cause or fix is an `ImagenetfsError`: printed as one line on stderr,
exit code 1, no traceback unless `--debug`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lmdb

from imagenetfs import (
    __version__,
    config,
    errors,
    index,
    metrics,
    mount,
    mountinfo,
    pack,
    paths,
    places,
    registry,
    source,
    staging,
    warm,
)
from imagenetfs.errors import ImagenetfsError
from imagenetfs.views import resize
from imagenetfs.views.shards import ORDERS
from imagenetfs.views.tree import ShardSettings

log = logging.getLogger("imagenetfs")

DESCRIPTION = """\
Serve ImageNet (ILSVRC2012) as the directory tree that training code expects --
train/<wnid>/..., val/<wnid>/..., test/..., meta.bin and file lists -- read-only, without
root, from what a cluster or a download gives: a cluster's SquashFS images (train.squashfs,
val.squashfs, test.squashfs), the official ILSVRC2012 tars, Kaggle's zip or its ILSVRC.squashfs,
or an unpacked train/ val/ test/ tree.
"""

EPILOG = """\
start: imagenetfs mount /tmp/inet (the built-in sample when no ImageNet is found);
imagenetfs doctor says what is missing. Each command's --help has an example.
"""


def cmd_sample(args: argparse.Namespace) -> int:
    from imagenetfs import generate  # numpy and Pillow: only when generating

    paths.output_dir(args.dir, "DIR")
    summary = generate.sample(args.dir)
    print(generate.describe(args.dir, summary))
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    root = source.find_source(args.source)
    src = source.open_source(root)
    path = source.find_index(args.index, root)
    build = args.rebuild or not path.exists()
    check_index_path(path, args.index is not None, build)
    print(f"source: {src.describe()}")
    if not build:
        with index.Index.open(path, source=root, names=src.image_names) as ix:
            stats, passed = ix.stats, ix.file_crcs is not None
        if passed or not args.image_info:
            print(f"index {path}: up to date ({stats.entries:,} entries, {stats.files:,} files)")
            return 0
    started = time.monotonic()
    stats = index.build(
        path,
        src.image_list,
        src.placer(),
        source=str(root),
        virtual=src.virtual_files,
        progress=not args.quiet,
        image_info=args.image_info,
    )
    print(
        f"index {path}: built in {time.monotonic() - started:.1f} s "
        f"({stats.entries:,} entries, {stats.files:,} files, {path.stat().st_size / 1e6:.1f} MB)"
    )
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    splits = pack.parse_splits(args.splits)
    with pack.stop_on_signals():
        try:
            pack.check_outdir(source.open_source(args.source), args.outdir)
            path = source.find_index(args.index, args.source)
            check_index_path(path, args.index is not None, build=not path.exists())
            paths.output_dir(args.outdir, "OUTDIR")
            path, src = ensure_index(args.source, args.index, args.quiet)
            print(f"source: {src.describe()}")
            started = time.monotonic()
            pack.pack(
                src,
                path,
                args.outdir,
                comp=args.comp,
                splits=splits,
                force=args.force,
                progress=not args.quiet,
                command=pack.command_line(
                    args.source, args.outdir, comp=args.comp, splits=splits, index_path=args.index
                ),
            )
        except pack.Stopped as e:
            print(
                f"imagenetfs: pack stopped by {e}: no unfinished image is left in "
                f"{args.outdir}; run the same command to go on",
                file=sys.stderr,
            )
            return e.exit_code
    print(
        f"packed {args.outdir} in {time.monotonic() - started:.1f} s; serve it with: "
        f"imagenetfs mount --source {args.outdir} MOUNTPOINT"
    )
    return 0


def resolve_source(explicit: Path | None, quiet: bool = False) -> Path:
    """The source to serve: as given, else the built-in sample when no ImageNet is found."""
    root = source.find_source(explicit)
    given = explicit is not None or "IMAGENETFS_SOURCE" in os.environ
    if given or root.exists():
        return root
    sample_dir = source.sample_dir()
    if not (sample_dir / "train.squashfs").is_file():
        from imagenetfs import generate

        # Made aside and renamed: tasks on several nodes sharing the home may all get here.
        tmp = places.temporary_name(sample_dir)
        try:
            generate.sample(tmp, progress=False)
            if sample_dir.is_dir() and not (sample_dir / "train.squashfs").is_file():
                shutil.rmtree(sample_dir, ignore_errors=True)  # left half-made by an old version
            with contextlib.suppress(OSError):
                tmp.rename(sample_dir)  # (fails if another task's rename came first: use that)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if not quiet:
        print(
            f"imagenetfs: no ImageNet at {root}; serving the built-in sample from {sample_dir}",
            file=sys.stderr,
        )
    return sample_dir


def ensure_index(
    root: Path, explicit: Path | None, quiet: bool = False
) -> tuple[Path, source.Source]:
    """The index for `root` (found as DESIGN.md says, built first if missing), and the source."""
    src = source.open_source(root)
    path = source.find_index(explicit, root)
    check_index_path(path, explicit is not None, build=not path.exists())
    if not path.exists():
        if not quiet:
            print(f"imagenetfs: indexing {src.describe()} into {path}", file=sys.stderr)
        index.build(
            path,
            src.image_list,
            src.placer(),
            source=str(root),
            virtual=src.virtual_files,
            progress=not quiet,
        )
    return path, src


def check_index_path(path: Path, explicit: bool, build: bool) -> None:
    """The index's path, before anything is read or built: not a directory; to be built, in a
    directory this user can write into (a build walks every image first: minutes for all of
    ImageNet, to be lost at the end)."""
    label = "--index" if explicit else "index"
    if path.is_dir():
        raise errors.UsageError(
            f"{label} {path}: a directory; give --index the index file's path, e.g. "
            f"{path / source.INDEX_NAME}"
        )
    if build:
        paths.output_file(path, label, "--index")


def check_cache_dir(directory: Path, size: int, label: str) -> None:
    """The resize cache, created and opened as a mount or warm will: one line if it cannot."""
    paths.output_dir(directory, label, "--cache-dir")
    problem = resize.cache_problem(directory, size)
    if problem is not None:
        raise errors.UsageError(
            f"{label} {directory}: the resize cache cannot be opened ({problem}); give "
            "--cache-dir a directory you can write"
        )


def cmd_mount(args: argparse.Namespace) -> int:
    if args.mountpoint is None:  # `--stage MOUNTPOINT`: argparse gave --stage the mount point
        if not args.stage:
            raise errors.UsageError("mount: give a MOUNTPOINT")
        args.mountpoint, args.stage = Path(args.stage), ""
    # bad options and mount points are refused before any sample generation or index build
    workers = config.workers_setting(args.workers)
    stage_rate = staging.parse_rate(args.stage_rate) if args.stage_rate else 0
    keep_free = args.stage_keep_free
    args.stage_keep_free = staging.parse_keep_free(keep_free) if keep_free else None
    if args.metrics is not None:
        args.metrics = metrics.check_target(args.metrics)
    if args.idle_timeout is not None:
        args.idle_timeout = config.parse_duration(args.idle_timeout, "--idle-timeout")
    if (args.shard_seed or args.shard_samples is not None or args.shard_order) and not args.shards:
        raise errors.UsageError("--shard-seed, --shard-samples and --shard-order go with --shards")
    if args.shard_seed and args.shard_order == "contiguous":
        raise errors.UsageError("--shard-seed: the contiguous order has no shuffle to seed")
    if args.shard_samples is not None and args.shard_samples < 1:
        raise errors.UsageError(f"--shard-samples {args.shard_samples}: give 1 or more")
    if not -(1 << 63) <= args.shard_seed < 1 << 63:
        raise errors.UsageError(f"--shard-seed {args.shard_seed}: give a 64-bit integer")
    stage_dir = None
    if args.stage:
        paths.existing_dir(Path(args.stage), "--stage", writable=True)
    if args.stage is not None:
        stage_dir = staging.check_dir(Path(args.stage) if args.stage else staging.default_dir())
    if args.index is not None:
        check_index_path(args.index, True, build=not args.index.exists())
    if args.resize and not args.no_cache and args.cache_dir is not None:
        check_cache_dir(args.cache_dir, args.cache_size, "--cache-dir")
    mountpoint = mountinfo.canonical(args.mountpoint)
    registry.ensure_dir()
    registry.sweep()
    with mount.claimed(mountpoint):
        state = mount.serving(mountpoint)
        if state is not None:  # another task of the job mounted it: use it
            print(mount.join(mountpoint, state, resolve_source(args.source), args.index))
            return 0
        mount.check_mountpoint(mountpoint)
        if not args.foreground:  # (the lock is held until the daemon serves)
            return _mount(args, mountpoint, workers, stage_dir, stage_rate)
    return _mount(args, mountpoint, workers, stage_dir, stage_rate)  # -f: serves right here


def _mount(
    args: argparse.Namespace,
    mountpoint: Path,
    workers: int,
    stage_dir: Path | None,
    stage_rate: int,
) -> int:
    root = resolve_source(args.source)
    path, src = ensure_index(root, args.index)
    if args.resize and not args.no_cache and args.cache_dir is None:
        _warn_without_cache(resize.default_cache_dir(), args.cache_size)
    settings = config.ServeConfig(
        mountpoint=mountpoint,
        source=root.absolute(),
        index=path,
        images=src.image_names,
        workers=workers,
        foreground=args.foreground,
        allow_other=args.allow_other,
        resize=tuple(args.resize),
        resize_quality=resize.check_quality(args.resize_quality),
        cache_dir=None if args.no_cache else (args.cache_dir or resize.default_cache_dir()),
        cache_size=args.cache_size,
        stage_dir=stage_dir,
        stage_rate=stage_rate,
        stage_keep_free=args.stage_keep_free or staging.DEFAULT_KEEP_FREE,
        metrics=args.metrics,
        idle_timeout=args.idle_timeout or 0.0,
        shards=(
            ShardSettings(args.shard_seed, args.shard_samples, args.shard_order or "shuffled")
            if args.shards
            else None
        ),
    )
    return mount.mount(settings)


def _warn_without_cache(directory: Path, size: int) -> None:
    """The default resize cache cannot be used: the mount serves without one (its daemon
    says so in its log). Said here too, on the terminal: every resized file is made again at
    every open, which changes what a job gets from the mount."""
    try:
        check_cache_dir(directory, size, "resize cache")
    except errors.UsageError as e:
        print(
            f"imagenetfs: warning: {e} -- serving resized views without a cache (each made "
            "again at every open)",
            file=sys.stderr,
        )


def cmd_umount(args: argparse.Namespace) -> int:
    print(
        mount.umount(args.mountpoint, lazy=args.lazy, force=args.force, drop_stage=args.drop_stage)
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    wanted = str(mountinfo.canonical(args.mountpoint)) if args.mountpoint else None
    registry.ensure_dir(for_writing=False)
    gone = registry.sweep()  # (said once, below, then forgotten)
    mounted = {m.point: m for m in mountinfo.imagenetfs_mounts()}
    states = {s.get("mountpoint"): s for s in registry.read_states()}
    if not registry.is_default():  # a registry of its own: its own mounts only
        mounted = {point: m for point, m in mounted.items() if point in states}
    shown = 0
    documents = []
    for dead in gone:
        if args.json or (wanted and dead.get("mountpoint") != wanted):
            continue
        print(
            f"{dead.get('mountpoint')}: gone -- its daemon (pid {dead.get('pid')}) ended "
            f"without unmounting; log: {Path(dead['state_file']).with_suffix('.log')}"
        )
    for point in sorted(set(states) | set(mounted), key=str):
        if wanted and point != wanted:
            continue
        shown += 1
        state = states.get(point)
        if state is None:  # mounted, with no record on this node
            if args.json:
                documents.append({"mountpoint": point, "serving": None, "recorded": False})
            else:
                print(
                    f"{point}: mounted, but this node has no record of it (an earlier "
                    f"imagenetfs made it, or its state was removed): imagenetfs umount {point} "
                    "unmounts it"
                )
            continue
        alive = registry.is_alive(state)
        serving = alive and point in mounted
        if args.json:
            documents.append(metrics.summary(state, alive=alive, serving=serving))
            continue
        if serving:
            condition = "serving"
        elif point in mounted:
            condition = f"stale -- its daemon (pid {state.get('pid')}) died (run imagenetfs umount)"
        elif alive:
            condition = (
                f"not mounted here; its daemon (pid {state.get('pid')}) still runs (detached "
                "and still in use, or mounted in another mount namespace)"
            )
        else:
            condition = "gone"
        print(f"{point}: {condition}")
        print(f"  source {state.get('source')}  index {state.get('index')}  pid {state.get('pid')}")
        for image in state.get("images", []):
            print(f"  serving {image}")
        if state.get("staging"):
            print(f"  staging to {state['staging']['dir']}: {staging.describe(state['staging'])}")
        fs = state.get("stats", {}).get("fs")
        if fs:
            counters = "  ".join(f"{k} {v:,}" for k, v in fs.items())
            print(f"  {counters}")
            updated = state.get("updated")
            if isinstance(updated, int | float):  # (published every 2 s: say how old they are)
                print(f"  counters as of {max(0.0, time.time() - updated):.0f} s ago")
        latency = metrics.latency(state.get("stats", {}))
        if latency and latency["count"]:
            p50, p99 = (_duration(latency[f"{p}_seconds"]) for p in ("p50", "p99"))
            print(f"  read latency p50 <= {p50}  p99 <= {p99}")
    if wanted and not shown:
        raise errors.UsageError(f"{wanted} is not mounted by imagenetfs")
    if args.json:  # MOUNTPOINT: its one document; else a list, maybe empty
        print(json.dumps(documents[0] if wanted else documents, indent=1))
    elif not shown:
        print("no imagenetfs mounts")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from imagenetfs import doctor

    wanted = doctor.Wanted(
        source=args.source,
        index=args.index,
        allow_other=args.allow_other,
        mountpoint=args.mountpoint,
    )
    checks = doctor.run(wanted)
    if args.json:
        print(json.dumps(doctor.as_json(checks), indent=1))
    else:
        for check in checks:
            print(check.line())
    return 0 if all(check.status != doctor.FAIL for check in checks) else 1


def _duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def cmd_warm(args: argparse.Namespace) -> int:
    if args.mountpoint is not None:  # what a running mount serves, as it resizes
        state = registry.find_state(mountinfo.canonical(args.mountpoint))
        if state is None or not registry.is_alive(state):
            raise errors.UsageError(
                f"{args.mountpoint} is not mounted by imagenetfs; mount it first, or give "
                "--source (and --resize) instead of a MOUNTPOINT"
            )
        job = _mounted_job(state, args)
        check_cache_dir(job.cache_dir, job.cache_size, "resize cache")
    else:
        if not args.resize:
            raise errors.UsageError("warm: give at least one --resize SPEC")
        quality = resize.check_quality(args.resize_quality or resize.DEFAULT_QUALITY)
        cache_dir = args.cache_dir or resize.default_cache_dir()
        cache_size = args.cache_size or config.DEFAULT_CACHE_SIZE
        label = "--cache-dir" if args.cache_dir is not None else "resize cache"
        root = resolve_source(args.source)
        source.open_source(root)  # (a bad source first: the cache check creates the cache)
        check_cache_dir(cache_dir, cache_size, label)  # (before an index build of minutes)
        path = ensure_index(root, args.index)[0]
        job = warm.WarmJob(
            path, root.absolute(), tuple(args.resize), quality, cache_dir, cache_size
        )
    started = time.monotonic()
    counts = warm.warm(job, args.split or ["train", "val", "test"], args.jobs, not args.quiet)
    print(
        f"warmed {job.cache_dir}: {counts['resized']:,} resized, {counts['cached']:,} already "
        f"cached, {counts['failed']:,} failed, in {time.monotonic() - started:.1f} s"
    )
    return 1 if counts["failed"] else 0


def _mounted_job(state: registry.State, args: argparse.Namespace) -> warm.WarmJob:
    """Warm for a running mount: its index, resized views, quality and cache (recorded in its
    state file). An option that would warm anything else is refused."""
    where = state["mountpoint"]
    specs = tuple(resize.parse_spec(name) for name in state.get("resize", []))
    if not specs:
        raise errors.UsageError(f"{where} serves no resized views (mount it with --resize)")
    if state.get("cache_dir") is None:
        raise errors.UsageError(f"{where} keeps no resize cache (mounted with --no-cache)")
    if args.source is not None:
        raise errors.UsageError("warm: give a MOUNTPOINT or --source, not both")
    if args.resize and not set(args.resize) <= set(specs):
        served = " ".join(spec.name for spec in specs)
        raise errors.UsageError(f"{where} serves resized/ {served} only")
    for option, given, own in (
        ("--resize-quality", args.resize_quality, state["resize_quality"]),
        ("--cache-size", args.cache_size, state["cache_size"]),
        ("--cache-dir", args.cache_dir and str(args.cache_dir.absolute()), state["cache_dir"]),
        ("--index", args.index and str(args.index.absolute()), state["index"]),
    ):
        if given is not None and given != own:
            raise errors.UsageError(
                f"warm {where}: {option} differs from the mount's own ({own}); leave it out"
            )
    return warm.WarmJob(
        Path(state["index"]),
        Path(state["source"]),
        tuple(args.resize) or specs,
        int(state["resize_quality"]),
        Path(state["cache_dir"]),
        int(state["cache_size"]),
    )


def add_resize_options(parser: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """--resize, --resize-quality, --cache-dir, --cache-size; without `defaults` (warm) they
    stay None when not given."""
    parser.add_argument(
        "--resize",
        type=resize_spec,
        action="append",
        default=[],
        metavar="SPEC",
        help="add resized/SPEC/: N = shorter side N (aspect kept, smaller images unchanged), "
        "WxH = exactly W x H; 8..4096; repeatable",
    )
    parser.add_argument(
        "--resize-quality",
        type=int,
        metavar="Q",
        default=resize.DEFAULT_QUALITY if defaults else None,
        help=f"JPEG quality of resized files (default {resize.DEFAULT_QUALITY})",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="persistent cache of resized images (default: imagenetfs-cache in the Slurm job's "
        "$SLURM_TMPDIR, else its $TMPDIR; outside a job ~/.cache/imagenetfs/resized)",
    )
    parser.add_argument(
        "--cache-size",
        type=cache_size,
        metavar="SIZE",
        default=config.DEFAULT_CACHE_SIZE if defaults else None,
        help="bound of the resize cache; the oldest entries go first (default 10G)",
    )


def resize_spec(text: str) -> resize.ResizeSpec:
    try:
        return resize.parse_spec(text)
    except errors.UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cache_size(text: str) -> int:
    try:
        return resize.parse_size(text)
    except errors.UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


DEBUG_HELP = "log debug messages and show tracebacks on errors"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagenetfs", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"imagenetfs {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    # --debug also after the command (`imagenetfs mount --debug ...`): a parent parser whose
    # default is "not given", so that it never overrides one given before the command
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, example: str, **kwargs: Any) -> argparse.ArgumentParser:
        return subparsers.add_parser(name, parents=[common], epilog=f"example: {example}", **kwargs)

    sample = command(
        "sample",
        "imagenetfs sample /tmp/sample && imagenetfs mount --source /tmp/sample /tmp/inet",
        help="write the built-in sample dataset",
        description=(
            "Write the built-in sample: a small ImageNet-shaped dataset in the cluster layout "
            "(train.squashfs, val.squashfs, test.squashfs, *_files.txt, val_labels.txt) with "
            "real wnids, names and file-name patterns. For other sizes and layouts use "
            "scripts/make_fake_imagenet.py."
        ),
    )
    sample.add_argument("dir", type=Path, metavar="DIR", help="output directory")
    sample.set_defaults(func=cmd_sample)

    idx_source_help = (
        "directory holding the ImageNet to serve: SquashFS images, the official tars, Kaggle's "
        "zip or an unpacked tree (default: $IMAGENETFS_SOURCE, else /data/imagenet)"
    )
    idx_index_help = (
        "index file (default: $IMAGENETFS_INDEX, else <source>/imagenetfs.lmdb if present, "
        "else a per-user cache file)"
    )
    idx = command(
        "index",
        "imagenetfs index --source /data/imagenet --index /data/imagenet/imagenetfs.lmdb",
        help="build or verify the LMDB index of a source",
        description=(
            "Build the index of a source -- a cluster's SquashFS images, the official ILSVRC2012 "
            "tars, Kaggle's zip or ILSVRC.squashfs, or an unpacked tree: every name, attribute "
            "and file extent, so that a mount never touches the images' metadata again -- or, "
            "when it exists, check that it still matches the images."
        ),
    )
    idx.add_argument("--source", type=Path, metavar="DIR", help=idx_source_help)
    idx.add_argument("--index", type=Path, metavar="FILE", help=idx_index_help)
    idx.add_argument("--rebuild", action="store_true", help="build even if an index exists")
    idx.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    idx.add_argument(
        "--image-info",
        "--image-sizes",
        dest="image_info",
        action="store_true",
        help="also read every image file once, whole, and record its width and height (the "
        "shard views show them) and the CRC32C of its bytes (the TFRecord view needs them); "
        "reads every byte, so it takes longer. Rebuilds an index that has none",
    )
    idx.set_defaults(func=cmd_index)

    mnt = command(
        "mount",
        "imagenetfs mount --source /data/imagenet --stage /tmp/inet",
        usage="imagenetfs mount [options] MOUNTPOINT",
        help="mount the ImageNet tree (read-only, for this user)",
        description=(
            "Mount the ImageNet tree at MOUNTPOINT: train/<wnid>/, val/<wnid>/ (regrouped by "
            "label), test/. Builds the index first if it is missing. Returns once the tree is "
            "ready; the daemon runs until `imagenetfs umount MOUNTPOINT` or SIGTERM. Without a "
            "source, serves the built-in sample."
        ),
    )
    # (optional for argparse only: `mount --stage MOUNTPOINT` gives --stage no DIR)
    mnt.add_argument(
        "mountpoint", type=Path, nargs="?", metavar="MOUNTPOINT", help="an empty directory"
    )
    mnt.add_argument("--source", type=Path, metavar="DIR", help=idx_source_help)
    mnt.add_argument("--index", type=Path, metavar="FILE", help=idx_index_help)
    mnt.add_argument(
        "-f", "--foreground", action="store_true", help="stay in the foreground (log to stderr)"
    )
    mnt.add_argument(
        "--allow-other",
        action="store_true",
        help="let other users read the tree (needs user_allow_other in /etc/fuse.conf)",
    )
    mnt.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="serve with N worker processes speaking the FUSE protocol after start-up, one "
        "core each (default: $IMAGENETFS_WORKERS, else one per usable CPU, 2 to 8); 0: a "
        "single pyfuse3 process serves everything (slower; the fallback)",
    )
    add_resize_options(mnt)
    mnt.add_argument(
        "--no-cache", action="store_true", help="keep no persistent cache of resized images"
    )
    mnt.add_argument(
        "--shards",
        action="store_true",
        help="also serve shards/wds/: the train and val splits as WebDataset tar shards "
        "(timm's imagenet1k-wds names, _info.json, wids and DALI indexes), and shards/"
        "tfrecord/: the same samples as TFRecord shards (TensorFlow's train-00000-of-01024 "
        "names, DALI indexes; needs an index built with --image-info), made on the fly",
    )
    mnt.add_argument(
        "--shard-seed",
        type=int,
        default=0,
        metavar="N",
        help="with --shards: shuffle train with seed N, served as shards/wds-seedN/ and "
        "shards/tfrecord-seedN/ (default: 0, shards/wds/ and shards/tfrecord/)",
    )
    mnt.add_argument(
        "--shard-order",
        choices=ORDERS,
        default=None,
        help="with --shards: 'shuffled' (default) deals train's samples to the shards in a "
        "global shuffle, each shard a mix of all classes, for training; 'contiguous' keeps "
        "both splits in path order, the images' own (a shard is one stretch of them and holds "
        "one or two classes), served as shards/wds-contiguous/ and shards/tfrecord-contiguous/"
        ": for passes that need no mixing (evaluation, feature extraction); it reads no faster "
        "than the shuffle except on gzip images staged from a share (docs/views.md)",
    )
    mnt.add_argument(
        "--shard-samples",
        type=int,
        default=None,
        metavar="N",
        help="with --shards: N samples per shard, in both splits of both formats (default: "
        "as full ImageNet's shards hold: 1,252 in train's 1,024; in validation's 64 "
        "WebDataset shards 782, in its 128 TFRecord shards 391)",
    )
    mnt.add_argument(
        "--stage",
        nargs="?",
        const="",
        metavar="DIR",
        help="copy the images to DIR (node-local disk) in the background while serving, and "
        "serve each from its copy once it is checked; a checked copy left there by an earlier "
        "mount is reused. Without DIR: $SLURM_TMPDIR, else $TMPDIR inside a Slurm job",
    )
    mnt.add_argument(
        "--idle-timeout",
        metavar="DURATION",
        help="unmount by itself after DURATION (90s, 10m, 2h) without a request, unless a "
        "process uses the mount (an open file, its directory or a mapping there, also inside "
        "a container), so a job that forgets to unmount leaves nothing behind; the kernel "
        "then caches names for a third of DURATION, not a year",
    )
    mnt.add_argument(
        "--stage-rate",
        metavar="RATE",
        help="cap the copying's reads at RATE bytes/s (K, M, G suffixes: 200M); default: none",
    )
    mnt.add_argument(
        "--stage-keep-free",
        metavar="SIZE",
        help="start a copy only if SIZE stays free on DIR's filesystem after it (K, M, G, T; or "
        "a share of the filesystem: 10%%); an image that does not fit stays served from where "
        "it is. Default: 10G or 5%% of the filesystem, whichever is more",
    )
    mnt.add_argument(
        "--metrics",
        type=Path,
        metavar="FILE",
        help="write the mount's counters to FILE every 2 s and once at the end, in the "
        "Prometheus text format (for node_exporter's textfile collector: FILE ending in .prom)",
    )
    mnt.set_defaults(func=cmd_mount)

    um = command(
        "umount",
        "imagenetfs umount /tmp/inet",
        help="unmount (also clears a stale mount left by a killed daemon)",
        description=(
            "Unmount MOUNTPOINT (a live mount, or a stale one left by a killed daemon) and wait "
            "until its daemon has exited. Decided from the kernel's mount table and this node's "
            "mount records (/tmp/imagenetfs-UID/mounts), never by touching the mount: a daemon "
            "that stopped answering makes none of these wait. When other tasks joined the "
            "mount, counts one user less and leaves it mounted until the last."
        ),
    )
    um.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    um.add_argument(
        "-z",
        "--lazy",
        action="store_true",
        help="detach at once even if busy; the daemon ends when the last open file closes",
    )
    um.add_argument(
        "--force",
        action="store_true",
        help="unmount even if other `imagenetfs mount` commands joined the mount (tasks of a "
        "job) and have not unmounted yet, detaching at once and ending the daemon (SIGTERM, "
        "SIGKILL after 10 s) -- also one that is stopped or hung",
    )
    um.add_argument(
        "--drop-stage",
        action="store_true",
        help="when this unmounts the mount (its last user), also remove the copies it staged "
        "(--stage), except those another mount of yours on this node serves or stages: for a "
        "job's end when DIR outlives the job. Without it they stay, for the next mount to reuse",
    )
    um.set_defaults(func=cmd_umount)

    wm = command(
        "warm",
        "imagenetfs warm --source /data/imagenet --resize 256 -j 8",
        help="fill the resize cache ahead of a job, on all cores",
        description=(
            "Resize every image of the given splits into the persistent resize cache, so that "
            "a mount serves them at once. Give the MOUNTPOINT of a running mount (its resized "
            "views, quality and cache are used; --resize may pick some of its views), or a "
            "source (--source, as for mount) with the --resize SPECs, quality and cache of the "
            "mounts to come."
        ),
    )
    wm.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT", nargs="?")
    wm.add_argument("--source", type=Path, metavar="DIR", help=idx_source_help)
    wm.add_argument("--index", type=Path, metavar="FILE", help=idx_index_help)
    wm.add_argument(
        "--split",
        action="append",
        choices=["train", "val", "test"],
        help="a split to warm; repeatable (default: all)",
    )
    wm.add_argument(
        "-j",
        "--jobs",
        type=int,
        metavar="N",
        default=os.cpu_count() or 1,
        help="processes (default: cores)",
    )
    wm.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_resize_options(wm, defaults=False)
    wm.set_defaults(func=cmd_warm)

    pk = command(
        "pack",
        "imagenetfs pack ~/Downloads/ilsvrc2012 /scratch/imagenet",
        help="write any source in the cluster layout: images, lists, labels, index",
        description=(
            "Write SOURCE (any layout imagenetfs serves) into OUTDIR as a cluster keeps "
            "ImageNet: train.squashfs (<wnid>/<file>), val.squashfs and test.squashfs (flat), "
            "train_files.txt, val_files.txt, test_files.txt, val_labels.txt (the val grouping "
            "SOURCE is served with), LOC_synset_mapping.txt, and imagenetfs.lmdb beside them, "
            "so that `imagenetfs mount --source OUTDIR` serves the same tree at once. The files "
            "are streamed from SOURCE (through its index) into mksquashfs: nothing is unpacked "
            "to disk. Each image is read back and compared with SOURCE's bytes before it takes "
            "its name; interrupted or failed, a pack leaves no image that looks finished, and "
            "running it again keeps the images already done. The progress bar shows bytes, "
            "rate and time left."
        ),
    )
    pk.add_argument("source", type=Path, metavar="SOURCE", help="the ImageNet to pack")
    pk.add_argument(
        "outdir", type=Path, metavar="OUTDIR", help="where to write it (created if missing)"
    )
    pk.add_argument(
        "--comp",
        choices=pack.COMPRESSORS,
        default=pack.DEFAULT_COMP,
        help="compression of the images' data (default: none -- file data stored as they are, "
        "metadata compressed: JPEGs gain ~0.5%% from gzip, while every read of a compressed "
        "image pays to inflate it)",
    )
    pk.add_argument(
        "--index",
        type=Path,
        metavar="FILE",
        help="SOURCE's index (default: as mount finds it -- $IMAGENETFS_INDEX, else "
        "SOURCE/imagenetfs.lmdb if present, else a per-user cache file; built if missing)",
    )
    pk.add_argument(
        "--splits",
        metavar="LIST",
        help="comma-separated splits to pack, e.g. train,val (default: all SOURCE has)",
    )
    pk.add_argument(
        "--force",
        action="store_true",
        help="replace images in OUTDIR that another source's pack (or not a pack) made",
    )
    pk.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    pk.set_defaults(func=cmd_pack)

    st = command(
        "status",
        "imagenetfs status --json /tmp/inet",
        help="list imagenetfs mounts: source, pid, counters",
        description=(
            "Show this user's imagenetfs mounts on this node (or one): serving, stale (its "
            "daemon died), or with no record here; source, index, pid, counters. Records of "
            "mounts whose daemon ended without unmounting are reported once and removed."
        ),
    )
    st.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT", nargs="?")
    st.add_argument(
        "--json",
        action="store_true",
        help="one JSON document: a list of mounts, or the one mount given (docs/metrics.md)",
    )
    st.set_defaults(func=cmd_status)

    dr = command(
        "doctor",
        "imagenetfs doctor --source /data/imagenet /tmp/inet",
        help="check what a mount needs, and a mount's health",
        description=(
            "Check, one line each, what a mount needs on this node -- /dev/fuse, fusermount3, "
            "--allow-other, the kernel's FUSE, the source and its index, where state, logs and "
            "caches go and their free space, room to stage inside a job -- and mount a "
            "throw-away filesystem to prove it. With a MOUNTPOINT, also that mount's health. "
            "Each problem comes with its fix. Exit 1 if a mount would not work."
        ),
    )
    dr.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT", nargs="?")
    dr.add_argument("--source", type=Path, metavar="DIR", help=idx_source_help)
    dr.add_argument("--index", type=Path, metavar="FILE", help=idx_index_help)
    dr.add_argument(
        "--allow-other", action="store_true", help="also check that --allow-other is allowed"
    )
    dr.add_argument("--json", action="store_true", help="one JSON document: ok, and the checks")
    dr.set_defaults(func=cmd_doctor)
    return parser


def run_tool(func: Callable[[], int], debug: bool = False) -> int:
    """Run a command body: user errors become one line on stderr and exit code 1."""
    try:
        code = func()
        sys.stdout.flush()
        return code
    except ImagenetfsError as e:
        if debug:
            log.exception("error")
        print(f"imagenetfs: error: {e}", file=sys.stderr)
        return 1
    except (OSError, lmdb.Error) as e:  # permission denied, disk full, not a directory...
        if isinstance(e, BrokenPipeError) and _stdout_closed():
            return 0
        # (the paths a command is given are checked first, each naming its option: this is for
        # what happens later, a disk filling up meanwhile say)
        if debug:
            log.exception("error")
        if isinstance(e, OSError):
            problem, _ = paths.describe(e, "")
            where = f"{e.filename}: " if e.filename else ""
        else:  # (LMDB says "<path>: <strerror>")
            problem, where = str(e), ""
        print(
            f"imagenetfs: error: {where}{problem}; check that path (permissions, free space), "
            "or use another",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("imagenetfs: interrupted", file=sys.stderr)
        return 130


def _stdout_closed() -> bool:
    """Whoever read our output has gone (`imagenetfs status | head -3`): poll reports an
    error on a pipe whose reading end is closed. Not an error of ours, and said nowhere;
    anything else (a pipe to mksquashfs that broke, say) still is."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLERR)
        closed = any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False
    if closed:  # (and no "Exception ignored" when Python flushes stdout at exit)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return closed


def main(argv: Sequence[str] | None = None) -> int:
    try:  # --help and --version print here, maybe into `| head`: a closed pipe is no error
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:
            sys.stdout.flush()  # (now, not at exit, where a closed pipe is a traceback)
            raise
    except BrokenPipeError:
        if _stdout_closed():
            return 0
        raise
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="imagenetfs: %(message)s",
    )
    return run_tool(lambda: int(args.func(args)), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
