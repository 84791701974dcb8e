"""The SquashFS reader against its oracle, unsquashfs, on real images built by mksquashfs.

Every image of `IMAGE_OPTIONS` is built from one source tree holding every inode type (basic
and extended), hard links, sparse files, non-UTF-8 names, big directories and a file past
4 GiB. The reader's tree must equal `unsquashfs -lln`, its attributes the extracted tree's
(`unsquashfs -d`), and its reads the extracted bytes. Corrupt images (patched copies of small
real images, and random mutations) must raise CorruptImageError naming the image, quickly.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import stat
import struct
import subprocess
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagenetfs.errors import CorruptImageError
from imagenetfs.squashfs import DIR, FILE, Entry, Extent, SquashImage

pytestmark = pytest.mark.skipif(
    shutil.which("mksquashfs") is None or shutil.which("unsquashfs") is None,
    reason="needs mksquashfs and unsquashfs (squashfs-tools)",
)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
BIG_SIZE = 4 * GiB + 512 * MiB + 7  # past 4 GiB (extended inode), odd tail (fragment)
WHOLE_READ_LIMIT = 8 * MiB  # files up to this size are also compared by one whole read

IMAGE_OPTIONS: dict[str, list[str]] = {
    "gzip": [],
    "xz": ["-comp", "xz"],
    "lzma": ["-comp", "lzma"],
    "lz4": ["-comp", "lz4"],
    "lzo": ["-comp", "lzo"],
    "zstd": ["-comp", "zstd"],
    "noD-noF": ["-noD", "-noF"],
    "uncompressed": ["-noI", "-noD", "-noF", "-noX"],
    "no-fragments": ["-no-fragments"],
    "always-use-fragments": ["-always-use-fragments"],
    "tailends": ["-tailends"],
    "b4K": ["-b", "4K"],
    "b1M": ["-b", "1M"],
}
# The >4 GiB sparse file costs ~2 s of mksquashfs time per image (the kernel hands it 4.5 GiB
# of zeros to read), so only two images carry it by default; the slow test covers all options.
BIG_FILE_IMAGES = {"gzip", "noD-noF"}


def run(*args: str | os.PathLike[str]) -> bytes:
    return subprocess.run(args, check=True, capture_output=True).stdout


def available_compressors() -> set[str]:
    """Compressors this mksquashfs was built with (its -help lists them)."""
    result = subprocess.run(["mksquashfs", "-help"], capture_output=True, text=True)
    text = result.stdout + result.stderr
    block = text.split("Compressors available", 1)[-1].split("-b <block_size>", 1)[0]
    return set(re.findall(r"^\s+(\w+)", block, re.MULTILINE))


def mksquashfs(source: Path, image: Path, *options: str) -> None:
    run("mksquashfs", source, image, "-noappend", "-quiet", "-no-progress", "-processors", "2",
        *options)  # fmt: skip


# -- the source tree --------------------------------------------------------------------------


def text_bytes(size: int, seed: int) -> bytes:
    """Compressible content, different per seed (so mksquashfs does not deduplicate it)."""
    line = f"{seed:06d} the quick brown fox jumps over the lazy dog\n".encode()
    return (line * (size // len(line) + 1))[:size]


def build_source(root: Path, *, big: bool) -> None:
    rng = random.Random(20120101)
    root.mkdir()
    files = root / "files"
    files.mkdir()
    for size in (0, 1, 100, 4095, 4096, 4097, 131071, 131072, 131073, 3 * 131072 + 5, 1048577):
        (files / f"random-{size}").write_bytes(rng.randbytes(size))
    for size in (1, 4095, 4096, 4097, 131071, 131072, 131073, 1048575, 1048576, 1048577):
        (files / f"text-{size}").write_bytes(text_bytes(size, size))
    (files / "text-several-blocks").write_bytes(text_bytes(5 * 131072 + 777, 7))
    (files / "dup-a").write_bytes(text_bytes(200_000, 99))  # duplicates share blocks
    (files / "dup-b").write_bytes(text_bytes(200_000, 99))
    with open(files / "holes", "wb") as f:  # sparse blocks in the middle
        f.write(rng.randbytes(1000))
        f.seek(2 * 131072 + 4096 * 3 + 11)
        f.write(rng.randbytes(1000))
    with open(files / "hole-at-end", "wb") as f:
        f.write(b"start")
        f.truncate(3 * 131072 + 65536)

    (root / "empty").mkdir()
    deep = root / "deep"
    for level in range(30):
        deep = deep / f"level{level}"
    deep.mkdir(parents=True)
    wide = root / "wide"  # > 256 entries: several directory headers
    wide.mkdir()
    for i in range(300):
        (wide / f"w{i:04d}").write_bytes(str(i).encode())
    long = root / "longnames"  # listing > 64 KiB: an extended directory inode
    long.mkdir()
    for i in range(330):
        (long / (f"{i:04d}" + "n" * 200)).write_bytes(b"%d" % i)
    (long / ("m" * 255)).write_bytes(b"longest name")

    links = root / "links"
    links.mkdir()
    (links / "one").write_bytes(rng.randbytes(5000))
    os.link(links / "one", links / "two")
    os.link(links / "one", files / "three")
    (links / "empty-a").write_bytes(b"")
    os.link(links / "empty-a", links / "empty-b")

    sym = root / "sym"
    sym.mkdir()
    os.symlink("../files/random-1", sym / "relative")
    os.symlink("/etc/passwd", sym / "absolute")
    os.symlink("nowhere", sym / "dangling")
    os.symlink("a/" * 1500 + "end", sym / "long")

    dev = root / "dev"
    dev.mkdir()
    os.mknod(dev / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(dev / "loop0", stat.S_IFBLK | 0o660, os.makedev(7, 0))
    os.mknod(dev / "bignum", stat.S_IFCHR | 0o600, os.makedev(300, 70000))
    os.mkfifo(dev / "fifo")
    if len(str(dev / "socket")) < 100:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(dev / "socket"))

    odd = root / os.fsdecode(b"caf\xe9")  # non-UTF-8 names
    odd.mkdir()
    (odd / os.fsdecode(b"\x80.JPEG")).write_bytes(b"latin-1 name")
    (root / os.fsdecode(b"\xff\xfe")).write_bytes(b"not utf-8")
    (root / "with space").write_bytes(b"spaced")

    # Extended attributes make every inode type extended (types 8..14).
    xattrs = root / "xattrs"
    xattrs.mkdir()
    (xattrs / "file").write_bytes(b"x" * 10)
    os.symlink("file", xattrs / "symlink")
    os.mknod(xattrs / "chr", stat.S_IFCHR | 0o600, os.makedev(4, 5))
    os.mknod(xattrs / "blk", stat.S_IFBLK | 0o600, os.makedev(8, 1))
    os.mkfifo(xattrs / "fifo")
    (xattrs / "dir").mkdir()
    for entry in xattrs.iterdir():
        os.setxattr(entry, "trusted.imagenetfs", b"1", follow_symlinks=False)

    # Owners and modes.
    os.lchown(files / "random-1", 1000, 1000)
    os.lchown(files / "random-100", 65534, 100)
    os.lchown(sym / "relative", 12345, 54321)
    os.lchown(wide, 4242, 4343)
    (files / "random-4095").chmod(0o4755)
    (files / "random-4096").chmod(0o2711)
    (files / "random-4097").chmod(0o000)
    (root / "empty").chmod(0o1777)

    if big:
        with open(root / "big", "wb") as f:
            f.write(b"HEAD")
            f.seek(4 * GiB - 3)
            f.write(rng.randbytes(10))  # straddles 4 GiB
            f.seek(BIG_SIZE - 100)
            f.write(rng.randbytes(100))

    # Timestamps last (creating entries changes directory mtimes), deepest first.
    for i, path in enumerate(sorted(root.rglob("*"), key=lambda p: -len(p.parts))):
        os.utime(path, (0, 1_000_000_000 + 7919 * i), follow_symlinks=False)
    os.utime(root, (0, 1_300_000_000))


@pytest.fixture(scope="session")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    base = tmp_path_factory.mktemp("sources")
    trees = {big: base / ("with-big" if big else "small") for big in (False, True)}
    for big, path in trees.items():
        build_source(path, big=big)
    return trees


@dataclass
class Built:
    name: str
    image: Path
    extracted: Path  # unsquashfs -d output
    listing: dict[bytes, tuple[str, int, int, str, str, bytes | None]]  # unsquashfs -lln


def parse_lln(output: bytes) -> dict[bytes, tuple[str, int, int, str, str, bytes | None]]:
    """unsquashfs -lln lines -> path: (mode, uid, gid, size or 'major,minor', mtime, target)."""
    pattern = re.compile(rb"^(\S{10}) (\d+)/(\d+) +(\d+|\d+, *\d+) (\S+ \S+) squashfs-root(.*)$")
    listing = {}
    for line in output.split(b"\n"):
        if not line.strip():
            continue
        match = pattern.match(line)
        assert match, line
        mode, uid, gid, size, mtime, rest = match.groups()
        target = None
        if mode.startswith(b"l"):
            rest, target = rest.split(b" -> ", 1)
        size = re.sub(rb",\s*", b",", size)
        key = rest.removeprefix(b"/")
        listing[key] = (mode.decode(), int(uid), int(gid), size.decode(), mtime.decode(), target)
    return listing


@pytest.fixture(scope="module", params=list(IMAGE_OPTIONS))
def built(
    request: pytest.FixtureRequest,
    sources: dict[bool, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Built:
    name: str = request.param
    options = IMAGE_OPTIONS[name]
    if "-comp" in options and options[1] not in available_compressors():
        pytest.skip(f"this mksquashfs has no {options[1]} compressor")
    base = tmp_path_factory.mktemp(f"image-{name}")
    image = base / "image.squashfs"
    mksquashfs(sources[name in BIG_FILE_IMAGES], image, *options)
    extracted = base / "extracted"
    run("unsquashfs", "-d", extracted, "-q", "-n", "-p", "2", image)
    listing = parse_lln(run("unsquashfs", "-lln", "-UTC", image))
    return Built(name, image, extracted, listing)


def entries_of(image: Path) -> list[Entry]:
    with SquashImage(image) as squash:
        return list(squash.walk())


def regular_files(entries: list[Entry]) -> Iterator[tuple[Entry, Extent]]:
    for entry in entries:
        if entry.extent is not None:
            yield entry, entry.extent


# -- the tree against the oracle --------------------------------------------------------------


def unsquashfs_device_column(rdev: int) -> str:
    """How unsquashfs 4.5.1 -lln shows a device: it splits the stored word as (word >> 8, word &
    0xff), which differs from the real numbers when the minor is >= 256 (extraction is right)."""
    major, minor = os.major(rdev), os.minor(rdev)
    word = (major << 8) | (minor & 0xFF) | ((minor & ~0xFF) << 12)
    return f"{word >> 8},{word & 0xFF}"


def test_tree_matches_unsquashfs_listing(built: Built) -> None:
    entries = entries_of(built.image)
    mine = {}
    for e in entries:
        size = unsquashfs_device_column(e.rdev) if e.rdev else str(e.size)
        mtime = time.strftime("%Y-%m-%d %H:%M", time.gmtime(e.mtime))
        mine[e.path] = (stat.filemode(e.mode), e.uid, e.gid, size, mtime, e.target)
    assert mine == built.listing
    assert len(entries) == len(mine), "a path was listed twice"


def test_walk_order_and_structure(built: Built) -> None:
    entries = entries_of(built.image)
    root = entries[0]
    assert (root.path, root.name, root.kind, root.parent) == (b"", b"", DIR, root.inode_number)
    by_path = {e.path: e for e in entries}
    children: dict[bytes, list[bytes]] = defaultdict(list)
    for e in entries[1:]:
        parent_path = e.path.rpartition(b"/")[0]
        assert by_path[parent_path].inode_number == e.parent
        assert e.name == e.path.rpartition(b"/")[2]
        children[parent_path].append(e.name)
    for parent_path, names in children.items():
        assert names == sorted(names), parent_path
        # All children of a directory are yielded consecutively, after the directory itself.
        positions = [i for i, e in enumerate(entries) if e.path.rpartition(b"/")[0] == parent_path]
        assert positions == list(range(positions[0], positions[0] + len(positions)))
    assert entries.index(by_path[b"wide"]) < entries.index(by_path[b"wide/w0000"])


def test_attributes_match_extracted_tree(built: Built) -> None:
    by_inode: dict[int, set[int]] = defaultdict(set)
    for e in entries_of(built.image):
        st = os.lstat(os.path.join(os.fsencode(built.extracted), e.path))
        assert (e.mode, e.uid, e.gid, e.mtime) == (st.st_mode, st.st_uid, st.st_gid, st.st_mtime)
        if e.kind == FILE:
            assert (e.size, e.nlink) == (st.st_size, st.st_nlink)
            by_inode[e.inode_number].add(st.st_ino)
        if stat.S_ISBLK(e.mode) or stat.S_ISCHR(e.mode):
            assert e.rdev == st.st_rdev
    # Hard links: one image inode <=> one extracted inode.
    assert all(len(inos) == 1 for inos in by_inode.values())
    assert len({next(iter(inos)) for inos in by_inode.values()}) == len(by_inode)


def test_extended_inodes_appear(built: Built) -> None:
    by_path = {e.path: e for e in entries_of(built.image)}
    assert by_path[b"links/one"].inode_type == FILE + 7
    assert by_path[b"links/one"].nlink == 3
    assert by_path[b"longnames"].inode_type == DIR + 7
    assert {by_path[b"xattrs/" + name].inode_type for name in (b"file", b"symlink", b"chr",
            b"blk", b"fifo", b"dir")} == {9, 10, 12, 11, 13, 8}  # fmt: skip
    assert by_path[b"files/random-1"].inode_type == FILE
    if built.name in BIG_FILE_IMAGES:
        assert by_path[b"big"].inode_type == FILE + 7
        assert by_path[b"big"].size == BIG_SIZE


# -- file contents against the oracle ---------------------------------------------------------


def interesting_ranges(size: int, block_size: int, rng: random.Random) -> Iterator[tuple[int, int]]:
    """(offset, length) pairs: block and tail boundaries, past EOF, and random ones."""
    yield 0, size + 1000
    yield size, 10
    yield size + 5, 10
    tail = size - size % block_size
    for edge in {block_size, 2 * block_size, tail, size - 1}:
        for delta in (-1, 0, 1):
            if 0 <= edge + delta <= size:
                yield edge + delta, 2
                yield max(edge + delta - 100, 0), 300
    for _ in range(8):
        offset = rng.randrange(size + 1)
        yield offset, rng.randrange(1, 3 * block_size)


def test_reads_match_extracted_files(built: Built) -> None:
    rng = random.Random(built.name)
    with SquashImage(built.image) as squash:
        for entry, extent in regular_files(list(squash.walk())):
            path = os.path.join(os.fsencode(built.extracted), entry.path)
            with open(path, "rb") as f:
                if entry.size <= WHOLE_READ_LIMIT:
                    assert squash.read(extent, 0, entry.size) == f.read(), entry.path
                for offset, length in interesting_ranges(entry.size, squash.block_size, rng):
                    length = min(length, WHOLE_READ_LIMIT)  # the >4 GiB file: no 4 GiB reads
                    want = os.pread(f.fileno(), length, offset)
                    assert squash.read(extent, offset, length) == want, (entry.path, offset)
            assert squash.read(extent, 0, 0) == b""
            with pytest.raises(ValueError):
                squash.read(extent, -1, 10)


@pytest.mark.parametrize("built", sorted(BIG_FILE_IMAGES), indirect=True)
def test_big_sparse_file(built: Built) -> None:
    """The >4 GiB sparse file (in two images here; every option in the slow test)."""
    with SquashImage(built.image) as squash:
        extent = next(e.extent for e in squash.walk() if e.path == b"big")
        assert extent is not None
        with open(built.extracted / "big", "rb") as f:
            for offset in (0, 4 * GiB - 100, 4 * GiB - 3, 4 * GiB, BIG_SIZE - 150, BIG_SIZE - 7):
                want = os.pread(f.fileno(), 300, offset)
                assert squash.read(extent, offset, 300) == want, offset
        assert squash.read(extent, 0, 4) == b"HEAD"


def test_concurrent_reads(built: Built) -> None:
    with SquashImage(built.image, cache_blocks=4) as squash:
        files = [(e, x) for e, x in regular_files(list(squash.walk())) if e.size < 2 * MiB]
        expected = {e.path: (built.extracted / os.fsdecode(e.path)).read_bytes() for e, _ in files}
        errors: list[BaseException] = []

        def reader(seed: int) -> None:
            rng = random.Random(seed)
            try:
                for _ in range(150):
                    entry, extent = rng.choice(files)
                    offset = rng.randrange(entry.size + 1)
                    length = rng.randrange(300_000)
                    got = squash.read(extent, offset, length)
                    assert got == expected[entry.path][offset : offset + length]
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors[0]
        stats = squash.statistics()
        assert stats.cached_blocks <= stats.cache_capacity == 4


def test_fingerprint_and_statistics(built: Built) -> None:
    with SquashImage(built.image) as squash:
        fp = squash.fingerprint()
        assert fp.file_size == built.image.stat().st_size
        assert len(fp.samples) == 32  # hex of a 16-byte digest
        assert fp.bytes_used <= fp.file_size
        options = IMAGE_OPTIONS[built.name]
        assert fp.compressor == (options[1] if options[:1] == ["-comp"] else "gzip")
        assert fp.block_size == {"b4K": 4096, "b1M": MiB}.get(built.name, 128 * KiB)
        assert fp.inode_count == squash.superblock.inode_count
        extent = next(e.extent for e in squash.walk() if e.path == b"files/text-131073")
        assert extent is not None
        squash.read(extent, 0, 10)
        squash.read(extent, 5, 10)
        stats = squash.statistics()
        # 2 MiB of decompressed blocks, at least 4 of them
        assert stats.cache_capacity == {"b4K": 512, "b1M": 4}.get(built.name, 16)
        if built.name in ("noD-noF", "uncompressed"):
            assert stats.cache_hits == stats.cache_misses == 0  # uncompressed: plain preads
        else:
            assert (stats.cache_hits, stats.cache_misses) == (1, 1)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(IMAGE_OPTIONS))
def test_big_sparse_file_every_option(tmp_path: Path, name: str) -> None:
    """The >4 GiB sparse file under every option (with 4 KiB blocks: 1.2M block words)."""
    options = IMAGE_OPTIONS[name]
    if "-comp" in options and options[1] not in available_compressors():
        pytest.skip(f"this mksquashfs has no {options[1]} compressor")
    source = tmp_path / "src"
    source.mkdir()
    data = random.Random(name).randbytes(3 * MiB)
    with open(source / "big", "wb") as f:
        f.write(data)
        f.seek(4 * GiB - 3)
        f.write(data)
        f.truncate(BIG_SIZE)
    image = tmp_path / "big.squashfs"
    mksquashfs(source, image, *options)
    with SquashImage(image) as squash:
        (big,) = [e for e in squash.walk() if e.path == b"big"]
        assert big.extent is not None and big.size == BIG_SIZE and big.inode_type == FILE + 7
        read = squash.read
        assert read(big.extent, 0, len(data) + 5) == data + b"\0" * 5
        assert read(big.extent, 4 * GiB - 5, len(data) + 7) == b"\0\0" + data + b"\0" * 5
        assert read(big.extent, 4 * GiB + 1000, 200_000) == data[1003:201_003]
        assert read(big.extent, BIG_SIZE - 3, 100) == b"\0\0\0"
        assert read(big.extent, BIG_SIZE, 100) == b""


# -- corrupt images ---------------------------------------------------------------------------

SUPERBLOCK = struct.Struct("<5I6H8Q")
FIELDS = [
    "magic", "inode_count", "mkfs_time", "block_size", "fragment_count", "compressor",
    "block_log", "flags", "id_count", "version_major", "version_minor", "root_inode",
    "bytes_used", "id_table_start", "xattr_table_start", "inode_table_start",
    "directory_table_start", "fragment_table_start", "export_table_start",
]  # fmt: skip


def exercise(image: Path) -> None:
    """Everything the index and the daemon do with an image: open, walk, read every file."""
    with SquashImage(image) as squash:
        for entry in squash.walk():
            if entry.extent is not None:
                squash.read(entry.extent, 0, min(entry.size, MiB))
                squash.read(entry.extent, entry.size // 2, 70_000)


def assert_corrupt(image: Path, message: str = "") -> CorruptImageError:
    with pytest.raises(CorruptImageError) as info:
        exercise(image)
    assert str(image) in str(info.value)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    return info.value


def superblock(data: bytes | bytearray) -> dict[str, int]:
    return dict(zip(FIELDS, SUPERBLOCK.unpack_from(data), strict=True))


def patched(source: Path, target: Path, edit: Callable[[bytearray], None]) -> Path:
    data = bytearray(source.read_bytes())
    edit(data)
    target.write_bytes(data)
    return target


def set_fields(**fields: int) -> Callable[[bytearray], None]:
    def edit(data: bytearray) -> None:
        values = superblock(data) | fields
        SUPERBLOCK.pack_into(data, 0, *(values[name] for name in FIELDS))

    return edit


@pytest.fixture(scope="module")
def small_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small real images: gzip, and uncompressed metadata (-noI) that tests patch by offset."""
    base = tmp_path_factory.mktemp("small")
    tree = base / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "c").mkdir()
    (tree / "c" / "small").write_bytes(b"tail in a fragment")
    (tree / "c" / "blocks").write_bytes(text_bytes(300_000, 3))
    (tree / "c" / "random").write_bytes(random.Random(5).randbytes(150_000))
    os.link(tree / "c" / "small", tree / "c" / "linked")
    os.symlink("c/small", tree / "sym")
    images = {}
    for name, options in {
        "gzip": [],
        "noI": ["-noI", "-noX"],
        "plain": ["-noI", "-noD", "-noF"],
    }.items():
        images[name] = base / f"{name}.squashfs"
        mksquashfs(tree, images[name], *options)
        exercise(images[name])
    names = base / "names"
    names.mkdir()
    (names / "xx").write_bytes(b"1")
    (names / "y").write_bytes(b"2")
    images["names"] = base / "names.squashfs"
    mksquashfs(names, images["names"], "-noI")
    dirs_only = base / "dirs"
    (dirs_only / "a" / "b").mkdir(parents=True)
    images["dirs"] = base / "dirs.squashfs"
    mksquashfs(dirs_only, images["dirs"], "-noI")
    exercise(images["dirs"])
    return images


def inode_records(data: bytes | bytearray) -> list[tuple[int, int]]:
    """(file offset, type) of each inode of a small -noI image (one uncompressed block)."""
    sb = superblock(data)
    pos = sb["inode_table_start"]
    (header,) = struct.unpack_from("<H", data, pos)
    assert header & 0x8000, "expected an uncompressed inode table"
    pos, end = pos + 2, pos + 2 + (header & 0x7FFF)
    records = []
    while pos < end:
        itype = struct.unpack_from("<H", data, pos)[0]
        records.append((pos, itype))
        if itype == 1:
            pos += 32
        elif itype in (2, 9):
            head, size_at, frag_at = (32, 28, 20) if itype == 2 else (56, 24, 44)
            size_fmt = "<I" if itype == 2 else "<Q"
            size = struct.unpack_from(size_fmt, data, pos + size_at)[0]
            frag = struct.unpack_from("<I", data, pos + frag_at)[0]
            nblocks = (
                size // sb["block_size"] if frag != 0xFFFFFFFF else -(-size // sb["block_size"])
            )
            pos += head + 4 * nblocks
        elif itype == 3:
            pos += 24 + struct.unpack_from("<I", data, pos + 20)[0]
        else:
            raise AssertionError(f"unexpected inode type {itype}")
    return records


TIMEOUT = pytest.mark.timeout(30)


@TIMEOUT
@pytest.mark.parametrize("cut", [0, 10, 95, 96, 200, "half", "end-1"])
def test_truncated_image(small_images: dict[str, Path], tmp_path: Path, cut: int | str) -> None:
    source = small_images["gzip"]
    used = superblock(source.read_bytes())["bytes_used"]
    length = {"half": used // 2, "end-1": used - 1}.get(str(cut), cut)
    assert isinstance(length, int)

    def edit(data: bytearray) -> None:
        del data[length:]

    assert_corrupt(
        patched(source, tmp_path / "cut.squashfs", edit), "only" if length < 96 else "truncated"
    )


@TIMEOUT
def test_truncated_image_with_matching_bytes_used(
    small_images: dict[str, Path], tmp_path: Path
) -> None:
    source = small_images["gzip"]
    cut = superblock(source.read_bytes())["directory_table_start"] + 5

    def edit(data: bytearray) -> None:
        del data[cut:]
        set_fields(bytes_used=cut)(data)

    assert_corrupt(patched(source, tmp_path / "cut.squashfs", edit), "beyond end")


@TIMEOUT
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"magic": 0x71736873}, "not a SquashFS image (bad magic)"),
        ({"version_major": 3, "version_minor": 1}, "unsupported SquashFS version 3.1"),
        ({"version_minor": 1}, "unsupported SquashFS version 4.1"),
        ({"block_size": 3}, "invalid block size 3"),
        ({"block_size": 1 << 30, "block_log": 30}, "invalid block size"),
        ({"block_size": 65536}, "invalid block size 65536 (block_log 17)"),
        ({"compressor": 9}, "unknown compressor id 9"),
        ({"bytes_used": 1 << 40}, "truncated: bytes_used"),
        ({"inode_table_start": 1 << 40}, "inode table at offset"),
        ({"directory_table_start": 1 << 33}, "directory table at offset"),
        ({"id_table_start": 1 << 20}, "id table at offset"),
        ({"fragment_table_start": 1 << 20}, "fragment table at offset"),
        ({"fragment_count": 0xFFFFFFFF}, "absurd fragment count"),
        ({"fragment_count": 1000}, "truncated"),
        ({"id_count": 0}, "empty uid/gid table"),
        ({"id_count": 0xFFFF}, "truncated"),
        ({"root_inode": 0xFFFF0000}, "inode reference"),
    ],
)
def test_bad_superblock(
    small_images: dict[str, Path], tmp_path: Path, fields: dict[str, int], message: str
) -> None:
    image = patched(small_images["gzip"], tmp_path / "bad.squashfs", set_fields(**fields))
    assert_corrupt(image, message)


@TIMEOUT
@pytest.mark.parametrize("table", ["inode_table_start", "directory_table_start"])
def test_flipped_byte_in_compressed_metadata(
    small_images: dict[str, Path], tmp_path: Path, table: str
) -> None:
    source = small_images["gzip"]
    start = superblock(source.read_bytes())[table]

    def edit(data: bytearray) -> None:
        (header,) = struct.unpack_from("<H", data, start)
        assert not header & 0x8000
        data[start + 2 + (header & 0x7FFF) // 2] ^= 0xFF

    assert_corrupt(
        patched(source, tmp_path / "flip.squashfs", edit), "decompression failed in block at"
    )


def dir_inodes(data: bytes | bytearray) -> tuple[int, list[int]]:
    """Root inode offset and the other directory inodes' offsets of the dirs-only image."""
    sb = superblock(data)
    root = sb["inode_table_start"] + 2 + (sb["root_inode"] & 0xFFFF)
    others = [pos for pos, itype in inode_records(data) if itype == 1 and pos != root]
    return root, others


@TIMEOUT
@pytest.mark.parametrize("victim", ["a", "b"])
def test_directory_loop(small_images: dict[str, Path], tmp_path: Path, victim: str) -> None:
    """Point a directory's listing at one that contains the directory itself."""
    source = small_images["dirs"]

    def edit(data: bytearray) -> None:
        root, others = dir_inodes(data)
        listing_size = {pos: struct.unpack_from("<H", data, pos + 24)[0] for pos in others}
        a = next(pos for pos in others if listing_size[pos] > 3)  # /a lists b
        b = next(pos for pos in others if listing_size[pos] <= 3)  # /a/b is empty
        # Basic dir inode: start_block u32 @16, nlink @20, size u16 @24, offset u16 @26.
        target, listing_of = (a, root) if victim == "a" else (b, a)
        data[target + 16 : target + 20] = data[listing_of + 16 : listing_of + 20]
        data[target + 24 : target + 28] = data[listing_of + 24 : listing_of + 28]

    assert_corrupt(patched(source, tmp_path / "loop.squashfs", edit), "directory loop")


def patch_inode(source: Path, target: Path, itype: int, offset: int, fmt: str, value: int) -> Path:
    def edit(data: bytearray) -> None:
        pos = next(pos for pos, t in inode_records(data) if t == itype)
        struct.pack_into(fmt, data, pos + offset, value)

    return patched(source, target, edit)


@TIMEOUT
def test_inode_claiming_a_terabyte(small_images: dict[str, Path], tmp_path: Path) -> None:
    # The hard-linked file has an extended inode: size u64 at offset 24.
    image = patch_inode(small_images["noI"], tmp_path / "tb.squashfs", 9, 24, "<Q", 1 << 40)
    assert_corrupt(image, "beyond the inode table")
    with SquashImage(small_images["noI"]) as squash:  # an extent (as the index stores) lying
        extent = next(e.extent for e in squash.walk() if e.path == b"c/blocks")
        assert extent is not None
        with pytest.raises(CorruptImageError, match="blocks"):
            squash.read(extent._replace(size=1 << 40), 0, 1 << 40)


@TIMEOUT
def test_fragment_index_out_of_range(small_images: dict[str, Path], tmp_path: Path) -> None:
    image = patch_inode(small_images["noI"], tmp_path / "frag.squashfs", 9, 44, "<I", 77)
    assert_corrupt(image, "fragment index 77")
    with SquashImage(small_images["noI"]) as squash:
        extent = next(e.extent for e in squash.walk() if e.path == b"c/small")
        assert extent is not None and extent.fragment is not None
        with pytest.raises(CorruptImageError, match="fragment index 77 out of range"):
            squash.read(extent._replace(fragment=77), 0, 10)
        with pytest.raises(CorruptImageError, match="tail beyond the end of fragment"):
            squash.read(extent._replace(fragment_offset=1 << 20), 0, 10)


@TIMEOUT
@pytest.mark.parametrize("name", ["gzip", "plain"])
def test_block_words_pointing_past_the_end(small_images: dict[str, Path], name: str) -> None:
    with SquashImage(small_images[name]) as squash:
        used = squash.superblock.bytes_used
        extent = next(e.extent for e in squash.walk() if e.path == b"c/random")
        assert extent is not None
        with pytest.raises(CorruptImageError, match="beyond end"):
            squash.read(extent._replace(blocks_start=used - 10), 0, 100)
        bad_word = struct.pack("<I", 0x00FFFFFF)  # 16 MiB: larger than any block
        with pytest.raises(CorruptImageError):
            squash.read(extent._replace(block_sizes=bad_word + extent.block_sizes[4:]), 0, 100)
        with pytest.raises(CorruptImageError, match="blocks"):
            squash.read(extent._replace(block_sizes=extent.block_sizes[4:]), 0, 100)


@TIMEOUT
@pytest.mark.parametrize(
    ("old", "bad"), [(b"xx", b".."), (b"xx", b"a/"), (b"xx", b"a\0"), (b"y", b"."), (b"y", b"/")]
)
def test_invalid_names(
    small_images: dict[str, Path], tmp_path: Path, old: bytes, bad: bytes
) -> None:
    """Names that could escape a tree: patched in place in an uncompressed directory table."""

    def edit(data: bytearray) -> None:
        entry = struct.pack("<H", len(old) - 1) + old  # name_size - 1, then the name
        pos = data.index(entry, superblock(data)["directory_table_start"]) + 2
        data[pos : pos + len(old)] = bad

    assert_corrupt(
        patched(small_images["names"], tmp_path / "names.squashfs", edit), "invalid name"
    )


@TIMEOUT
def test_error_for_missing_and_non_image_files(tmp_path: Path) -> None:
    not_image = tmp_path / "text.squashfs"
    not_image.write_bytes(b"hello" * 100)
    assert_corrupt(not_image, "not a SquashFS image (bad magic)")
    from imagenetfs.errors import ImagenetfsError

    with pytest.raises(ImagenetfsError, match="cannot open"):
        SquashImage(tmp_path / "missing.squashfs")


@pytest.mark.timeout(300)
@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_mutations_are_corrupt_or_fine(
    small_images: dict[str, Path], data: st.DataObject
) -> None:
    name = data.draw(st.sampled_from(["gzip", "noI", "plain"]))
    original = small_images[name].read_bytes()
    used = superblock(original)["bytes_used"]
    metadata_start = superblock(original)["inode_table_start"]
    mutated = bytearray(original[:used])
    for _ in range(data.draw(st.integers(1, 8))):
        low = data.draw(st.sampled_from([0, metadata_start]))
        pos = data.draw(st.integers(low, used - 1))
        mutated[pos] = data.draw(st.integers(0, 255))
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "mutated.squashfs"
        image.write_bytes(mutated)
        start = time.monotonic()
        try:
            exercise(image)
        except CorruptImageError as exc:
            assert str(image) in str(exc)
        assert time.monotonic() - start < 10
