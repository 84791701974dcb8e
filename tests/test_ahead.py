"""A reader in image order: read-ahead across files, files pushed with their IOCTL, and the
reads of a filesystem that cannot say what it caches handed to threads.

1. `ahead.Ahead` without FUSE, on a real file: files in image order ask the kernel to read
   ahead (the pages arrive in the page cache), bounded by the window; files in random order
   and a lone file ask nothing.
2. Real mounts of a `-noD -noF` and a gzip image, one reader: in sorted order (unbuffered
   reads, as `cp` reads: no IOCTL) the workers read ahead (`reads_ahead`), in random order
   they do not; the bytes are exact either way.
3. Python's buffered `open()` (an IOCTL before the READs): the workers push each cached
   file's bytes into the kernel's page cache with it, the READs it spares are not sent, and
   the bytes are exact; a second pass pushes nothing; a file whose pages were dropped since
   is READ as before. A reader in image order whose files are pushed is still read ahead of.
4. Images behind a passthrough FUSE filesystem (no RWF_NOWAIT): a worker's READs go to its
   threads, several at once (gzip: the core's reads; `-noD -noF`: the splices), exact.
"""

from __future__ import annotations

import contextlib
import errno
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from subprocess import PIPE
from typing import Any

import pytest
from helpers import EnvMounter, Mounted, children, evict, fuse_unusable, is_mounted, wait_until

from imagenetfs import ahead, ops, wire
from imagenetfs.generate import Spec, generate
from imagenetfs.ops import Counters
from imagenetfs.squashfs import SquashImage

REPO = Path(__file__).resolve().parent.parent
VARIANTS = {"noD-noF": ("-noD", "-noF"), "gzip": ()}


def _mountable() -> str | None:
    return fuse_unusable(("fusermount3", "unsquashfs"), "these tests mount as root")


mounts = pytest.mark.skipif(_mountable() is not None, reason=str(_mountable()))


@dataclass
class Set:
    root: Path  # the images
    files: dict[str, bytes]  # train/<wnid>/<name>: bytes, in image (sorted) order


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Set]:
    """Both variants of one generated set of realistic JPEGs (~110 KB each, 30 MB of train
    images: far more than `ahead.NEAR`), and the train files' bytes by unsquashfs."""
    if _mountable() is not None:
        pytest.skip(str(_mountable()))
    base = tmp_path_factory.mktemp("ahead")
    out = {}
    for name, args in VARIANTS.items():
        root = base / name
        spec = Spec(classes=4, train_per_class=70, val_per_class=1, test=2,
                    mksquashfs_args=args, progress=False, jobs=2)  # fmt: skip
        generate(root, spec)
        tree = base / f"{name}-tree"
        cmd = ["unsquashfs", "-q", "-n", "-d", str(tree), str(root / "train.squashfs")]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        files = {
            f"train/{p.relative_to(tree)}": p.read_bytes() for p in sorted(tree.rglob("*.JPEG"))
        }
        out[name] = Set(root, files)
    return out


def fs_counts(mounted: Mounted) -> dict[str, int]:
    """The mount's request counters, published after this call."""
    stats: dict[str, Any] = mounted.stats(after=time.time())
    return dict(stats["fs"])


def unbuffered(mp: Path, order: list[str]) -> dict[str, bytes]:
    """Each file read whole as `cp` reads it: unbuffered, so no `isatty` IOCTL."""
    got = {}
    for rel in order:
        with open(mp / rel, "rb", buffering=0) as f:
            chunks = []
            while chunk := f.read(1 << 20):
                chunks.append(chunk)
            got[rel] = b"".join(chunks)
    return got


def drop_caches() -> None:
    """Every clean page dropped (root): the images cold, as for a first reader."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("1")


# --- 1. without FUSE ------------------------------------------------------------------------


def cached(fd: int, pos: int) -> bool:
    try:
        return os.preadv(fd, [bytearray(1)], pos, os.RWF_NOWAIT) == 1
    except BlockingIOError:
        return False


def test_files_in_order_read_ahead_within_the_window_and_random_ones_do_not(
    tmp_path: Path,
) -> None:
    """`Ahead.saw` of files lying one after another asks the kernel to read ahead once
    `STREAK` files came in order -- never further than `WINDOW` past the furthest end, and
    the pages arrive; files at random places (and a lone file) ask nothing."""
    image = tmp_path / "image"
    size = 1 << 30  # (sparse past its first 64 MiB)
    with open(image, "wb") as f:
        f.write(os.urandom(1 << 20) * 64)
        f.truncate(size)
    fd = os.open(image, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        counters = Counters()
        reader = ahead.Ahead(counters)
        file_size = 100_000
        for n in range(ahead.STREAK):  # (the first file starts a stream: STREAK after it)
            reader.saw(fd, n * file_size, (n + 1) * file_size)
        assert counters.values[ops.READS_AHEAD] == 0
        reader.saw(fd, ahead.STREAK * file_size, (ahead.STREAK + 1) * file_size)
        frontier = (ahead.STREAK + 1) * file_size
        assert counters.values[ops.READS_AHEAD] == 1
        assert counters.values[ops.BYTES_AHEAD] == ahead.WINDOW
        assert wait_until(lambda: cached(fd, frontier + ahead.WINDOW - 1), 10)
        for n in range(ahead.STREAK + 1, 200):  # in order on: topped up, never past the window
            reader.saw(fd, n * file_size, (n + 1) * file_size)
            assert counters.values[ops.BYTES_AHEAD] <= (n + 1) * file_size + ahead.WINDOW
        reached = frontier + counters.values[ops.BYTES_AHEAD]  # (topped up by STEP or more)
        assert (
            200 * file_size + ahead.WINDOW - ahead.STEP < reached <= 200 * file_size + ahead.WINDOW
        )
        calls = counters.values[ops.READS_AHEAD]
        assert 1 < calls <= (200 * file_size) // ahead.STEP + 1

        rng = random.Random(7)
        for _ in range(500):  # random places (a 1 GiB file: hardly ever near each other)
            start = rng.randrange(0, size - file_size, 4096)
            reader.saw(fd, start, start + file_size)
        assert counters.values[ops.READS_AHEAD] == calls
    finally:
        os.close(fd)


# --- 2. a reader in image order, mounted ----------------------------------------------------


@mounts
@pytest.mark.timeout(300)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_reader_in_image_order_reads_ahead_and_a_random_one_does_not(
    sets: dict[str, Set], env_mounter: EnvMounter, variant: str
) -> None:
    """One worker, one reader, caches dropped: every train file in random order asks for no
    read-ahead; in sorted order (image order), read as `cp` reads, the worker reads ahead;
    the bytes are the image's either way."""
    s = sets[variant]
    env_mounter.extra = {"IMAGENETFS_PUSH": "0"}
    mp = env_mounter.mkdir("mp")
    mounted = env_mounter.mount(mp, s.root, "--workers", "1", index=s.root / "i.lmdb")
    order = list(s.files)
    shuffled = order[:]
    random.Random(3).shuffle(shuffled)
    drop_caches()
    before = fs_counts(mounted)
    got = unbuffered(mp, shuffled)
    assert got == {rel: s.files[rel] for rel in shuffled}
    after = fs_counts(mounted)
    assert after["reads_ahead"] == before["reads_ahead"], after

    drop_caches()
    for rel in order:
        evict(mp / rel)
    before = after
    assert unbuffered(mp, order) == s.files
    after = fs_counts(mounted)
    assert after["reads_ahead"] - before["reads_ahead"] >= 3, after
    calls = after["reads_ahead"] - before["reads_ahead"]
    assert after["bytes_ahead"] - before["bytes_ahead"] <= calls * ahead.WINDOW
    assert after["errors"] == 0 and "Traceback" not in mounted.log


@mounts
@pytest.mark.timeout(300)
def test_read_ahead_can_be_turned_off(sets: dict[str, Set], env_mounter: EnvMounter) -> None:
    """`IMAGENETFS_READ_AHEAD=0`: the same reader in image order reads nothing ahead."""
    s = sets["noD-noF"]
    env_mounter.extra = {"IMAGENETFS_READ_AHEAD": "0", "IMAGENETFS_PUSH": "0"}
    mounted = env_mounter.mount(env_mounter.mkdir("mp"), s.root, index=s.root / "i.lmdb")
    drop_caches()
    assert unbuffered(mounted.mp, list(s.files)) == s.files
    assert fs_counts(mounted)["reads_ahead"] == 0


# --- 3. files pushed with their IOCTL -------------------------------------------------------

READ_PY = """
import sys
for path in sys.argv[1:]:
    with open(path, "rb") as f:  # (buffered: Python asks isatty() first)
        sys.stdout.buffer.write(f.read())
"""


@mounts
@pytest.mark.timeout(300)
def test_a_python_reader_gets_cached_files_pushed_with_its_ioctl(
    sets: dict[str, Set], env_mounter: EnvMounter
) -> None:
    """Python's `open()` sends an IOCTL before it reads: a worker pushes the file's bytes
    (cached, stored as they are read) into the kernel's page cache with it, and the reader's
    READs are then not sent -- exact bytes, `files_pushed` counts them; read again, nothing is
    pushed (the kernel has them); a file whose pages were dropped since is READ again."""
    s = sets["noD-noF"]
    mounted = env_mounter.mount(env_mounter.mkdir("mp"), s.root, index=s.root / "i.lmdb")
    order = list(s.files)
    subprocess.run(["cat", str(s.root / "train.squashfs")], stdout=subprocess.DEVNULL, check=True)
    before = fs_counts(mounted)
    paths = [str(mounted.mp / rel) for rel in order]
    out = subprocess.run([sys.executable, "-c", READ_PY, *paths], capture_output=True, check=True)
    assert out.stdout == b"".join(s.files.values())
    after = fs_counts(mounted)
    pushed = after["files_pushed"] - before["files_pushed"]
    small = sum(len(data) <= 512 << 10 for data in s.files.values())
    assert pushed == small > 0, after
    assert after["bytes_pushed"] - before["bytes_pushed"] == sum(
        len(data) for data in s.files.values() if len(data) <= 512 << 10
    )
    # READs only for the files too big to push (without pushes: one or more per file)
    big = [data for data in s.files.values() if len(data) > 512 << 10]
    reads = after["reads"] - before["reads"]
    assert reads <= sum(-(-len(data) // 4096) for data in big) and reads < len(order) / 2

    out = subprocess.run([sys.executable, "-c", READ_PY, *paths], capture_output=True, check=True)
    assert out.stdout == b"".join(s.files.values())
    again = fs_counts(mounted)
    assert again["files_pushed"] == after["files_pushed"]
    assert again["reads"] - after["reads"] <= sum(-(-len(data) // 4096) for data in big)

    evict(mounted.mp / order[0])
    out = subprocess.run([sys.executable, "-c", READ_PY, paths[0]], capture_output=True, check=True)
    assert out.stdout == s.files[order[0]]
    last = fs_counts(mounted)
    assert last["reads"] > again["reads"] and last["files_pushed"] == again["files_pushed"]
    assert last["errors"] == 0 and "Traceback" not in mounted.log


@mounts
@pytest.mark.timeout(300)
@pytest.mark.skipif(sys.version_info >= (3, 14), reason="Python 3.14's open() asks no isatty()")
def test_a_reader_whose_files_are_pushed_is_still_read_ahead_of(
    sets: dict[str, Set], env_mounter: EnvMounter
) -> None:
    """A reader in image order with Python's buffered `open()`, the image in the page cache
    (as the kernel's own readahead of an image read in order leaves the next files): its
    files are pushed with their IOCTLs and no READ comes for them, yet the worker reads the
    image ahead of it (`reads_ahead`): a pushed file counts for the read-ahead as a READ from
    its start would. One worker: the read-ahead follows one worker's files."""
    s = sets["noD-noF"]
    mounted = env_mounter.mount(
        env_mounter.mkdir("mp"), s.root, "--workers", "1", index=s.root / "i.lmdb"
    )
    subprocess.run(["cat", str(s.root / "train.squashfs")], stdout=subprocess.DEVNULL, check=True)
    before = fs_counts(mounted)
    paths = [str(mounted.mp / rel) for rel in s.files]
    out = subprocess.run([sys.executable, "-c", READ_PY, *paths], capture_output=True, check=True)
    assert out.stdout == b"".join(s.files.values())
    after = fs_counts(mounted)
    assert after["files_pushed"] - before["files_pushed"] > len(paths) / 2, after
    assert after["reads_ahead"] - before["reads_ahead"] >= 3, after
    assert after["errors"] == 0 and "Traceback" not in mounted.log


def abort(mp: Path) -> None:
    """End a hung mount's connection (fusectl's /sys/fs/fuse/connections, mounted for it if
    it is not): its requests fail, its readers and daemon are released, and it can go."""
    connections = Path("/sys/fs/fuse/connections")
    ours = not any(connections.iterdir())
    if ours:
        subprocess.run(["mount", "-t", "fusectl", "none", str(connections)], check=True)
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            if fields[4] == str(mp):  # (not a stat of it: that would wait on the hung mount)
                (connections / fields[2].split(":")[1] / "abort").write_text("1")
    finally:
        if ours:
            subprocess.run(["umount", str(connections)], check=True)


@mounts
@pytest.mark.timeout(120)
@pytest.mark.skipif(sys.version_info >= (3, 14), reason="Python 3.14's open() asks no isatty()")
@pytest.mark.parametrize("workers", [1, 2])
def test_pushes_waiting_for_other_readers_reads_of_their_files_do_not_hang_the_workers(
    sets: dict[str, Set], env_mounter: EnvMounter, workers: int
) -> None:
    """As many cached files as workers. Python's `open()` of each sends an IOCTL, and while
    no worker has answered, another reader's unbuffered READ of the same file locks its pages
    in the kernel until it is answered. The push that comes with an IOCTL waits for those
    pages: made in a worker's request loop, it waits for a READ that only a request loop can
    answer -- with every worker's loop in such a store (one worker; or two, each with an
    IOCTL), the readers and the mount hang for good. The order is made sure by stopping the
    workers (SIGSTOP) until every request waits in the kernel's queue, the IOCTLs first.
    Every reader gets the exact bytes, promptly, and each file is pushed."""
    if platform.machine() != "x86_64":
        pytest.skip("reads readers' system calls by their x86_64 numbers")
    s = sets["noD-noF"]
    mounted = env_mounter.mount(
        env_mounter.mkdir("mp"), s.root, "--workers", str(workers), index=s.root / "i.lmdb"
    )
    pids = children(mounted.pid)
    assert len(pids) == workers, pids
    subprocess.run(["cat", str(s.root / "train.squashfs")], stdout=subprocess.DEVNULL, check=True)
    rels = [r for r, data in s.files.items() if 64 << 10 < len(data) <= wire.PUSH_MAX]
    paths = [mounted.mp / rel for rel in rels[:workers]]
    # (their LOOKUPs answered, and an OPEN -- ENOSYS: the kernel sends no more: the readers
    # then send just the IOCTLs and the READs)
    for path in paths:
        os.close(os.open(path, os.O_RDONLY))
    readers: list[tuple[Path, subprocess.Popen[bytes]]] = []
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            for code in (READ_PY, RAW_PY):  # (the IOCTLs queued, then the READs)
                for path in paths:
                    reader = subprocess.Popen([sys.executable, "-c", code, path], stdout=PIPE)
                    readers.append((path, reader))
                    assert wait_until(lambda: waiting_on(reader.pid, path), 10)  # noqa: B023
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        try:
            for path, reader in readers:
                out, _ = reader.communicate(timeout=20)
                assert out == s.files[str(path.relative_to(mounted.mp))]
        except subprocess.TimeoutExpired:
            abort(mounted.mp)
            pytest.fail("the workers hung: their pushes waited for READs only they could answer")
    finally:
        for _, reader in readers:
            reader.kill()
            reader.wait()
    after = fs_counts(mounted)
    assert after["files_pushed"] == workers and after["errors"] == 0, after
    assert "Traceback" not in mounted.log


RAW_PY = """
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)  # (no isatty(): the READ alone)
out = bytearray()
while chunk := os.read(fd, 1 << 20):
    out += chunk
sys.stdout.buffer.write(out)
"""


def waiting_on(pid: int, path: Path) -> bool:
    """Process `pid` waits in an ioctl or a read of `path`: for a FUSE request to be
    answered, or for the pages one will fill."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
        if fields[0] in WAITING_CALLS:
            return os.readlink(f"/proc/{pid}/fd/{int(fields[1], 16)}") == str(path)
    return False


#: ioctl and read (x86_64): where a reader waits for its IOCTL, or its READ's pages
WAITING_CALLS = {"16", "0"}


def pushable(files: dict[str, bytes]) -> tuple[int, int, list[bytes]]:
    """(files, bytes) a worker pushes whole with their IOCTL, and the files too big for it."""
    small = [data for data in files.values() if len(data) <= wire.PUSH_MAX]
    big = [data for data in files.values() if len(data) > wire.PUSH_MAX]
    return len(small), sum(map(len, small)), big


@mounts
@pytest.mark.timeout(300)
@pytest.mark.skipif(sys.version_info >= (3, 14), reason="Python 3.14's open() asks no isatty()")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_python_reader_gets_cold_files_pushed_with_its_ioctl(
    sets: dict[str, Set], env_mounter: EnvMounter, variant: str
) -> None:
    """Caches dropped (the image cold), two workers: Python's `open()` of each file -- its
    IOCTL -- has the file pushed whole all the same, by a worker's push thread: read from the
    disk and, on a gzip image, inflated, then stored in the kernel's page cache before the
    IOCTL is answered. Exact bytes; `files_pushed` counts every file up to `PUSH_MAX`, and no
    READ comes for them (`reads`: only the larger files')."""
    s = sets[variant]
    mounted = env_mounter.mount(
        env_mounter.mkdir("mp"), s.root, "--workers", "2", index=s.root / "i.lmdb"
    )
    paths = [str(mounted.mp / rel) for rel in s.files]
    drop_caches()
    before = fs_counts(mounted)
    out = subprocess.run([sys.executable, "-c", READ_PY, *paths], capture_output=True, check=True)
    assert out.stdout == b"".join(s.files.values())
    after = fs_counts(mounted)
    small, small_bytes, big = pushable(s.files)
    assert after["files_pushed"] - before["files_pushed"] == small > 0, after
    assert after["bytes_pushed"] - before["bytes_pushed"] == small_bytes
    reads = after["reads"] - before["reads"]
    assert reads <= sum(-(-len(data) // 4096) for data in big), after
    assert after["errors"] == 0 and "Traceback" not in mounted.log


@mounts
@pytest.mark.timeout(300)
@pytest.mark.skipif(sys.version_info >= (3, 14), reason="Python 3.14's open() asks no isatty()")
def test_IMAGENETFS_PUSH_0_pushes_no_cold_file(
    sets: dict[str, Set], env_mounter: EnvMounter
) -> None:
    """With `IMAGENETFS_PUSH=0` the same reader of a cold gzip image gets its files by READs,
    none pushed."""
    s = sets["gzip"]
    env_mounter.extra = {"IMAGENETFS_PUSH": "0"}
    mounted = env_mounter.mount(
        env_mounter.mkdir("mp"), s.root, "--workers", "2", index=s.root / "i.lmdb"
    )
    paths = [str(mounted.mp / rel) for rel in s.files]
    drop_caches()
    out = subprocess.run([sys.executable, "-c", READ_PY, *paths], capture_output=True, check=True)
    assert out.stdout == b"".join(s.files.values())
    after = fs_counts(mounted)
    assert after["files_pushed"] == after["bytes_pushed"] == 0, after
    assert after["reads"] >= len(paths), after


READ_ONE_PY = """
import sys
f = open(sys.argv[1], "rb")  # (buffered: Python asks isatty() first)
print("opened", flush=True)
try:
    f.read()
    print("read")
except OSError as e:
    print("errno", e.errno)
"""


def compressed_block(image: Path, names: list[str]) -> tuple[str, int, int]:
    """(name, position, length) of a compressed block of one of `names` (file names, in
    the image's order) in gzip image `image`: a data block of its, else its fragment's."""
    wanted = {name.encode(): name for name in names}
    with SquashImage(image) as squash:
        for entry in squash.walk():
            if entry.extent is None or entry.name not in wanted:
                continue
            extent = entry.extent
            pos = extent.blocks_start
            for word in extent.block_words():
                if word & 0xFFFFFF and not word & (1 << 24):
                    return wanted[entry.name], pos, word & 0xFFFFFF
                pos += word & 0xFFFFFF
            if extent.fragment is not None:
                start, word = squash._fragment(extent.fragment)
                if not word & (1 << 24):
                    return wanted[entry.name], start, word & 0xFFFFFF
    raise AssertionError("no compressed block")


@mounts
@pytest.mark.timeout(300)
@pytest.mark.skipif(sys.version_info >= (3, 14), reason="Python 3.14's open() asks no isatty()")
def test_a_corrupt_block_fails_the_read_not_the_open_and_the_worker_goes_on(
    sets: dict[str, Set], env_mounter: EnvMounter
) -> None:
    """A gzip block of a file spoilt after mounting (its inflating fails): Python's `open()`
    of it succeeds -- the IOCTL's push is given up, the IOCTL answered as ever -- and its
    read fails with EIO, from the READ that then comes (counted in `errors`, said in the
    log). The workers live on, and the next cold file is pushed as usual."""
    root = env_mounter.work / "src"  # (a copy to spoil, with an index of its own)
    shutil.copytree(sets["gzip"].root, root, ignore=shutil.ignore_patterns("i.lmdb*"))
    files = sets["gzip"].files
    mounted = env_mounter.mount(
        env_mounter.mkdir("mp"), root, "--workers", "2", index=root / "i.lmdb"
    )
    workers = children(mounted.pid)
    assert len(workers) == 2, workers
    image = root / "train.squashfs"
    name, pos, length = compressed_block(image, [rel.rsplit("/", 1)[1] for rel in files])
    rel = next(r for r in files if r.endswith("/" + name))
    with open(image, "r+b") as f:  # (through the page cache: the daemon reads it so)
        f.seek(pos + length // 2)
        f.write(bytes(64))
    spoilt = subprocess.run(
        [sys.executable, "-c", READ_ONE_PY, str(mounted.mp / rel)], capture_output=True,
        text=True, check=True,
    )  # fmt: skip
    assert spoilt.stdout.split() == ["opened", "errno", str(errno.EIO)], spoilt
    counts = fs_counts(mounted)
    assert counts["errors"] >= 1 and counts["files_pushed"] == 0, counts
    assert "decompression failed" in mounted.log and "Traceback" not in mounted.log

    # the workers go on: the same processes push the next cold files
    drop_caches()
    others = [r for r in files if r != rel and len(files[r]) <= wire.PUSH_MAX][-4:]
    out = subprocess.run(
        [sys.executable, "-c", READ_PY, *(str(mounted.mp / r) for r in others)],
        capture_output=True, check=True,
    )  # fmt: skip
    assert out.stdout == b"".join(files[r] for r in others)
    after = fs_counts(mounted)
    assert after["files_pushed"] == len(others), after
    assert children(mounted.pid) == workers
    assert "Traceback" not in mounted.log


# --- 4. a filesystem that cannot say what it caches ------------------------------------------


def stormfs(work: Path) -> Path:
    """The passthrough of scripts/storm/ (the benchmark's slow shared filesystem)."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from benchlib import storm
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return storm.build(work)


#: pread64 and splice (x86_64): how a worker's threads read an image
READ_CALLS = {"17", "275"}


def reading(worker: int, under: str) -> list[int]:
    """The threads of process `worker` in a pread or splice from a file under `under`."""
    found = []
    for task in Path(f"/proc/{worker}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (task / "syscall").read_text().split()
            if fields[0] not in READ_CALLS:
                continue
            if os.readlink(f"/proc/{worker}/fd/{int(fields[1], 16)}").startswith(under):
                found.append(int(task.name))
    return found


@mounts
@pytest.mark.timeout(300)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_reads_from_a_filesystem_without_nowait_go_to_several_threads(
    sets: dict[str, Set], env_mounter: EnvMounter, variant: str
) -> None:
    """The images behind a FUSE passthrough (no RWF_NOWAIT; reads capped at 50 MB/s, so a
    READ waits for "the link"), one worker, eight readers: the worker hands its READs to its
    threads (`reads_cold`), more than one at once -- it sees a READ while others wait -- and
    every byte is exact."""
    if platform.machine() != "x86_64":
        pytest.skip("reads threads' system calls by their x86_64 numbers")
    s = sets[variant]
    exe = stormfs(env_mounter.work)
    shared = env_mounter.mkdir("shared")
    storm = subprocess.Popen(
        [str(exe), "-f", "-d", "0", "-q", "64", "-t", "10", "-b", "50", str(s.root), str(shared)]
    )
    try:
        assert wait_until(lambda: is_mounted(shared), 30)
        mounted = env_mounter.mount(
            env_mounter.mkdir("mp"), shared, "--workers", "1", index=s.root / "i.lmdb"
        )
        order = list(s.files)
        assert (mounted.mp / order[0]).is_file(), (os.listdir(mounted.mp), mounted.log)
        random.Random(5).shuffle(order)
        drop_caches()
        before = fs_counts(mounted)
        chunks = [order[i::8] for i in range(8)]
        (worker,) = children(mounted.pid)
        most = 0  # threads of the worker seen at once in a read of the image
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(unbuffered, mounted.mp, chunk) for chunk in chunks]
            while not all(f.done() for f in futures):
                most = max(most, len(reading(worker, str(shared))))
                time.sleep(0.002)
            got: dict[str, bytes] = {}
            for f in futures:
                got.update(f.result())
        assert got == s.files
        assert most >= 3, most  # (the worker and its threads: up to 1 + UNSEEN_THREADS)
        after = fs_counts(mounted)
        handed = after["reads_cold"] - before["reads_cold"]
        # (all but those the worker took while UNSEEN_WAITING READs waited for its threads)
        assert handed > (after["reads"] - before["reads"]) / 2 > 0, after
        buckets = mounted.stats()["read_latency"]["buckets"]
        assert sum(buckets) >= after["reads"]
        assert after["errors"] == 0 and "Traceback" not in mounted.log
    finally:
        env_mounter.cleanup()
        subprocess.run(["fusermount3", "-u", "-z", str(shared)], capture_output=True)
        storm.kill()
        storm.wait()
