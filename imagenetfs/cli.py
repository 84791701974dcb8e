"""The `imagenetfs` command: argument parsing and user-facing messages.

Each subcommand is a small function that takes the parsed arguments and returns an exit code.
Every error a user can cause or fix is an `ImagenetfsError`: printed as one line on stderr,
exit code 1, no traceback unless `--debug`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from imagenetfs import __version__, generate, index, source
from imagenetfs.errors import ImagenetfsError

log = logging.getLogger("imagenetfs")

DESCRIPTION = """\
Serve ImageNet (ILSVRC2012) from SquashFS images as the directory tree that training code
expects: train/<wnid>/..., val/<wnid>/..., test/..., meta.bin and file lists.
"""


def cmd_sample(args: argparse.Namespace) -> int:
    summary = generate.sample(args.dir)
    print(generate.describe(args.dir, summary))
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    root = source.find_source(args.source)
    src = source.open_source(root)
    path = source.find_index(args.index, root)
    print(f"source: {src.describe()}")
    if path.exists() and not args.rebuild:
        with index.Index.open(path) as ix:
            stats = ix.stats
        print(f"index {path}: up to date ({stats.entries:,} entries, {stats.files:,} files)")
        return 0
    started = time.monotonic()
    stats = index.build(
        path, src.image_list, src.placer(), source=str(root), progress=not args.quiet
    )
    print(
        f"index {path}: built in {time.monotonic() - started:.1f} s "
        f"({stats.entries:,} entries, {stats.files:,} files, {path.stat().st_size / 1e6:.1f} MB)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagenetfs", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"imagenetfs {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="log debug messages and show tracebacks on errors"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sample = commands.add_parser(
        "sample",
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

    idx = commands.add_parser(
        "index",
        help="build or verify the LMDB index of a source",
        description=(
            "Build the index of a source's SquashFS images (every name, attribute and file "
            "extent, so that a mount never touches the images' metadata again), or, when it "
            "exists, check that it still matches the images."
        ),
    )
    idx.add_argument(
        "--source",
        type=Path,
        help="directory holding the images (default: $IMAGENETFS_SOURCE, else /data/imagenet)",
    )
    idx.add_argument(
        "--index",
        type=Path,
        help="index file (default: $IMAGENETFS_INDEX, else <source>/imagenetfs.lmdb if "
        "present, else a per-user cache file)",
    )
    idx.add_argument("--rebuild", action="store_true", help="build even if an index exists")
    idx.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    idx.set_defaults(func=cmd_index)
    return parser


def run_tool(func: Callable[[], int], debug: bool = False) -> int:
    """Run a command body: user errors become one line on stderr and exit code 1."""
    try:
        return func()
    except ImagenetfsError as e:
        if debug:
            log.exception("error")
        print(f"imagenetfs: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # permission denied, disk full, not a directory...
        if debug:
            log.exception("error")
        where = f": {e.filename}" if e.filename else ""
        print(f"imagenetfs: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("imagenetfs: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="imagenetfs: %(message)s",
    )
    return run_tool(lambda: int(args.func(args)), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
