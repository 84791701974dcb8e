"""SquashFS 4.0 reader: validate an image, walk its whole tree, read any byte range of a file.

Design
------
An image is opened once (`SquashImage`), keeping one file descriptor; every access is an
`os.pread`, so one image serves many threads without seeking. Opening parses the 96-byte
superblock and checks every field the reader relies on (magic, version 4.0, block size and its
log, compressor, table offsets within `bytes_used` and the file), then loads the two small lookup
tables needed later: uid/gid ids and fragment locations (kept as raw bytes, decoded per use).

`walk()` is what the index builder calls once per image. It reads the inode table and the
directory table with one `pread` each and decompresses every metadata block exactly once into
one contiguous buffer per table, with a map from a block's on-disk position to its offset in the
buffer: an inode reference then costs a dict lookup plus `struct.unpack_from`, and records that
straddle metadata blocks need no special case. (The tables stay in memory for the walk only:
~80 bytes per entry.) The walk uses an explicit stack and reads each directory listing once; a
second visit means a loop (or a listing shared by two directories, which mksquashfs never
writes), so corrupt images cannot make it hang. Entries come out as `Entry` named tuples: the
root first, then for each directory all its children consecutively in stored (sorted) order,
directories depth-first.

`read(extent, offset, size)` needs only an `Extent` (which the index stores): block words give
each data block's on-disk size (bit 24 = stored uncompressed, 0 = sparse); runs of uncompressed
blocks are read with one `pread`, compressed data blocks and fragment blocks go through a small
thread-safe LRU keyed by on-disk position (`CACHE_BYTES` of decompressed blocks per image, at
least `CACHE_MIN_BLOCKS`). Small, because it rarely hits: the kernel asks for a file's pages in
READs that start where its blocks start, so a block is wanted again only when a READ ends
inside it or tiny files share a fragment block. Measured on 15,000 realistic files in random
order, 8 readers: 4-9 hits in ~15,000 lookups with 16 blocks, 21-37 with 64, the same epoch
times, and 64 blocks of 128 KiB per image cost the two workers ~22 MiB more PSS.
Decompressed sizes are bounded (a data block by `block_size`, a metadata block by 8 KiB)
before anything is allocated from a size field. So are whole tables, by what the superblock
declares (`_metadata_bounds`): a few bytes on disk may inflate to 8 KiB each, so a 3 MB image
of tiny blocks would otherwise inflate to a gigabyte. The inode table may hold at most
`INODE_BYTES` per inode plus the block lists the data region can account for, the directory
table at most `ENTRY_BYTES` per inode (the longest entry with a header of its own), each with
`METADATA_SLACK` more; the fragment table at most one entry per inode (each fragment block
holds the tail of a file). A table that inflates past its bound is refused as soon as it
does, and listings that overlap (a genuine image never has them: one directory's entries
parsed again as another's) are refused when they add up to more than the directory table.
Measured on images mksquashfs made of ImageNet-like trees: 37 and 28 bytes per inode.
`locate(extent, offset, size)` answers where the same bytes lie instead of reading them, as
`Run`s (descriptor, position, length), when all of them are stored as they are read
(uncompressed blocks, an uncompressed fragment: a `-noD -noF` image), else None: the worker
adapter splices runs from the image file to /dev/fuse (wire.py).

Codecs: gzip, mksquashfs's default, is inflated by zlib-ng's binding (the same streams as the
stdlib's zlib; it inflates the near-incompressible JPEG blocks of ImageNet ~1.4x as fast, and
releases the GIL as zlib does); xz and lzma by the stdlib; zstd, lz4 and lzo by their PyPI
bindings, imported when an image needs them.

Every inconsistency raises `CorruptImageError` naming the image and the problem.
"""

from __future__ import annotations

import errno
import hashlib
import lzma
import os
import stat
import struct
import sys
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, NoReturn, Self

from zlib_ng import zlib_ng

from imagenetfs.errors import CorruptImageError, ImagenetfsError

MAGIC = 0x73717368
NO_FRAGMENT = 0xFFFFFFFF
METADATA_BLOCK_SIZE = 8192
COMPRESSORS = {1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}
#: Each image's cache of decompressed blocks (see above): 16 blocks of mksquashfs's default
#: 128 KiB, 4 of the largest (1 MiB).
CACHE_BYTES = 2 << 20
CACHE_MIN_BLOCKS = 4

# Inode types; the extended variant of each is the basic one + 7.
DIR, FILE, SYMLINK, BLKDEV, CHRDEV, FIFO, SOCKET = range(1, 8)
_FORMAT_BITS = {
    DIR: stat.S_IFDIR,
    FILE: stat.S_IFREG,
    SYMLINK: stat.S_IFLNK,
    BLKDEV: stat.S_IFBLK,
    CHRDEV: stat.S_IFCHR,
    FIFO: stat.S_IFIFO,
    SOCKET: stat.S_IFSOCK,
}

_ABSENT = 0xFFFFFFFFFFFFFFFF
_UNCOMPRESSED_DATA = 1 << 24
_SIZE_MASK = 0xFFFFFF
_MAX_SYMLINK = 65536
#: Bounds on what the inode and directory tables inflate to (see the module docstring): the
#: largest fixed part of an inode is 56 bytes (an extended file); the rest of the 256 is for
#: block lists of sparse and duplicate files, directory indexes and symlink targets.
INODE_BYTES = 256
#: A directory entry of the longest name (8 + 256 bytes) with a header (12) of its own.
ENTRY_BYTES = 276
#: Allowed beyond the per-inode bounds, for images of a few odd inodes (long symlinks, big
#: sparse files: one of 4.5 GiB at 4 KiB blocks has 4.7 MB of block words).
METADATA_SLACK = 16 << 20

_SUPERBLOCK = struct.Struct("<5I6H8Q")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_U32X2 = struct.Struct("<II")
_INODE_HEADER = struct.Struct("<HHHHII")
_BASIC_FILE_INODE = struct.Struct("<HHHHIIIIII")  # header + basic file body
_EXT_FILE = struct.Struct("<QQQIIII")
_BASIC_DIR = struct.Struct("<IIHHI")
_EXT_DIR = struct.Struct("<IIIIHHI")
_DIR_HEADER = struct.Struct("<III")
_DIR_ENTRY = struct.Struct("<HhHH")
_FRAGMENT_ENTRY = struct.Struct("<QI4x")


class WouldBlock(Exception):
    """A `read(..., nowait=True)` would have to wait for the disk or decompress a block."""


#: What a `RWF_NOWAIT` read fails with on a filesystem that has none (FUSE, some network
#: filesystems): such a file's reads go the blocking way.
NO_NOWAIT = (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)


def cache_visible(fd: int) -> bool:
    """Whether the filesystem of `fd` says what its page cache holds (a one-byte `RWF_NOWAIT`
    read at byte 0 works, or fails with EAGAIN); False where it has no `RWF_NOWAIT` (FUSE, NFS,
    Lustre: `NO_NOWAIT`). Any other error: True (the reads meet it)."""
    try:
        os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)
    except BlockingIOError:
        return True
    except OSError as e:
        return e.errno not in NO_NOWAIT
    return True


class CacheVisibility:
    """`cache_visible` of an image's descriptor, asked once per descriptor (`switch` may
    change it): what the images' `cache_visible` answers."""

    def __init__(self) -> None:
        self._known: tuple[int, bool] | None = None  # (descriptor, its answer)

    def of(self, fd: int) -> bool:
        known = self._known
        if known is None or known[0] != fd:
            self._known = known = (fd, cache_visible(fd))
        return known[1]


class Run(NamedTuple):
    """`length` bytes of a file stored as they are read, at `offset` of descriptor `fd` (what
    `locate` answers: bytes that can be spliced from the image file, never copied)."""

    fd: int
    offset: int
    length: int


#: A piece of a located READ's reply (`Core.locate_read`): a run of an image file, or bytes
#: a view made (a shard's tar headers, a decompressed tail) to go between runs.
Piece = Run | bytes


class Superblock(NamedTuple):
    """The superblock fields, as stored."""

    magic: int
    inode_count: int
    mkfs_time: int
    block_size: int
    fragment_count: int
    compressor: int
    block_log: int
    flags: int
    id_count: int
    version_major: int
    version_minor: int
    root_inode: int
    bytes_used: int
    id_table_start: int
    xattr_table_start: int
    inode_table_start: int
    directory_table_start: int
    fragment_table_start: int
    export_table_start: int


@dataclass(frozen=True)
class Fingerprint:
    """What identifies an image's content: the index refuses to serve when this changes.

    Only the bytes count: a plain copy of the image (`cp`, `rsync`, a bind mount, staging to
    local disk) has the same fingerprint; mtimes, device and inode numbers are left out.
    """

    file_size: int
    bytes_used: int
    mkfs_time: int
    inode_count: int
    compressor: str
    block_size: int
    samples: str  # digest of SAMPLES blocks spread over the file (`sample_digest`)


#: Blocks of SAMPLE_SIZE bytes read for a fingerprint: the first, the last, and evenly between.
SAMPLES = 16
SAMPLE_SIZE = 4096


def sample_digest(fd: int, size: int) -> str:
    """A digest of `SAMPLES` blocks spread evenly over the first `size` bytes of `fd`: cheap
    (a few `pread`s, even of a 140 GB image on a shared filesystem) and sensitive to a copy
    cut short or an image rebuilt with the same superblock counts."""
    digest = hashlib.blake2b(digest_size=16)
    last = max(size - SAMPLE_SIZE, 0)
    for i in range(SAMPLES):
        digest.update(os.pread(fd, SAMPLE_SIZE, last * i // (SAMPLES - 1)))
    return digest.hexdigest()


@dataclass(frozen=True)
class ReaderStatistics:
    """Counters of the decompressed-block cache."""

    cache_hits: int
    cache_misses: int
    cached_blocks: int
    cache_capacity: int


class Extent(NamedTuple):
    """Where a regular file's bytes live: everything `SquashImage.read` needs."""

    size: int  # file size in bytes
    blocks_start: int  # image offset of the first data block
    block_sizes: bytes  # the inode's block words, raw little-endian u32 (4 bytes per block)
    fragment: int | None  # fragment index holding the tail, None when there is no tail
    fragment_offset: int  # offset of the tail inside the (decompressed) fragment block
    sparse: int  # bytes saved by sparse blocks (extended inodes only; 0 otherwise)

    def block_words(self) -> array[int]:
        """The block words as integers (on-disk size | 1<<24 if stored uncompressed; 0 sparse)."""
        return _u32_array(self.block_sizes)


class Entry(NamedTuple):
    """One name in the tree (hard links: several entries share an `inode_number`)."""

    path: bytes  # relative to the image root, b"" for the root, components joined by b"/"
    name: bytes  # last component, b"" for the root
    parent: int  # inode_number of the containing directory (the root's own for the root)
    inode_number: int
    inode_type: int  # 1..14 as stored: basic DIR..SOCKET, extended = basic + 7
    mode: int  # full st_mode: file-type bits from the inode type + stored permission bits
    uid: int
    gid: int
    mtime: int
    nlink: int
    size: int  # file size; symlink target length; directory listing size + 3 as stored
    target: bytes | None  # symlink target
    rdev: int  # device number (os.makedev form) for block/char devices, else 0
    extent: Extent | None  # regular files only

    @property
    def kind(self) -> int:
        """The basic inode type (DIR, FILE, SYMLINK, BLKDEV, CHRDEV, FIFO or SOCKET)."""
        return self.inode_type - 7 if self.inode_type > 7 else self.inode_type


class _MetadataTable(NamedTuple):
    data: bytes  # every metadata block of the table, decompressed and concatenated
    starts: dict[int, int]  # block position (relative to the table start) -> offset in data


class _Listing(NamedTuple):
    start_block: int
    offset: int
    size: int


class SquashImage:
    """One open SquashFS 4.0 image; safe to `read` from several threads at once."""

    def __init__(self, path: str | os.PathLike[str], *, cache_blocks: int | None = None) -> None:
        self.path = os.fspath(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise ImagenetfsError(f"{self.path}: cannot open: {exc.strerror}") from None
        self._nowait_supported = True  # until the image's filesystem says otherwise
        self._visible = CacheVisibility()
        self._retired: list[int] = []  # descriptors replaced by `switch`, closed with the image
        try:
            st = os.fstat(self._fd)
            self._file_size = self._end = st.st_size
            self.superblock = sb = self._parse_superblock()
            self._end = sb.bytes_used
            self.block_size = sb.block_size
            self.compressor = COMPRESSORS[sb.compressor]
            self.fragment_count = sb.fragment_count
            self._decompressor = _make_decompressor(self.compressor, self.path)
            self._ids = self._load_ids()
            self._fragments = self._load_lookup_table(
                sb.fragment_table_start, sb.fragment_count, _FRAGMENT_ENTRY.size,
                "fragment table", most=sb.inode_count,
            )  # fmt: skip
        except BaseException:
            os.close(self._fd)
            raise
        if cache_blocks is None:
            cache_blocks = max(CACHE_BYTES // self.block_size, CACHE_MIN_BLOCKS)
        self._cache = _BlockCache(cache_blocks)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        for fd in self._retired:
            os.close(fd)
        self._retired = []

    def fileno(self) -> int:
        """The descriptor reads use now (see `switch`)."""
        return self._fd

    def switch(self, path: str) -> None:
        """Read from `path` from now on: a copy of this image (refused, ImagenetfsError, unless
        its size, superblock and sampled blocks are this image's). A read under way finishes on
        the old file, which stays open until `close` -- its number is never reused meanwhile."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise ImagenetfsError(f"{path}: cannot open: {exc.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            same = (
                size == self._file_size
                and os.pread(fd, _SUPERBLOCK.size, 0) == os.pread(self._fd, _SUPERBLOCK.size, 0)
                and sample_digest(fd, size) == sample_digest(self._fd, size)
            )
        except OSError as exc:
            os.close(fd)
            raise ImagenetfsError(f"{path}: cannot read: {exc.strerror}") from None
        if not same:
            os.close(fd)
            raise ImagenetfsError(f"{path}: not a copy of {self.path}")
        self._retired.append(self._fd)
        self._fd, self.path = fd, path
        self._nowait_supported = True  # the copy's filesystem may offer what the other did not

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def mkfs_time(self) -> int:
        return self.superblock.mkfs_time

    def fingerprint(self) -> Fingerprint:
        sb = self.superblock
        return Fingerprint(
            file_size=self._file_size,
            bytes_used=sb.bytes_used,
            mkfs_time=sb.mkfs_time,
            inode_count=sb.inode_count,
            compressor=self.compressor,
            block_size=sb.block_size,
            samples=sample_digest(self._fd, self._file_size),
        )

    def statistics(self) -> ReaderStatistics:
        return self._cache.statistics()

    # -- low-level access ------------------------------------------------------------------

    def _corrupt(self, problem: str) -> NoReturn:
        raise CorruptImageError(f"{self.path}: {problem}")

    def _pread(self, pos: int, size: int, what: str) -> bytes:
        if pos < 0 or size < 0 or pos + size > self._end:
            self._corrupt(
                f"truncated: {what} at offset {pos} (+{size} bytes) beyond end ({self._end})"
            )
        data = os.pread(self._fd, size, pos)
        if len(data) != size:
            self._corrupt(f"truncated: {what} at offset {pos} beyond end of file")
        return data

    def _decompress(self, data: bytes, limit: int, pos: int) -> bytes:
        try:
            out = self._decompressor(data, limit)
        except Exception as exc:  # every codec has its own error types; all mean "corrupt"
            self._corrupt(f"decompression failed in block at {pos}: {exc}")
        if len(out) > limit:
            self._corrupt(f"decompression failed in block at {pos}: more than {limit} bytes")
        return out

    def _metadata_block(self, pos: int, what: str) -> bytes:
        """One metadata block at an absolute position (for the lookup tables)."""
        (header,) = _U16.unpack(self._pread(pos, 2, what))
        size = header & 0x7FFF
        if not 0 < size <= METADATA_BLOCK_SIZE:
            self._corrupt(f"bad metadata block header in {what} at {pos}")
        payload = self._pread(pos + 2, size, what)
        if header & 0x8000:
            return payload
        return self._decompress(payload, METADATA_BLOCK_SIZE, pos)

    # -- superblock and lookup tables ------------------------------------------------------

    def _parse_superblock(self) -> Superblock:
        if self._file_size < _SUPERBLOCK.size:
            self._corrupt(f"not a SquashFS image (only {self._file_size} bytes)")
        sb = Superblock(*_SUPERBLOCK.unpack(self._pread(0, _SUPERBLOCK.size, "superblock")))
        if sb.magic != MAGIC:
            self._corrupt("not a SquashFS image (bad magic)")
        if (sb.version_major, sb.version_minor) != (4, 0):
            self._corrupt(f"unsupported SquashFS version {sb.version_major}.{sb.version_minor}")
        bs = sb.block_size
        if not (4096 <= bs <= 1 << 20 and bs & (bs - 1) == 0 and 1 << sb.block_log == bs):
            self._corrupt(f"invalid block size {bs} (block_log {sb.block_log})")
        if sb.compressor not in COMPRESSORS:
            self._corrupt(f"unknown compressor id {sb.compressor}")
        if not _SUPERBLOCK.size <= sb.bytes_used <= self._file_size:
            self._corrupt(
                f"truncated: bytes_used {sb.bytes_used} beyond end of file ({self._file_size})"
            )
        tables = {
            "inode table": sb.inode_table_start,
            "directory table": sb.directory_table_start,
            "id table": sb.id_table_start,
        }
        optional = {
            "fragment table": sb.fragment_table_start,
            "export table": sb.export_table_start,
            "xattr table": sb.xattr_table_start,
        }
        tables.update({name: pos for name, pos in optional.items() if pos != _ABSENT})
        for name, pos in tables.items():
            if not _SUPERBLOCK.size <= pos <= sb.bytes_used:
                self._corrupt(f"truncated: {name} at offset {pos} beyond end ({sb.bytes_used})")
        if sb.inode_table_start > sb.directory_table_start:
            self._corrupt("inode table starts after the directory table")
        if sb.fragment_count and sb.fragment_table_start == _ABSENT:
            self._corrupt(f"{sb.fragment_count} fragments but no fragment table")
        # Each fragment block occupies at least one byte of the image.
        if sb.fragment_count > sb.bytes_used:
            self._corrupt(f"absurd fragment count {sb.fragment_count}")
        if sb.id_count == 0:
            self._corrupt("empty uid/gid table")
        return sb

    def _load_lookup_table(
        self, start: int, count: int, entry_size: int, what: str, most: int | None = None
    ) -> bytes:
        """A table of fixed-size entries: a list of u64 metadata-block addresses at `start`.
        With `most`, refused once it inflates past that many entries (rounded up to a
        block): a count in the superblock is not trusted to size an allocation."""
        if count == 0:
            return b""
        size = count * entry_size
        nblocks = -(-size // METADATA_BLOCK_SIZE)
        index = self._pread(start, 8 * nblocks, what)
        limit = size if most is None else min(size, most * entry_size)
        blocks, length = [], 0
        for (pos,) in _U64.iter_unpack(index):
            if length >= limit:
                self._corrupt(f"{what} of {count} entries: more than its {most} inodes allow")
            block = self._metadata_block(pos, what)
            blocks.append(block)
            length += len(block)
        data = b"".join(blocks)
        if len(data) < size:
            self._corrupt(f"{what} is shorter than its {count} entries")
        return data[:size]

    def _load_ids(self) -> tuple[int, ...]:
        sb = self.superblock
        raw = self._load_lookup_table(sb.id_table_start, sb.id_count, 4, "id table")
        return tuple(_u32_array(raw))

    def _fragment(self, index: int) -> tuple[int, int]:
        if not 0 <= index < self.fragment_count:
            self._corrupt(f"fragment index {index} out of range ({self.fragment_count} fragments)")
        start, word = _FRAGMENT_ENTRY.unpack_from(self._fragments, index * _FRAGMENT_ENTRY.size)
        return start, word

    # -- metadata tables for the walk ------------------------------------------------------

    def _table_end(self, start: int) -> int:
        """Where a table that starts at `start` ends: the nearest thing stored after it."""
        sb = self.superblock
        candidates = [sb.bytes_used]
        tables = (
            (sb.fragment_table_start, sb.fragment_count),
            (sb.export_table_start, sb.inode_count),
            (sb.xattr_table_start, 1),
            (sb.id_table_start, sb.id_count),
        )
        for pos, count in tables:
            if pos != _ABSENT:
                candidates.append(pos)
                if count:  # each of these starts with the u64 address of its first block
                    (first,) = _U64.unpack(self._pread(pos, 8, "table index"))
                    candidates.append(first)
        return min(pos for pos in candidates if pos >= start)

    def _metadata_bounds(self) -> tuple[int, int]:
        """The most the inode and the directory table of this image may inflate to (see the
        module docstring)."""
        sb = self.superblock
        data = max(sb.inode_table_start - _SUPERBLOCK.size, 0)  # (each stored block: a byte)
        inodes = sb.inode_count * INODE_BYTES + data // 2 + METADATA_SLACK
        return inodes, sb.inode_count * ENTRY_BYTES + METADATA_SLACK

    def _load_metadata_table(self, start: int, end: int, what: str, bound: int) -> _MetadataTable:
        """The metadata blocks in [start, end), inflated and joined; refused once they come
        to more than `bound` bytes."""
        raw = self._pread(start, end - start, what)
        blocks: list[bytes] = []
        starts: dict[int, int] = {}
        pos = length = 0
        while pos < len(raw):
            if pos + 2 > len(raw):
                self._corrupt(f"truncated metadata block in {what} at {start + pos}")
            (header,) = _U16.unpack_from(raw, pos)
            size = header & 0x7FFF
            if not 0 < size <= METADATA_BLOCK_SIZE or pos + 2 + size > len(raw):
                self._corrupt(f"bad metadata block header in {what} at {start + pos}")
            payload = raw[pos + 2 : pos + 2 + size]
            if not header & 0x8000:
                payload = self._decompress(payload, METADATA_BLOCK_SIZE, start + pos)
            starts[pos] = length
            blocks.append(payload)
            length += len(payload)
            pos += 2 + size
            if length > bound:
                self._corrupt(
                    f"{what} inflates to more than {bound} bytes, more than its "
                    f"{self.superblock.inode_count} inodes can fill (damaged or crafted)"
                )
        return _MetadataTable(b"".join(blocks), starts)

    # -- the walk --------------------------------------------------------------------------

    def walk(self) -> Iterator[Entry]:
        """Every entry of the tree: the root, then each directory's children consecutively."""
        sb = self.superblock
        inode_bound, directory_bound = self._metadata_bounds()
        inodes = self._load_metadata_table(
            sb.inode_table_start, sb.directory_table_start, "inode table", inode_bound
        )
        directories = self._load_metadata_table(
            sb.directory_table_start, self._table_end(sb.directory_table_start),
            "directory table", directory_bound,
        )  # fmt: skip
        return _Walker(self, inodes, directories).walk()

    # -- reading file data -----------------------------------------------------------------

    def read(self, extent: Extent, offset: int, size: int, *, nowait: bool = False) -> bytes:
        """Bytes [offset, offset+size) of a file, short (or empty) at end of file.

        With `nowait`, raise `WouldBlock` instead of waiting for the disk or decompressing:
        the read succeeds only from the page cache (`RWF_NOWAIT`) and the block cache, so a
        caller on an event loop can try it inline and hand the rest to a thread.
        """
        if offset < 0 or size < 0:
            raise ValueError("offset and size must not be negative")
        end = min(offset + size, extent.size)
        if offset >= end:
            return b""
        bs = self.block_size
        if len(extent.block_sizes) % 4:
            self._corrupt("block list of a file is not a whole number of words")
        words = extent.block_words()
        nblocks = len(words)
        if nblocks != _block_count(extent.size, extent.fragment is not None, bs):
            self._corrupt(f"file of {extent.size} bytes has {nblocks} blocks (block size {bs})")
        parts = (
            self._read_blocks(extent, words, offset, end, nowait) if offset < nblocks * bs else []
        )
        tail_start = nblocks * bs
        if extent.fragment is not None and end > tail_start:
            lo = max(offset, tail_start) - tail_start
            tail = extent.size - tail_start
            parts.append(self._read_tail(extent, lo, end - tail_start, tail, nowait))
        return b"".join(parts)

    def cache_visible(self) -> bool:
        """`cache_visible` of the descriptor reads use now, asked once per descriptor."""
        return self._visible.of(self._fd)

    def span(self, extent: Extent) -> Run | None:
        """Where a file's stored bytes begin in the image and how far they reach: its data
        blocks as stored (compressed or not), or, for a file all in a fragment, that fragment
        block; None where the extent does not check out. (For read-ahead, ahead.py: a hint.)"""
        if len(extent.block_sizes) % 4:
            return None
        if extent.block_sizes:
            disk = sum(word & _SIZE_MASK for word in extent.block_words())
            return Run(self._fd, extent.blocks_start, disk)
        if extent.fragment is None or not 0 <= extent.fragment < self.fragment_count:
            return None
        start, word = self._fragment(extent.fragment)
        return Run(self._fd, start, word & _SIZE_MASK)

    def locate(self, extent: Extent, offset: int, size: int) -> list[Run] | None:
        """Where the bytes `read(extent, offset, size)` returns lie in the image file: one
        `Run` for the data blocks asked for, one more for a tail in a fragment, on the
        descriptor reads use now (`switch` keeps it open until `close`); [] when there is
        nothing to read. None when some of them are not stored as they are read (a compressed
        or sparse block, a compressed fragment), and when the extent does not check out --
        `read` then says why."""
        if offset < 0 or size < 0:
            raise ValueError("offset and size must not be negative")
        end = min(offset + size, extent.size)
        if offset >= end:
            return []
        bs = self.block_size
        if len(extent.block_sizes) % 4:
            return None
        words = extent.block_words()
        nblocks = len(words)
        if nblocks != _block_count(extent.size, extent.fragment is not None, bs):
            return None
        fd, runs = self._fd, []
        tail_start = nblocks * bs
        if offset < tail_start:
            first, stop = offset // bs, min((end - 1) // bs + 1, nblocks)
            pos = extent.blocks_start + sum(word & _SIZE_MASK for word in words[:first])
            for i in range(first, stop):  # each stored as it is: the blocks follow each other
                if words[i] != min(bs, extent.size - i * bs) | _UNCOMPRESSED_DATA:
                    return None
            start, length = pos + offset - first * bs, min(end, tail_start) - offset
            if start + length > self._end:
                return None
            runs.append(Run(fd, start, length))
        if extent.fragment is not None and end > tail_start:
            if not 0 <= extent.fragment < self.fragment_count:
                return None
            start, word = self._fragment(extent.fragment)
            lo, hi = max(offset, tail_start) - tail_start, end - tail_start
            if not word & _UNCOMPRESSED_DATA:
                return None
            disk = word & _SIZE_MASK
            first = extent.fragment_offset
            if not 0 < disk <= bs or first + extent.size - tail_start > disk:
                return None
            if start + first + hi > self._end:
                return None
            runs.append(Run(fd, start + first + lo, hi - lo))
        return runs

    def _read_blocks(
        self, extent: Extent, words: array[int], offset: int, end: int, nowait: bool
    ) -> list[bytes]:
        """Pieces of [offset, end) held in data blocks; runs of uncompressed ones in one pread."""
        bs = self.block_size
        first = offset // bs
        pos = extent.blocks_start + sum(word & _SIZE_MASK for word in words[:first])
        parts: list[bytes] = []
        run_start = run_size = 0  # the pending run of uncompressed bytes
        for i in range(first, min((end - 1) // bs + 1, len(words))):
            word = words[i]
            disk = word & _SIZE_MASK
            base = i * bs
            length = min(bs, extent.size - base)
            lo, hi = max(offset - base, 0), min(end - base, length)
            if disk and word & _UNCOMPRESSED_DATA:
                if disk != length:
                    self._corrupt(f"data block at {pos} has {disk} bytes, expected {length}")
                if run_size and run_start + run_size == pos + lo:
                    run_size += hi - lo
                    pos += disk
                    continue
                if run_size:
                    parts.append(self._pread_data(run_start, run_size, nowait))
                run_start, run_size = pos + lo, hi - lo
            else:
                if run_size:
                    parts.append(self._pread_data(run_start, run_size, nowait))
                    run_size = 0
                if disk == 0:  # sparse
                    parts.append(bytes(hi - lo))
                elif disk > bs:
                    self._corrupt(f"data block at {pos} has {disk} bytes, more than a block")
                else:
                    block = self._cached_block(pos, disk, nowait)
                    if len(block) != length:
                        self._corrupt(f"data block at {pos} decompressed to a wrong size")
                    parts.append(block[lo:hi])
            pos += disk
        if run_size:
            parts.append(self._pread_data(run_start, run_size, nowait))
        return parts

    def _read_tail(self, extent: Extent, lo: int, hi: int, tail: int, nowait: bool) -> bytes:
        assert extent.fragment is not None
        start, word = self._fragment(extent.fragment)
        disk = word & _SIZE_MASK
        if not 0 < disk <= self.block_size:
            self._corrupt(f"fragment {extent.fragment} has an invalid size word {word:#x}")
        first = extent.fragment_offset
        if word & _UNCOMPRESSED_DATA:
            if first + tail > disk:
                self._corrupt(f"file tail beyond the end of fragment {extent.fragment}")
            return self._pread_data(start + first + lo, hi - lo, nowait)
        block = self._cached_block(start, disk, nowait)
        if first + tail > len(block):
            self._corrupt(f"file tail beyond the end of fragment {extent.fragment}")
        return block[first + lo : first + hi]

    def _cached_block(self, pos: int, disk: int, nowait: bool = False) -> bytes:
        block = self._cache.get(pos, count_miss=not nowait)
        if block is None:
            if nowait:
                raise WouldBlock(pos)
            block = self._decompress(self._pread(pos, disk, "data block"), self.block_size, pos)
            self._cache.put(pos, block)
        return block

    def _pread_data(self, pos: int, size: int, nowait: bool) -> bytes:
        """File data by pread; with `nowait`, only what the page cache holds (RWF_NOWAIT)."""
        if not nowait:
            return self._pread(pos, size, "data block")
        if pos < 0 or pos + size > self._end:
            self._pread(pos, size, "data block")  # raises the precise CorruptImageError
        if not self._nowait_supported:
            raise WouldBlock(pos)
        buf = bytearray(size)
        try:
            got = os.preadv(self._fd, [buf], pos, os.RWF_NOWAIT)
        except BlockingIOError:
            raise WouldBlock(pos) from None
        except OSError as e:
            if e.errno not in NO_NOWAIT:
                raise
            # The image's filesystem (FUSE, some network filesystems) has no RWF_NOWAIT:
            # every read of this image goes the blocking way, in a thread.
            self._nowait_supported = False
            raise WouldBlock(pos) from None
        if got != size:  # partly cached, or truncated: let the blocking path decide
            raise WouldBlock(pos)
        return bytes(buf)


class _Walker:
    """The tree walk over the decompressed inode and directory tables of one image."""

    def __init__(
        self, image: SquashImage, inodes: _MetadataTable, directories: _MetadataTable
    ) -> None:
        self.image = image
        self.inodes = inodes.data
        self.inode_starts = inodes.starts
        self.dirs = directories.data
        self.dir_starts = directories.starts
        self.ids = image._ids
        self.block_size = image.block_size
        self.fragment_count = image.fragment_count

    def walk(self) -> Iterator[Entry]:
        # The hot loop (one iteration per entry) is written out flat: ~1-3 us per entry.
        corrupt = self.image._corrupt
        buf = self.dirs
        file, directory, other = self.file, self.directory, self.other
        try:
            ref = self.image.superblock.root_inode
            root, listing = directory(self.inode_pos(ref >> 16) + (ref & 0xFFFF), b"", b"", 0)
            root = root._replace(parent=root.inode_number)
            yield root
            seen_listings: set[int] = set()
            listed = 0  # bytes of listings parsed: overlapping ones would parse some twice
            stack = [(root, listing)]
            while stack:
                parent_entry, listing = stack.pop()
                if listing.size <= 3:  # empty
                    continue
                path, parent = parent_entry.path, parent_entry.inode_number
                base = self.dir_starts.get(listing.start_block)
                if base is None:
                    corrupt(f"listing of {path!r} does not start at a metadata block")
                pos = base + listing.offset
                end = pos + listing.size - 3
                if pos in seen_listings:
                    corrupt(f"directory loop at {path!r}")
                if end > len(buf):
                    corrupt(f"listing of {path!r} beyond the end of the directory table")
                seen_listings.add(pos)
                listed += end - pos
                if listed > len(buf):
                    corrupt(f"listing of {path!r} overlaps another")
                prefix = path + b"/" if path else b""
                subdirectories = []
                while pos < end:
                    count, inode_block, _ = _DIR_HEADER.unpack_from(buf, pos)
                    pos += 12
                    if count >= 256:
                        corrupt(f"listing of {path!r} has a header of {count + 1} entries")
                    inode_base = self.inode_pos(inode_block)
                    for _ in range(count + 1):
                        offset, _, kind, name_size = _DIR_ENTRY.unpack_from(buf, pos)
                        pos += 9 + name_size
                        name = buf[pos - name_size - 1 : pos]
                        if pos > end:
                            corrupt(f"listing of {path!r} overruns its size")
                        if b"/" in name or b"\0" in name or name == b"." or name == b"..":
                            corrupt(f"invalid name {name!r} in {path!r}")
                        if kind == FILE:
                            yield file(inode_base + offset, prefix + name, name, parent)
                        elif kind == DIR:
                            child = directory(inode_base + offset, prefix + name, name, parent)
                            yield child[0]
                            subdirectories.append(child)
                        else:
                            yield other(inode_base + offset, prefix + name, name, parent, kind)
                stack.extend(reversed(subdirectories))
        except struct.error:
            corrupt("an inode or directory record runs past the end of its table")
        except IndexError:
            corrupt("an inode refers to a uid/gid beyond the id table")

    def inode_pos(self, block: int) -> int:
        base = self.inode_starts.get(block)
        if base is None:
            self.image._corrupt(f"inode reference to {block} is not a metadata block")
        return base

    def wrong_type(self, path: bytes, itype: int, kind: int) -> NoReturn:
        self.image._corrupt(f"{path!r}: inode type {itype}, directory entry says {kind}")

    # Each of the next three returns the Entry for the inode at `pos`; Entry._make skips the
    # keyword-parsing __new__ (2x faster), so its tuples follow Entry's field order.

    def file(self, pos: int, path: bytes, name: bytes, parent: int) -> Entry:
        buf = self.inodes
        # Most files have a basic inode: header and body in one unpack.
        itype, mode, uid, gid, mtime, number, start, fragment, fragment_offset, size = (
            _BASIC_FILE_INODE.unpack_from(buf, pos)
        )
        nlink, sparse = 1, 0
        if itype == FILE + 7:
            start, size, sparse, nlink, fragment, fragment_offset, _ = _EXT_FILE.unpack_from(
                buf, pos + 16
            )
            pos += 56
        elif itype == FILE:
            pos += 32
        else:
            self.wrong_type(path, itype, FILE)
        if fragment == NO_FRAGMENT:
            nbytes = 4 * -(-size // self.block_size)
        elif fragment < self.fragment_count:
            nbytes = 4 * (size // self.block_size)
        else:
            self.image._corrupt(f"fragment index {fragment} of {path!r} out of range")
        words = buf[pos : pos + nbytes]
        if len(words) != nbytes:
            self.image._corrupt(f"block list of {path!r} ({size} bytes) beyond the inode table")
        tail = None if fragment == NO_FRAGMENT else fragment
        ids = self.ids
        return Entry._make(
            (path, name, parent, number, itype, (mode & 0o7777) | stat.S_IFREG, ids[uid],
             ids[gid], mtime, nlink, size, None, 0,
             Extent._make((size, start, words, tail, fragment_offset, sparse)))
        )  # fmt: skip

    def directory(self, pos: int, path: bytes, name: bytes, parent: int) -> tuple[Entry, _Listing]:
        buf = self.inodes
        itype, mode, uid, gid, mtime, number = _INODE_HEADER.unpack_from(buf, pos)
        if itype == DIR:
            start, nlink, size, offset, _ = _BASIC_DIR.unpack_from(buf, pos + 16)
        elif itype == DIR + 7:
            nlink, size, start, _, _, offset, _ = _EXT_DIR.unpack_from(buf, pos + 16)
        else:
            self.wrong_type(path, itype, DIR)
        ids = self.ids
        mode = (mode & 0o7777) | stat.S_IFDIR
        fields = (path, name, parent, number, itype, mode, ids[uid], ids[gid], mtime, nlink)
        return Entry._make((*fields, size, None, 0, None)), _Listing(start, offset, size)

    def other(self, pos: int, path: bytes, name: bytes, parent: int, kind: int) -> Entry:
        """Symlinks, devices, fifos and sockets."""
        buf = self.inodes
        itype, mode, uid, gid, mtime, number = _INODE_HEADER.unpack_from(buf, pos)
        if itype not in (kind, kind + 7) or kind not in _FORMAT_BITS:
            self.wrong_type(path, itype, kind)
        pos += 16
        size = rdev = 0
        target = None
        if kind == SYMLINK:
            nlink, size = _U32X2.unpack_from(buf, pos)
            target = buf[pos + 8 : pos + 8 + size]
            if len(target) != size or size > _MAX_SYMLINK:
                self.image._corrupt(f"symlink {path!r} has an invalid target length {size}")
        elif kind in (BLKDEV, CHRDEV):
            nlink, raw = _U32X2.unpack_from(buf, pos)
            rdev = os.makedev((raw >> 8) & 0xFFF, (raw & 0xFF) | ((raw >> 12) & 0xFFF00))
        elif kind in (FIFO, SOCKET):
            (nlink,) = _U32.unpack_from(buf, pos)
        else:  # FILE and DIR have their own methods
            self.wrong_type(path, itype, kind)
        ids = self.ids
        mode = (mode & 0o7777) | _FORMAT_BITS[kind]
        fields = (path, name, parent, number, itype, mode, ids[uid], ids[gid], mtime, nlink)
        return Entry._make((*fields, size, target, rdev, None))


def _block_count(size: int, has_fragment: bool, block_size: int) -> int:
    """Number of data blocks (block words) of a file: the tail goes to a fragment if it has one."""
    return size // block_size if has_fragment else -(-size // block_size)


def _u32_array(raw: bytes) -> array[int]:
    """Little-endian u32 words as an array."""
    words = array("I", raw)
    if sys.byteorder == "big":
        words.byteswap()
    return words


class _BlockCache:
    """A small LRU of decompressed blocks keyed by on-disk position, shared by threads."""

    def __init__(self, capacity: int) -> None:
        self._capacity = max(capacity, 0)
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = self._misses = 0

    def get(self, pos: int, *, count_miss: bool = True) -> bytes | None:
        """The block at `pos`, or None; a miss counted unless `count_miss` is False (a
        `nowait` read, which inflates nothing: the blocking read that follows counts it, so
        that misses are blocks inflated)."""
        with self._lock:
            block = self._blocks.get(pos)
            if block is None:
                if count_miss:
                    self._misses += 1
            else:
                self._hits += 1
                self._blocks.move_to_end(pos)
            return block

    def put(self, pos: int, block: bytes) -> None:
        with self._lock:
            self._blocks[pos] = block
            self._blocks.move_to_end(pos)
            while len(self._blocks) > self._capacity:
                self._blocks.popitem(last=False)

    def statistics(self) -> ReaderStatistics:
        with self._lock:
            return ReaderStatistics(self._hits, self._misses, len(self._blocks), self._capacity)


# -- decompressors: (data, limit) -> at most limit bytes, or an exception ----------------------

_Decompressor = Callable[[bytes, int], bytes]


def _make_decompressor(name: str, path: str) -> _Decompressor:
    if name == "gzip":
        return _zlib_decompress
    if name in ("xz", "lzma"):
        fmt = lzma.FORMAT_XZ if name == "xz" else lzma.FORMAT_ALONE
        return lambda data, limit: _lzma_decompress(data, limit, fmt)
    try:
        if name == "lz4":
            import lz4.block

            return lambda data, limit: bytes(lz4.block.decompress(data, uncompressed_size=limit))
        if name == "lzo":
            import lzallright

            return lambda data, limit: bytes(lzallright.LZOCompressor.decompress(data, limit))
        import zstandard
    except ImportError as exc:
        raise ImagenetfsError(f"{path}: {name}-compressed image needs {exc.name}") from None
    local = threading.local()

    def zstd_decompress(data: bytes, limit: int) -> bytes:
        # One decompression context per thread: sharing one across threads crashes.
        context = getattr(local, "context", None)
        if context is None:
            context = local.context = zstandard.ZstdDecompressor()
        if zstandard.frame_content_size(data) > limit:  # checked before it allocates that much
            raise ValueError(f"frame claims more than {limit} bytes")
        return bytes(context.decompress(data, max_output_size=limit))

    return zstd_decompress


def _zlib_decompress(data: bytes, limit: int) -> bytes:
    decompressor = zlib_ng.decompressobj()
    out = decompressor.decompress(data, limit + 1)
    if not decompressor.eof or len(out) > limit:
        raise ValueError("truncated stream or too much output")
    return out


def _lzma_decompress(data: bytes, limit: int, fmt: int) -> bytes:
    decompressor = lzma.LZMADecompressor(fmt)
    out = decompressor.decompress(data, max_length=limit + 1)
    if not decompressor.eof or len(out) > limit:
        raise ValueError("truncated stream or too much output")
    return out
