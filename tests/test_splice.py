"""Zero-copy reads (issue 16), part one: where a READ's bytes lie, without FUSE.

A worker will answer a READ of bytes stored as they are read -- `-noD -noF` SquashFS images,
tar members, stored zip members -- by splicing them from the image file to /dev/fuse; the
images and the core say where they lie. Here: each image type's `locate` against its `read`
(the runs' bytes are read's bytes, at many offsets and sizes, past the end too; None only
where bytes are compressed), tails in fragments as a second run, runs after `switch`, and
`Core.locate_read` (None for virtual, resized and missing files; it counts nothing,
`count_spliced` counts).
"""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from imagenetfs import source
from imagenetfs.dirtree import open_image
from imagenetfs.index import ROOT_INO, Index, build
from imagenetfs.ops import Core
from imagenetfs.resize import parse_spec
from imagenetfs.squashfs import Run, SquashImage
from imagenetfs.views import VIEW_SHIFT, Tree

pytestmark = pytest.mark.skipif(
    shutil.which("mksquashfs") is None, reason="needs mksquashfs (squashfs-tools)"
)

BLOCK = 128 << 10  # mksquashfs's default block size
MiB = 1 << 20
#: name -> size: the odd cases (empty, one byte, around a page, a block, a block and a tail,
#: blocks and a tail, more than the pipe holds); a non-image name beside
SIZES = {
    "empty.JPEG": 0,
    "one.JPEG": 1,
    "page-1.JPEG": 4095,
    "page+1.JPEG": 4097,
    "small.JPEG": 3000,
    "block.JPEG": BLOCK,
    "block-tail.JPEG": BLOCK + 777,
    "blocks-tail.JPEG": 3 * BLOCK + 12345,
    "huge.JPEG": 2_500_000,
    "notes.txt": 70_000,
}
WNID = "n01440764"
#: how each layout serves the files: spliced (stored as read) or copied (compressed)
SPLICED = {"noD-noF": True, "noD-noF-fragments": True, "gzip": False, "tar": True,
           "zip-stored": True, "zip-deflated": False}  # fmt: skip


def contents() -> dict[str, bytes]:
    """SIZES filled with compressible bytes (16 symbols): gzip and deflate compress every
    block of them, so those images serve nothing as stored."""
    rng = random.Random(16)
    table = bytes(b"abcdefghijklmnop"[i % 16] for i in range(256))
    return {name: rng.randbytes(size).translate(table) for name, size in SIZES.items()}


def squash(staging: Path, image: Path, *args: str) -> None:
    subprocess.run(
        ["mksquashfs", str(staging), str(image), "-quiet", "-no-progress", "-all-root", *args],
        check=True, stdout=subprocess.DEVNULL, timeout=120,
    )  # fmt: skip


def tar_bytes(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return out.getvalue()


@dataclass
class Layouts:
    roots: dict[str, Path]  # layout -> source
    files: dict[str, dict[str, bytes]]  # layout -> served path -> bytes
    images: dict[str, list[Path]] = field(default_factory=dict)  # layout -> image files


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> Layouts:
    """The files of `contents()` in each kind of image, as sources of the layouts that hold
    them: a cluster test.squashfs, the official tars (a flat test tar; a train tar holding
    one class tar), Kaggle's zip."""
    base = tmp_path_factory.mktemp("layouts")
    files = contents()
    staging = base / "staging"
    staging.mkdir()
    for name, data in files.items():
        (staging / name).write_bytes(data)
    test = {f"test/{name}": data for name, data in files.items()}
    out = Layouts({}, {})
    for name, args in {
        "noD-noF": ("-noD", "-noF"),
        "noD-noF-fragments": ("-noD", "-noF", "-always-use-fragments"),
        "gzip": (),
    }.items():
        root = base / name
        root.mkdir()
        squash(staging, root / "test.squashfs", *args)
        out.roots[name], out.files[name] = root, test
        out.images[name] = [root / "test.squashfs"]
    root = base / "tar"
    root.mkdir()
    (root / "ILSVRC2012_img_test_v10102019.tar").write_bytes(tar_bytes(files))
    train = tar_bytes({f"{WNID}.tar": tar_bytes(files)})  # data at offsets in the outer file
    (root / "ILSVRC2012_img_train.tar").write_bytes(train)
    out.roots["tar"] = root
    out.files["tar"] = test | {f"train/{WNID}/{name}": data for name, data in files.items()}
    out.images["tar"] = [
        root / "ILSVRC2012_img_train.tar",
        root / "ILSVRC2012_img_test_v10102019.tar",
    ]
    for name, method in (
        ("zip-stored", zipfile.ZIP_STORED),
        ("zip-deflated", zipfile.ZIP_DEFLATED),
    ):
        root = base / name
        root.mkdir()
        with zipfile.ZipFile(root / source.KAGGLE_ZIP, "w", compression=method) as z:
            for file, data in files.items():
                z.writestr(f"ILSVRC/Data/CLS-LOC/test/{file}", data)
        out.roots[name], out.files[name] = root, test
        out.images[name] = [root / source.KAGGLE_ZIP]
    for root in out.roots.values():
        src = source.open_source(root)
        build(root / "i.lmdb", src.image_list, src.placer(), virtual=src.virtual_files,
              progress=False)  # fmt: skip
    return out


def offsets_and_sizes(length: int, rng: random.Random, count: int) -> Iterator[tuple[int, int]]:
    """Odd offsets and sizes over a file of `length` bytes, past its end too."""
    for _ in range(count):
        offset = rng.choice([0, 1, 4095, 4096, BLOCK - 1, BLOCK, rng.randrange(length + 5000)])
        size = rng.choice(
            [1, 7, 4095, 4096, 4097, BLOCK, BLOCK + 1, 300_000, MiB, rng.randrange(1, 3 * MiB)]
        )
        yield offset, size


# --- 1. without FUSE ---------------------------------------------------------------------


@pytest.mark.parametrize("layout", list(SPLICED))
def test_locate_gives_the_bytes_read_gives(layouts: Layouts, layout: str) -> None:
    rng = random.Random(layout)
    located = 0
    for path in layouts.images[layout]:
        with open_image(path) as image:
            for entry in image.walk():
                if entry.extent is None:
                    continue
                data = image.read(entry.extent, 0, entry.size + 1)
                for offset, size in offsets_and_sizes(entry.size, rng, 40):
                    runs = image.locate(entry.extent, offset, size)
                    expected = data[offset : offset + size]
                    assert image.read(entry.extent, offset, size) == expected
                    if not SPLICED[layout]:  # (or nothing to read)
                        assert runs is None or runs == [] == list(expected), (entry.path, offset)
                        continue
                    assert runs is not None, (entry.path, offset, size)
                    assert all(fd == image.fileno() and length > 0 for fd, _, length in runs)
                    got = b"".join(os.pread(fd, length, pos) for fd, pos, length in runs)
                    assert got == expected, (entry.path, offset, size)
                    located += bool(runs)
    assert located > 100 or not SPLICED[layout]


def test_tails_in_fragments_are_a_second_run(layouts: Layouts) -> None:
    with SquashImage(layouts.images["noD-noF-fragments"][0]) as image:
        entries = {e.name: e for e in image.walk() if e.extent is not None}
        extent = entries[b"blocks-tail.JPEG"].extent
        assert extent is not None and extent.fragment is not None
        runs = image.locate(extent, 0, 1 << 30)
        assert runs is not None and [r.length for r in runs] == [3 * BLOCK, 12345]
        assert runs[0].offset + runs[0].length != runs[1].offset  # the tail lies elsewhere
        assert image.locate(extent, 3 * BLOCK + 5, 10) == [
            Run(image.fileno(), runs[1].offset + 5, 10)
        ]
    with SquashImage(layouts.images["noD-noF"][0]) as image:  # no tails in fragments
        for entry in image.walk():
            if entry.extent is not None and entry.size >= BLOCK:
                assert len(image.locate(entry.extent, 0, entry.size) or []) == 1


def test_runs_follow_switch_and_stay_readable(layouts: Layouts, tmp_path: Path) -> None:
    """Runs name the descriptor reads use when they are asked for; one replaced by `switch`
    stays open, so runs asked for before still read right, the original file gone."""
    original = tmp_path / "test.squashfs"
    shutil.copy(layouts.images["noD-noF"][0], original)
    copy = tmp_path / "copy.squashfs"
    shutil.copy(original, copy)
    with SquashImage(original) as image:
        entry = next(e for e in image.walk() if e.name == b"huge.JPEG")
        assert entry.extent is not None
        before = image.locate(entry.extent, 1000, 200_000)
        image.switch(str(copy))
        original.unlink()
        after = image.locate(entry.extent, 1000, 200_000)
        assert before is not None and after is not None
        assert before[0].fd != after[0].fd == image.fileno()
        expected = contents()["huge.JPEG"][1000:201_000]
        for runs in (before, after):
            assert b"".join(os.pread(fd, n, pos) for fd, pos, n in runs) == expected


def test_core_locates_only_what_is_stored_and_counts_nothing(layouts: Layouts) -> None:
    with Index.open(layouts.roots["noD-noF"] / "i.lmdb") as ix:
        core = Core(Tree(ix, [parse_spec("64x64")]), uid=0, gid=0, blocking_reads=True)
        test = ix.lookup(ROOT_INO, b"test")
        huge = ix.lookup(test.ino, b"huge.JPEG")
        notes = ix.lookup(test.ino, b"notes.txt")
        meta = ix.lookup(ROOT_INO, b"meta.bin")
        before = dict(core.statistics()["fs"])
        runs = core.locate_read(huge.ino, 5, 1000)
        assert runs is not None and sum(r.length for r in runs) == 1000
        located = b"".join(os.pread(fd, length, pos) for fd, pos, length in runs)
        assert located == core.read(huge.ino, 5, 1000)
        view = 1 << VIEW_SHIFT
        for ino, offset, size in [
            (meta.ino, 0, 100),  # a virtual file (the index's blobs)
            (test.ino, 0, 100),  # a directory: `read` says EISDIR
            (999_999, 0, 100),  # no such inode: `read` says ENOENT
            (huge.ino, huge.size, 100),  # nothing to read
            (huge.ino, 0, 0),
            (view | huge.ino, 0, 100),  # resized in the view
        ]:
            assert core.locate_read(ino, offset, size) is None, (ino, offset, size)
        assert core.locate_read(view | notes.ino, 0, 10) is not None  # not an image: as stored
        core.read(huge.ino, 5, 1000)  # (one more read, copied)
        after = core.statistics()["fs"]
        assert after["reads"] == before["reads"] + 2 and after["reads_spliced"] == 0
        core.count_spliced(1000)
        counted = core.statistics()["fs"]
        assert counted["reads"] == after["reads"] + 1 and counted["reads_spliced"] == 1
        assert counted["bytes_read"] == after["bytes_read"] + 1000
