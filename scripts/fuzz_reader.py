#!/usr/bin/env python3
"""Coverage-guided fuzzing of the SquashFS reader with atheris (libFuzzer). Not CI.

    /opt/imagenetfs/venv/bin/pip install atheris      # a wheel for CPython 3.11 on x86-64
    scripts/fuzz_reader.py -atheris_runs=200000       # seeds: small generated images
    scripts/fuzz_reader.py CORPUS_DIR -max_total_time=3600

Each input is taken as a whole image: it is opened with `SquashImage` (through a memfd, no
disk), walked, and every regular file is read whole and in two slices -- what `imagenetfs
index` and the daemon do. `CorruptImageError` (or another `ImagenetfsError`) is the expected
answer to a broken image; any other exception is a finding, and libFuzzer saves the input
(`crash-<sha1>`) for tests/test_squashfs.py. Without a corpus directory the seeds are small
real images (gzip, uncompressed, -noI, lz4/zstd when mksquashfs has them) built into a
temporary directory. The hypothesis targets in tests/ run in CI; this one finds deeper paths.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import _venv  # noqa: F401  (re-executes with the imagenetfs environment if needed)

try:
    import atheris
except ImportError:
    sys.exit("atheris is not installed: /opt/imagenetfs/venv/bin/pip install atheris")

with atheris.instrument_imports():
    from imagenetfs.errors import ImagenetfsError
    from imagenetfs.squashfs import SquashImage

#: cap per input: a reader that allocates out of proportion to the image is a finding too
MAX_READ = 8 << 20


def exercise(data: bytes) -> None:
    fd = os.memfd_create("image", 0)
    try:
        os.write(fd, data)
        with SquashImage(f"/proc/self/fd/{fd}") as image:
            for entry in image.walk():
                if entry.extent is None:
                    continue
                size = min(entry.size, MAX_READ)
                image.read(entry.extent, 0, size)
                image.read(entry.extent, entry.size // 2, 70_000)
    except ImagenetfsError:
        pass
    finally:
        os.close(fd)


def test_one_input(data: bytes) -> None:
    exercise(data)


def seed_corpus(directory: Path) -> None:
    """Small images of a tree with files in blocks, fragments, a symlink and a hard link."""
    tree = directory / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "small").write_bytes(b"tail in a fragment")
    (tree / "a" / "blocks").write_bytes(bytes(range(256)) * 600)
    (tree / "a" / "random").write_bytes(os.urandom(40_000))
    os.link(tree / "a" / "small", tree / "a" / "linked")
    os.symlink("a/small", tree / "sym")
    options = {"gzip": [], "plain": ["-noI", "-noD", "-noF"], "noI": ["-noI"]}
    options |= {"lz4": ["-comp", "lz4"], "zstd": ["-comp", "zstd"], "xz": ["-comp", "xz"]}
    for name, args in options.items():
        image = directory / f"seed-{name}.squashfs"
        result = subprocess.run(
            ["mksquashfs", str(tree), str(image), "-noappend", "-no-progress", "-quiet", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            image.unlink(missing_ok=True)
    shutil.rmtree(tree)


def main() -> None:
    args = sys.argv[1:]
    if not any(not a.startswith("-") for a in args):  # no corpus given: seed one
        if shutil.which("mksquashfs") is None:
            sys.exit("mksquashfs not found (squashfs-tools): give a corpus directory instead")
        corpus = Path(tempfile.mkdtemp(prefix="imagenetfs-fuzz-"))
        seed_corpus(corpus)
        print(f"seed corpus: {corpus}", file=sys.stderr)
        args.append(str(corpus))
    atheris.Setup([sys.argv[0], *args], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
