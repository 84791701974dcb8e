"""Zero-copy reads (issue 16): READs spliced from the image file to /dev/fuse, byte for byte.

A worker answers a READ of bytes stored as they are read -- `-noD -noF` SquashFS images, tar
members, stored zip members -- by splicing them from the image file through a pipe to the
device (wire.py); everything else, and whatever a splice cannot do, takes the copy path. Here:

1. without FUSE: each image type's `locate` against its `read` (the runs' bytes are read's
   bytes, at many offsets and sizes, past the end too; None only where bytes are compressed),
   runs after `switch`, `Core.locate_read` (None for virtual, resized and missing files; it
   counts nothing, `count_spliced` counts), and a worker whose "device" is a pipe: the spliced
   message exact, and after each fallback (too big, a file that cannot be spliced from, an
   image cut short) an empty pipe -- no stale byte in the next reply;
2. real mounts of every kind of image -- `-noD -noF` with and without tails in fragments,
   gzip, tars (flat and class tars), stored and deflated zips -- read whole and at odd offsets
   and sizes (O_DIRECT: the READs the kernel sends are exactly those), the `reads_spliced`
   counter telling which path served them; `IMAGENETFS_SPLICE=0`; an image truncated under a
   spliced read (EIO for that read, the next reads of the same worker exact).

The 64-reader stress on spliced images, on ext4 and on hugetlbfs (whose files cannot be
spliced from), is in tests/test_reliability.py.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import random
import shutil
import subprocess
import tarfile
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    EnvMounter,
    Mounted,
    Mounter,
    drop_written,
    evict,
    fuse_unusable,
    nowait_unsupported,
)

from imagenetfs import ops, source, wire
from imagenetfs import protocol as fuse
from imagenetfs.dirtree import open_image
from imagenetfs.index import DIR, ROOT_INO, Index, build
from imagenetfs.ops import Core, Counters
from imagenetfs.squashfs import Run, SquashImage
from imagenetfs.views.resize import parse_spec
from imagenetfs.views.tree import VIEW_SHIFT, Tree

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


def read_request(ino: int, offset: int, size: int, unique: int) -> memoryview:
    body = fuse.READ_IN.pack(0, offset, size, 0, 0, 0, 0)
    header = fuse.IN_HEADER.pack(
        fuse.IN_HEADER.size + len(body), fuse.READ, unique, ino, 0, 0, 0, 0, 0
    )
    return memoryview(header + body)


class Device:
    """A pipe standing in for /dev/fuse: the worker splices its replies into it."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        fcntl.fcntl(self.w, fcntl.F_SETPIPE_SZ, wire.pipe_size())  # as large as the worker's

    def messages(self) -> list[tuple[int, int, bytes]]:
        """(unique, error, payload) of each whole message in the pipe; nothing may be left."""
        data = b""
        try:
            while chunk := os.read(self.r, 8 * MiB):
                data += chunk
        except BlockingIOError:
            pass
        out, at = [], 0
        while at < len(data):
            length, error, unique = fuse.OUT_HEADER.unpack_from(data, at)
            out.append((unique, error, data[at + 16 : at + length]))
            at += length
        assert at == len(data)
        return out

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


@pytest.fixture
def device() -> Iterator[Device]:
    dev = Device()
    yield dev
    dev.close()


def served_inos(ix: Index) -> dict[str, int]:
    test = ix.lookup(ROOT_INO, b"test")
    return {node.name.decode(): node.ino for node in ix.readdir(test.ino) if node.kind != DIR}


def test_worker_splices_replies_and_falls_back_with_an_empty_pipe(
    layouts: Layouts, tmp_path: Path, device: Device
) -> None:
    """Spliced: the reply is in the device, whole; copied (a READ bigger than the pipe, an
    image cut short under the read): the reply comes back from `handle`, EIO for the cut
    one, and the device holds nothing more -- the next spliced reply is exact."""
    root = tmp_path / "src"
    shutil.copytree(layouts.roots["noD-noF"], root)
    files = contents()
    with Index.open(root / "i.lmdb", source=root) as ix:
        inos = served_inos(ix)
        core = Core(Tree(ix), uid=0, gid=0, blocking_reads=True)
        worker = wire.Worker(core, device.w, splice=True)
        assert worker.splicer is not None
        slots = worker.splicer.slots
        assert slots == wire.pipe_size() // wire.PAGE
        unique = 100
        rng = random.Random(5)
        for name in ("one.JPEG", "block-tail.JPEG", "huge.JPEG", "notes.txt"):
            for offset, size in offsets_and_sizes(len(files[name]), rng, 20):
                unique += 1
                reply = worker.handle(read_request(inos[name], offset, size, unique))
                expected = files[name][offset : offset + size]
                sent = device.messages()
                if reply is None:  # spliced
                    assert sent == [(unique, 0, expected)], (name, offset, size)
                else:  # copied: nothing to read, or more pages than the pipe holds
                    assert len(expected) in (0, *range((slots - 3) * wire.PAGE, 2 * MiB))
                    header = fuse.OUT_HEADER.pack(16 + len(expected), 0, unique)
                    assert sent == [] and reply == header + expected
        stats = core.statistics()["fs"]
        assert 0 < stats["reads_spliced"] < stats["reads"] == unique - 100
        # cut the image in the middle of huge.JPEG's blocks: a READ across the cut gets part
        # of its bytes spliced, then a short splice -- EIO, and no byte of it in the pipe
        huge = core.locate_read(inos["huge.JPEG"], 0, 1)
        assert huge is not None
        cut = huge[0].offset + 500_000
        os.truncate(root / "test.squashfs", cut)
        reply = worker.handle(read_request(inos["huge.JPEG"], 499_000 - 4096, 64 << 10, 1))
        assert reply == fuse.OUT_HEADER.pack(16, -errno.EIO, 1)
        assert device.messages() == []
        for n, (name, offset, size) in enumerate(
            [("huge.JPEG", 0, 4096), ("huge.JPEG", 123_456, BLOCK), ("block.JPEG", 1, 70_000)]
        ):
            assert worker.handle(read_request(inos[name], offset, size, 2 + n)) is None
            assert device.messages() == [(2 + n, 0, files[name][offset : offset + size])]


def test_a_refused_reply_fails_that_read_and_turns_splicing_off(
    layouts: Layouts, device: Device, caplog: pytest.LogCaptureFixture
) -> None:
    """A device that will not take a spliced reply (here the read end of a pipe: EBADF) fails
    that READ (EIO, logged) and the worker copies from then on, its pipe closed."""
    files = contents()
    with Index.open(layouts.roots["noD-noF"] / "i.lmdb") as ix:
        ino = served_inos(ix)["block.JPEG"]
        core = Core(Tree(ix), uid=0, gid=0, blocking_reads=True)
        worker = wire.Worker(core, device.r, splice=True)
        assert worker.handle(read_request(ino, 0, 100, 1)) == fuse.OUT_HEADER.pack(
            16, -errno.EIO, 1
        )
        assert worker.splicer is None and "READs are copied from now on" in caplog.text
        reply = worker.handle(read_request(ino, 0, 100, 2))
        assert reply == fuse.OUT_HEADER.pack(116, 0, 2) + files["block.JPEG"][:100]
        stats = core.statistics()["fs"]
        assert (stats["reads"], stats["reads_spliced"], stats["errors"]) == (2, 1, 1)


def test_splicer_latches_files_that_cannot_be_spliced_from(device: Device, tmp_path: Path) -> None:
    """A file whose filesystem has no splice_read (here a /proc file): EINVAL, the pipe
    emptied of the header already in it, that descriptor never tried again."""
    splicer = wire.Splicer(device.w)
    good = tmp_path / "good"
    good.write_bytes(bytes(range(256)) * 64)
    fd_good = os.open(good, os.O_RDONLY)
    fd_proc = os.open("/proc/self/status", os.O_RDONLY)
    try:
        assert splicer.fill(1, [Run(fd_good, 10, 100), Run(fd_proc, 0, 50)]) is None
        assert fd_proc in splicer._unable
        assert splicer.fill(2, [Run(fd_proc, 0, 50)]) is None
        assert splicer.fill(3, [Run(fd_good, 10, 100), Run(fd_good, 5000, 3)]) == 103
        splicer.send(103)
        data = good.read_bytes()
        assert device.messages() == [(3, 0, data[10:110] + data[5000:5003])]
        # too many pages for the pipe: refused before anything goes in
        assert splicer.fill(4, [Run(fd_good, 1, 4096 * splicer.slots)]) is None
        assert device.messages() == []
    finally:
        os.close(fd_good)
        os.close(fd_proc)
        splicer.close()


# --- 2. real mounts ----------------------------------------------------------------------


# --- cold reads: a worker's second thread (wire.ColdReads) --------------------------------


def never_cold(path: Path) -> str | None:
    """Why no page of the file at `path` can be found out of the cache (so the cold-read
    thread never engages), or None: a filesystem without RWF_NOWAIT (the worker cannot ask),
    or tmpfs (whose page cache is its storage)."""
    reason = nowait_unsupported(path.parent)
    if reason is not None:
        return reason
    found, kind = "", ""
    with open("/proc/self/mounts") as f:
        for line in f:
            _, point, fs_kind, *_ = line.split()
            if str(path).startswith(point.rstrip("/") + "/") and len(point) >= len(found):
                found, kind = point, fs_kind
    return f"{path} is on tmpfs: its pages cannot be dropped" if kind == "tmpfs" else None


def wait_for_messages(device: Device, count: int) -> list[tuple[int, int, bytes]]:
    """What the device holds once `count` whole replies are in it (10 s at most)."""
    got: list[tuple[int, int, bytes]] = []
    deadline = time.monotonic() + 10
    while len(got) < count and time.monotonic() < deadline:
        got += device.messages()
        time.sleep(0.01)
    return got


def test_cold_reads_go_to_the_workers_thread_and_count_in_its_slot(
    layouts: Layouts, device: Device
) -> None:
    """A READ of a tar member whose bytes are not in the page cache goes to the worker's
    second thread: handle() returns at once, the thread's reply is exact, it is counted in the
    thread's counters (reads, reads_spliced, reads_cold, a latency) and not in the worker's.
    Read again, the bytes are cached: the worker splices them itself. Cold again from a file
    the thread cannot splice from: it copies them."""
    tar = layouts.images["tar"][1]  # the flat test tar
    if (reason := never_cold(tar)) is not None:
        pytest.skip(reason)
    files = contents()
    name = "blocks-tail.JPEG"
    with Index.open(layouts.roots["tar"] / "i.lmdb") as ix:
        ino = served_inos(ix)[name]
        core = Core(Tree(ix), uid=0, gid=0, blocking_reads=True)
        theirs = Counters()
        worker = wire.Worker(core, device.w, splice=True, cold=theirs)
        assert worker.cold is not None
        runs = core.locate_read(ino, 1000, BLOCK)
        assert runs
        for _ in range(50):  # (pages still on a CPU's way to the LRU lists may stay a moment)
            drop_written(tar)
            if worker.cold.cold(runs):
                break
            time.sleep(0.02)
        else:
            pytest.fail("the tar's pages stayed in the page cache")
        assert worker.handle(read_request(ino, 1000, BLOCK, 1)) is None
        assert wait_for_messages(device, 1) == [(1, 0, files[name][1000 : 1000 + BLOCK])]
        counted = Counters.report(list(theirs.values), cache=False)
        fs = counted["fs"]
        assert (fs["reads"], fs["reads_spliced"], fs["reads_cold"], fs["bytes_read"]) == (
            1, 1, 1, BLOCK,
        )  # fmt: skip
        assert sum(counted["read_latency"]["buckets"]) == 1
        assert core.statistics()["fs"]["reads"] == 0
        assert not worker.cold.cold(runs)  # the thread's splice read them in
        assert worker.handle(read_request(ino, 1000, BLOCK, 2)) is None
        assert device.messages() == [(2, 0, files[name][1000 : 1000 + BLOCK])]
        mine = core.statistics()["fs"]
        assert (mine["reads"], mine["reads_spliced"], mine["reads_cold"]) == (1, 1, 0)
        assert theirs.values[ops.READS] == 1
        # where its splice cannot (a file whose filesystem cannot be spliced from), it copies
        assert worker.cold._splicer is not None
        worker.cold._splicer._unable.add(runs[0].fd)
        for _ in range(50):
            drop_written(tar)
            if worker.cold.cold(runs):
                break
            time.sleep(0.02)
        assert worker.handle(read_request(ino, 1000, BLOCK, 3)) is None
        assert wait_for_messages(device, 1) == [(3, 0, files[name][1000 : 1000 + BLOCK])]
        fs = Counters.report(list(theirs.values), cache=False)["fs"]
        assert (fs["reads"], fs["reads_spliced"], fs["reads_cold"]) == (2, 1, 2)
        worker.cold.close()


def test_a_cold_read_cut_short_fails_in_the_thread(
    layouts: Layouts, device: Device, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A tar truncated under a cold READ: the thread answers EIO, says it once (no
    traceback) and counts the error in its slot; the worker's next reads are exact."""
    root = tmp_path / "src"
    shutil.copytree(layouts.roots["tar"], root, ignore=shutil.ignore_patterns("i.lmdb"))
    tar = root / "ILSVRC2012_img_test_v10102019.tar"
    if (reason := never_cold(tar)) is not None:
        pytest.skip(reason)
    src = source.open_source(root)  # (an index of the copy: the other one reads the original)
    build(root / "i.lmdb", src.image_list, src.placer(), virtual=src.virtual_files, progress=False)
    files = contents()
    with Index.open(root / "i.lmdb") as ix:
        inos = served_inos(ix)
        core = Core(Tree(ix), uid=0, gid=0, blocking_reads=True)
        theirs = Counters()
        worker = wire.Worker(core, device.w, splice=True, cold=theirs)
        runs = core.locate_read(inos["huge.JPEG"], 0, MiB)
        assert runs is not None
        os.truncate(tar, runs[0].offset + 100_000)
        drop_written(tar)
        assert worker.handle(read_request(inos["huge.JPEG"], 0, 500_000, 1)) is None
        assert wait_for_messages(device, 1) == [(1, -errno.EIO, b"")]
        assert theirs.values[ops.ERRORS] == 1 and core.statistics()["fs"]["errors"] == 0
        assert "truncated" in caplog.text and "Traceback" not in caplog.text
        assert worker.handle(read_request(inos["small.JPEG"], 0, 3000, 2)) is None
        assert wait_for_messages(device, 1) == [(2, 0, files["small.JPEG"])]
        assert worker.cold is not None
        worker.cold.close()


def test_reads_go_to_the_threads_where_the_cache_cannot_be_asked(
    device: Device, tmp_path: Path
) -> None:
    """A file whose filesystem has no RWF_NOWAIT (here /proc: EOPNOTSUPP) is `UNSEEN`, never
    probed again, and its READs go to the threads -- all of them started (the worker cannot
    tell which READs will wait) -- up to `UNSEEN_WAITING` at once."""
    core = Core.__new__(Core)  # (the probe needs no index)
    cold = wire.ColdReads(core, device.w, [Counters() for _ in range(wire.UNSEEN_THREADS)])
    fd = os.open("/proc/self/status", os.O_RDONLY)
    try:
        assert cold.cold([Run(fd, 0, 50)]) == wire.UNSEEN and fd in cold._cannot_tell
        assert cold.take(1, 1, [Run(fd, 0, 50)], 0)
        assert len(cold._threads) == wire.UNSEEN_THREADS
        messages = wait_for_messages(device, 1)
        assert len(messages) == 1 and messages[0][:2] == (1, 0)
    finally:
        cold.close()
        os.close(fd)


def _mountable() -> str | None:
    return fuse_unusable(("fusermount3",), "these tests mount as root (scripts/test.sh)")


mounts = pytest.mark.skipif(_mountable() is not None, reason=str(_mountable()))


def read_everything(mp: Path, files: dict[str, bytes], seed: str) -> list[str]:
    """Every file whole (its pages evicted first), then at odd offsets and sizes with
    O_DIRECT (the kernel sends READs of exactly those); what differs."""
    wrong = []
    rng = random.Random(seed)
    for rel, data in sorted(files.items()):
        path = mp / rel
        evict(path)
        if path.read_bytes() != data:
            wrong.append(f"{rel}: whole")
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            for offset, size in offsets_and_sizes(len(data), rng, 25):
                if os.pread(fd, size, offset) != data[offset : offset + size]:
                    wrong.append(f"{rel} [{offset}:+{size}]")
        finally:
            os.close(fd)
    return wrong


def counters(mounted: Mounted, mounter: Mounter) -> dict[str, Any]:
    """`status --json` of the mount, once the daemon has published what was just read."""
    mounted.stats(after=time.time())
    result = mounter.cli("status", "--json", mounted.mp)
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


@mounts
@pytest.mark.timeout(180)
@pytest.mark.parametrize("layout", list(SPLICED))
def test_mounts_serve_exact_bytes_spliced_or_copied(
    layouts: Layouts, mounter: Mounter, layout: str
) -> None:
    root = layouts.roots[layout]
    mp = mounter.work / "mp"
    mp.mkdir()
    mounted = mounter.mount(mp, root, "--workers", "2", index=root / "i.lmdb")
    assert read_everything(mp, layouts.files[layout], layout) == []
    doc = counters(mounted, mounter)
    assert doc["errors"] == 0, mounted.log
    reads, spliced = doc["requests"]["read"], doc["reads_spliced"]
    print(f"{layout}: {spliced} of {reads} READs spliced")
    if SPLICED[layout]:  # all but the READs bigger than the pipe, of 1 MiB
        assert 0 < spliced < reads, (spliced, reads)
    else:
        assert spliced == 0 < reads
    assert "Traceback" not in mounted.log


@mounts
@pytest.mark.timeout(120)
def test_IMAGENETFS_SPLICE_0_copies_every_read(layouts: Layouts, env_mounter: EnvMounter) -> None:
    env_mounter.extra = {"IMAGENETFS_SPLICE": "0"}
    root = layouts.roots["noD-noF-fragments"]
    mp = env_mounter.work / "mp"
    mp.mkdir()
    mounted = env_mounter.mount(mp, root, "--workers", "2", index=root / "i.lmdb")
    assert read_everything(mp, layouts.files["noD-noF-fragments"], "off") == []
    doc = counters(mounted, env_mounter)
    assert doc["reads_spliced"] == 0 < doc["requests"]["read"] and doc["errors"] == 0


@mounts
@pytest.mark.timeout(120)
def test_image_truncated_under_a_spliced_read(
    layouts: Layouts, mounter: Mounter, tmp_path: Path
) -> None:
    """One worker: a READ across the cut fails (EIO) after part of it was spliced into the
    worker's pipe; the reads after it on the same worker are exact and spliced -- nothing of
    the failed one went out with them."""
    root = tmp_path / "src"
    shutil.copytree(layouts.roots["noD-noF"], root)
    files = layouts.files["noD-noF"]
    image = root / "test.squashfs"
    with SquashImage(image) as squash_image:
        ends = {}
        for entry in squash_image.walk():
            if entry.extent is not None and entry.size:
                runs = squash_image.locate(entry.extent, 0, entry.size)
                assert runs is not None
                ends[f"test/{entry.name.decode()}"] = (
                    runs[0].offset,
                    max(r.offset + r.length for r in runs),
                )
    huge_start = ends["test/huge.JPEG"][0]
    cut = huge_start + 1_000_000
    intact = sorted(rel for rel, (_, end) in ends.items() if end <= cut)
    assert len(intact) >= 3, intact
    mp = tmp_path / "mp"
    mp.mkdir()
    mounted = mounter.mount(mp, root, "--workers", "1", index=root / "i.lmdb")
    assert read_everything(mp, {rel: files[rel] for rel in intact}, "before") == []
    before = counters(mounted, mounter)
    os.truncate(image, cut)
    fd = os.open(mp / "test/huge.JPEG", os.O_RDONLY | os.O_DIRECT)
    try:
        with pytest.raises(OSError) as info:  # 100 KB before the cut, 28 KB past it
            os.pread(fd, BLOCK, 1_000_000 - 100_000)
        assert info.value.errno == errno.EIO
        assert os.pread(fd, 50_000, 10) == files["test/huge.JPEG"][10:50_010]
    finally:
        os.close(fd)
    assert read_everything(mp, {rel: files[rel] for rel in intact}, "after") == []
    after = counters(mounted, mounter)
    assert after["errors"] == before["errors"] + 1
    assert after["reads_spliced"] - before["reads_spliced"] >= 2 * len(intact)
    assert "truncated" in mounted.log and "Traceback" not in mounted.log


def read_cold(mp: Path, files: dict[str, bytes], images: list[Path]) -> list[str]:
    """Every file whole, from 8 threads, each read with the images' pages dropped before it
    (some land on the thread of a worker, some on the worker); what differs."""

    def one(rel: str) -> str | None:
        for image in images:
            drop_written(image)
        return None if (mp / rel).read_bytes() == files[rel] else rel

    with ThreadPoolExecutor(8) as pool:
        return [rel for rel in pool.map(one, sorted(files) * 3) if rel is not None]


@mounts
@pytest.mark.timeout(120)
@pytest.mark.parametrize("thread", ["1", "0"])
def test_mounted_cold_reads_are_exact_with_and_without_the_thread(
    layouts: Layouts, env_mounter: EnvMounter, thread: str
) -> None:
    """The tars mounted with two workers, read with their pages dropped: exact bytes, no
    error; `reads_cold` counts READs the workers' threads sent -- none with
    IMAGENETFS_COLD_THREAD=0."""
    if (reason := never_cold(layouts.images["tar"][0])) is not None:
        pytest.skip(reason)
    env_mounter.extra = {"IMAGENETFS_COLD_THREAD": thread}
    root = layouts.roots["tar"]
    mp = env_mounter.work / "mp"
    mp.mkdir()
    mounted = env_mounter.mount(mp, root, "--workers", "2", index=root / "i.lmdb")
    files = layouts.files["tar"]
    wrong = []
    for _ in range(3):  # (the files' own pages dropped too: each round READs them again)
        for rel in files:
            evict(mp / rel)
        wrong += read_cold(mp, files, layouts.images["tar"])
    assert wrong == []
    doc = counters(mounted, env_mounter)
    assert doc["errors"] == 0 and doc["reads_spliced"] > 0, mounted.log
    if thread == "1":
        assert 0 < doc["reads_cold"] <= doc["reads_spliced"], doc
    else:
        assert doc["reads_cold"] == 0, doc
    assert "Traceback" not in mounted.log


def test_a_tail_in_a_compressed_fragment_is_never_located(tmp_path: Path) -> None:
    """A file's tail in a *compressed* fragment block is not where its bytes lie as read:
    `locate` answers None for it, even where the block's compressed size would hold the tail
    (random bytes first, then text that compresses to nearly nothing), so a READ of it is
    decompressed, never spliced from the image."""
    staging = tmp_path / "s"
    staging.mkdir()
    (staging / "a.bin").write_bytes(random.Random(1).randbytes(3000))  # first in the fragment
    (staging / "b.bin").write_bytes(b"compressible " * 4_000)
    squash(staging, tmp_path / "i.squashfs")
    with SquashImage(tmp_path / "i.squashfs") as image:
        entries = {e.name: e for e in image.walk() if e.extent is not None}
        a = entries[b"a.bin"].extent
        assert a is not None and a.fragment is not None and a.fragment_offset == 0
        _, word = image._fragment(a.fragment)
        assert not word & (1 << 24) and word & ((1 << 24) - 1) >= 3000, "compressed, and big"
        for extent in (a, entries[b"b.bin"].extent):
            assert extent is not None
            assert image.locate(extent, 0, extent.size) is None
            assert image.locate(extent, 100, 50) is None
        assert image.read(a, 0, a.size) == (staging / "a.bin").read_bytes()
