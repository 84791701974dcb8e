"""Tar and zip files read as images: ImageNet's downloads served as they come, never extracted.

Design
------
`TarImage` and `ZipImage` offer what the index builder and the index need of a
`squashfs.SquashImage` -- `walk()`, `read()`, `locate()`, `fingerprint()`, `mkfs_time`,
`fileno()`, `switch()`, `close()` -- so a download is indexed once like an image, and
afterwards a file's bytes are one `pread` at the offset the index recorded (or one splice:
`locate`, for a member stored as it is): the extent of a member is
`Extent(size, blocks_start=absolute offset of its data in the file, ...)`.

Tar. `walk()` reads the 512-byte headers with `os.pread` and seeks over the data (5-8 us per
member in all, warm): one `pread` per header when members are large, one per `WINDOW` bytes
when they are small (`_Window`); readahead is off for the walk (`POSIX_FADV_RANDOM`), so a cold
walk of ImageNet's tars reads a page per member, not the whole file. ustar (its name
prefix), GNU long names and links (`L`, `K`), pax headers (`x`: path, linkpath, size, mtime)
and base-256 numbers are understood; a global pax header (`g`) lends its mtime to the members
after it and is otherwise ignored (a global path or size would give every member one name).
Owners are not read: the index serves every file as the mounting user's. A member
`<name>.tar` of the file itself whose data is a tar (a valid first header, or an empty tar) is
shown as a directory `<name>` holding that tar's members, at their offsets in the outer file:
the train tar's 1,000 class tars. Only one level: a tar inside a class tar stays a file.
Directories, regular files and symlinks become entries; device nodes and fifos are left out,
as for images. Members come in archive order, each directory before what it holds (a directory
that only exists through its members' paths is yielded when first needed, with the file's
`mkfs_time`). A name stored twice (a tar appended to with `tar -r`) is refused when the index
is built, by the tree builder ("two entries map to the same path"): tar's own rule, the later
one wins, would need every name of the file kept in memory during the walk.

Refused at index time, each with one `CorruptImageError` line naming the file and the member:
compressed files (gzip, bzip2, xz, zstd, lz4, lzip: "decompress it first"), a bad header
checksum, a number field that is not one, a member's data or a class tar running past the end
of its container, a file ending without the end-of-archive block, sparse members (GNU `S`,
pax `GNU.sparse.*`), hard links (there are none in ImageNet's tars), multi-volume and unknown
member types, names with a `..` component or a NUL (leading `/` and `./` are dropped), pax
headers and long names over `MAX_METADATA` bytes.

Zip. The end-of-central-directory record (and its ZIP64 form) is read when the file is opened;
`walk()` reads the central directory in growing chunks (up to 8 MiB) and parses it with
`struct` (~1.5 us a record; `zipfile`'s `infolist()` takes ~8 us), then one `pread` of each
member's 30-byte local header gives where its data starts (through `_Window` too; cold, one
random read per member: the price of reads that are one `pread` each). Stored members read
like tar members (`block_sizes` empty). Deflated members carry `block_sizes` =
`struct.pack("<BQI", 8, compressed size, CRC-32)` (13 bytes): `read()` inflates the whole
member once -- never beyond its declared size, a MiB of input and of output at a time, into
one buffer of that size -- checks its CRC-32, and keeps it in a small LRU shared by the
threads, so the several 128 KiB reads of one file inflate it once, and a `nowait` read is
served from the cache. Memory is bounded per mount: deflated members over `MAX_INFLATED`
(64 MiB; the largest ImageNet JPEG is ~16 MB; Kaggle's largest text files, which are not
served, come to ~40 MB by their line counts: `ImageSets/CLS-LOC/train_cls.txt`) are left out
at index time, each said in one warning line naming it; the serving processes
of a mount share one budget, `CACHE_BYTES` (`share_caches`: divided among them); one member
is inflated at a time per process, after the cache has made room for it; and the most recent
member always stays (else every read of a member over the budget would inflate it again).
So a process holds at most max(its share, `MAX_INFLATED`) of inflated members, plus 2 MiB.
Symlinks (a Unix mode in the external attributes) stay symlinks, as `unzip` makes them; mtimes
are the extended-timestamp field's, else the DOS time read as UTC (no time zone in a zip).
Refused at index time: encryption, methods other than stored and deflate (bzip2, lzma, zstd...),
split (multi-disk) archives, a central directory that is cut or damaged, local headers or
data past the central directory, the name rules above.
Names are the stored bytes (no code page conversion).

Reads: a member's bytes going bad after indexing (the file truncated: a short `pread`; a
deflated member that no longer inflates or checks) raise `CorruptImageError`, which a request
answers with EIO -- that read only. `read(..., nowait=True)` succeeds only from the page cache
(`RWF_NOWAIT`) or the inflated-member cache, else raises `squashfs.WouldBlock`, as for images.

Identity: a fingerprint is the file's size and `squashfs.sample_digest` of its bytes (no mtime:
an index stays valid for a copy, and `switch` accepts only a copy); `mkfs_time` is the first
member's mtime. `read_member()` / `read_members()` fetch small members of a zip (Kaggle's
label files) for the source layer: one pass over the central directory, no index needed.
"""

from __future__ import annotations

import calendar
import functools
import logging
import os
import stat
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, NoReturn, Self

from zlib_ng import zlib_ng

from imagenetfs import squashfs
from imagenetfs.errors import CorruptImageError, ImagenetfsError, NoSuchEntry
from imagenetfs.squashfs import NO_NOWAIT, CacheVisibility, Entry, Extent, Run, WouldBlock

log = logging.getLogger(__name__)

BLOCK = 512
#: What one read of headers takes when members are small (`_Window`).
WINDOW = 64 << 10
#: Pax headers and GNU long names/links larger than this are refused (PATH_MAX is 4096).
MAX_METADATA = 1 << 20
#: Deflated zip members whose inflated size is larger are left out at index time.
MAX_INFLATED = 64 << 20
#: Inflated zip members kept by one mount (all its processes and threads together; see
#: `share_caches`); the most recent one always stays.
CACHE_BYTES = 64 << 20
CACHE_MEMBERS = 16
#: Bytes read, and bytes inflated, in one step of inflating a member.
INFLATE_STEP = 1 << 20
#: Members left out at index time said one line each; past that, one line says how many more.
LEFT_OUT_SAID = 10
#: Symlink targets longer than this are refused as damage (as in squashfs.py); the index
#: leaves out those longer than the kernel serves (`index.MAX_TARGET`), with a warning.
MAX_SYMLINK = 65536
#: Default bound of `read_member`.
MAX_MEMBER_READ = 256 << 20

_COMPRESSED = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x04\x22\x4d\x18", "lz4"),
    (b"LZIP", "lzip"),
)
_ZERO_BLOCK = bytes(BLOCK)
# name mode (uid gid) size mtime chksum type linkname magic (version uname gname dev) prefix
_HEADER = struct.Struct("100s8s16x12s12s8sc100s6s2x32x32x8x8x155s12x")
_HIGH_BYTES = bytes(range(128, 256))
_ODD_STARTS = (b"/", b".")  # names that may need cleaning (`_clean`)
_FILE_TYPES = (b"0", b"\0", b"7")
_DIRECTORY_TYPES = (b"5", b"D")
_META_TYPES = (b"x", b"X", b"g", b"L", b"K")  # pax headers, GNU long names: for the next member
_SKIPPED_TYPES = (b"3", b"4", b"6")  # character and block devices, fifos: no data, no entry
_TYPE_NAMES = {
    b"S": "a sparse file (tar --sparse)",
    b"M": "a multi-volume continuation",
    b"N": "an old GNU long-name record",
}
_DIR_MODE = stat.S_IFDIR | 0o755
_MAX_TIME = (1 << 63) - 1

_EOCD = struct.Struct("<IHHHHIIH")
_EOCD_SIG, _EOCD64_SIG, _LOCATOR_SIG = 0x06054B50, 0x06064B50, 0x07064B50
_LOCATOR = struct.Struct("<IIQI")
_EOCD64 = struct.Struct("<IQHHIIQQQQ")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_CENTRAL_SIG = 0x02014B50
_LOCAL = struct.Struct("<I22xHH")  # signature, (...), name and extra field lengths
_LOCAL_SIG = 0x04034B50
_EXTRA = struct.Struct("<HH")
_DEFLATED = struct.Struct("<BQI")  # a deflated member's block_sizes: method, compressed, CRC-32
_STORED, _DEFLATE = 0, 8
_METHODS = {
    1: "shrink",
    6: "implode",
    9: "deflate64",
    12: "bzip2",
    14: "lzma",
    93: "zstd",
    95: "xz",
    96: "jpeg",
    97: "wavpack",
    98: "ppmd",
    99: "AES encryption",
}
_UNIX = 3  # the "version made by" host of a Unix zip: external attributes hold st_mode


@dataclass(frozen=True)
class ArchiveFingerprint:
    """What identifies a tar or zip file: its size and sampled bytes (no mtime: see the top)."""

    archive: str  # "tar" or "zip"
    file_size: int
    samples: str  # squashfs.sample_digest of the whole file


def kind_of(path: str | os.PathLike[str]) -> str | None:
    """Which reader a file's bytes call for: `"tar"` (ustar magic, a valid first header, or
    compressed: opening it says why it cannot be served), `"zip"` (a local header at the start,
    or an end-of-central-directory record near the end), else None (SquashFS, or unreadable:
    the SquashFS reader says what is wrong)."""
    try:
        return _kind_of(path)
    except OSError:
        return None


def _kind_of(path: str | os.PathLike[str]) -> str | None:
    with open(path, "rb") as f:
        head = f.read(BLOCK)
        if head[257:262] == b"ustar":
            return "tar"
        if head[:4] == b"hsqs":
            return None
        if len(head) == BLOCK and _checksum_ok(head):
            return "tar"
        if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
            return "zip"
        if any(head.startswith(magic) for magic, _ in _COMPRESSED):
            return "tar"
        size = os.fstat(f.fileno()).st_size
        f.seek(max(size - _EOCD.size - 0xFFFF, 0))
        return "zip" if b"PK\x05\x06" in f.read() else None


class _ArchiveFile:
    """What a tar and a zip share: the descriptor, `switch`, the fingerprint, data reads."""

    archive = ""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise ImagenetfsError(f"{self.path}: cannot open: {exc.strerror}") from None
        self._size = os.fstat(self._fd).st_size
        self._nowait_supported = True  # until the file's filesystem says otherwise
        self._visible = CacheVisibility()
        self._retired: list[int] = []  # descriptors replaced by `switch`, closed with the image

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        for fd in self._retired:
            os.close(fd)
        self._retired = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def fileno(self) -> int:
        """The descriptor reads use now (see `switch`)."""
        return self._fd

    def cache_visible(self) -> bool:
        """`squashfs.cache_visible` of the descriptor reads use now, asked once per descriptor."""
        return self._visible.of(self._fd)

    def span(self, extent: Extent) -> Run:
        """Where a member's stored bytes lie in the file (for read-ahead, ahead.py: a hint;
        a deflated member's reach is taken as its size)."""
        return Run(self._fd, extent.blocks_start, extent.size)

    def switch(self, path: str) -> None:
        """Read from `path` from now on: a copy of this file (refused, ImagenetfsError, unless
        its size and sampled bytes are this file's). A read under way finishes on the old
        file, which stays open until `close` -- its number is never reused meanwhile."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise ImagenetfsError(f"{path}: cannot open: {exc.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            digest = squashfs.sample_digest
            same = size == self._size and digest(fd, size) == digest(self._fd, size)
        except OSError as exc:
            os.close(fd)
            raise ImagenetfsError(f"{path}: cannot read: {exc.strerror}") from None
        if not same:
            os.close(fd)
            raise ImagenetfsError(f"{path}: not a copy of {self.path}")
        self._retired.append(self._fd)
        self._fd, self.path = fd, path
        self._nowait_supported = True

    def fingerprint(self) -> ArchiveFingerprint:
        return ArchiveFingerprint(
            self.archive, self._size, squashfs.sample_digest(self._fd, self._size)
        )

    def _corrupt(self, problem: str) -> NoReturn:
        raise CorruptImageError(f"{self.path}: {problem}")

    def _pread(self, pos: int, size: int, what: str) -> bytes:
        """Metadata at index time: exactly `size` bytes within the file, else corrupt."""
        if pos < 0 or size < 0 or pos + size > self._size:
            self._corrupt(
                f"truncated: {what} at byte {pos} (+{size}) beyond the end ({self._size})"
            )
        data = os.pread(self._fd, size, pos)
        if len(data) != size:
            self._corrupt(f"truncated: {what} at byte {pos} beyond the end of the file")
        return data

    def _read_data(self, pos: int, size: int, nowait: bool) -> bytes:
        """File data; short means the file shrank since it was indexed. With `nowait`, only
        what the page cache holds (RWF_NOWAIT), else `WouldBlock`."""
        if nowait:
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
                # no RWF_NOWAIT on this filesystem (FUSE, some network filesystems): every
                # read of this file goes the blocking way, in a thread
                self._nowait_supported = False
                raise WouldBlock(pos) from None
            if got == size:
                return bytes(buf)
            raise WouldBlock(pos)  # partly cached, or truncated: the blocking read decides
        data = os.pread(self._fd, size, pos)
        if len(data) != size:
            self._corrupt(
                f"truncated: {size} bytes at byte {pos} wanted, {len(data)} there "
                "(the file changed since it was indexed)"
            )
        return data

    def _runs(self, extent: Extent, offset: int, size: int) -> list[Run]:
        """Where bytes [offset, offset+size) of a member stored as it is lie: one `Run` on the
        descriptor reads use now (`switch` keeps it open), [] past its end. (A file cut short
        since it was indexed shows when they are spliced: a short splice, then `read`.)"""
        if offset < 0 or size < 0:
            raise ValueError("offset and size must not be negative")
        end = min(offset + size, extent.size)
        if offset >= end:
            return []
        return [Run(self._fd, extent.blocks_start + offset, end - offset)]


class _Window:
    """Headers read at increasing offsets during a walk. When they come close together (small
    members: the last two less than `WINDOW / 8` apart), one `pread` of `WINDOW` bytes serves
    the next several; when far apart (ImageNet's JPEGs), one of the header alone, which costs
    one page -- with readahead off, what a cold walk reads per member either way."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""
        self.start = 0  # file offset of buf
        self.last = -WINDOW  # the offset last asked for

    def read(self, pos: int, size: int) -> bytes:
        near, self.last = pos - self.last < WINDOW >> 3, pos
        at = pos - self.start
        if 0 <= at and at + size <= len(self.buf):
            return self.buf[at : at + size]
        self.buf, self.start = os.pread(self.fd, max(size, WINDOW) if near else size, pos), pos
        return self.buf[:size]


# --- names and inode numbers ------------------------------------------------------------------


def _clean(raw: bytes) -> bytes:
    """A member name as a path relative to the root: leading `/` and `./`, empty and `.`
    components dropped; ValueError for a `..` component or a NUL."""
    if (
        raw.startswith(_ODD_STARTS)
        or raw.endswith(b"/")
        or b"/." in raw
        or b"//" in raw
        or b"\0" in raw
        or not raw
    ):
        if b"\0" in raw:
            raise ValueError("a NUL byte in its name")
        parts = [part for part in raw.split(b"/") if part and part != b"."]
        if b".." in parts:
            raise ValueError("a '..' component in its name (it would leave the tree)")
        return b"/".join(parts)
    return raw


def _shown(name: bytes) -> str:
    return repr(name.decode("utf-8", "backslashreplace"))


class _Tree:
    """Inode numbers and parents for a walk: the root is 1, every entry takes the next number;
    directories are remembered by path, so members find their parent and implicit parents
    are made once (with the file's `mkfs_time`)."""

    def __init__(self, mtime: int) -> None:
        self.mtime = mtime
        self.dirs: dict[bytes, int] = {b"": 1}
        self.next = 2

    def root(self) -> Entry:
        return Entry(b"", b"", 1, 1, squashfs.DIR, _DIR_MODE, 0, 0, self.mtime, 2, 0, None, 0, None)

    def directory(self, path: bytes, mode: int, mtime: int) -> list[Entry]:
        """The entry of directory `path` (seen before: the same number), after those of its
        parents not seen yet."""
        made = self.parents(path)
        ino = self.dirs.get(path)
        if ino is None:
            ino = self.dirs[path] = self.next
            self.next += 1
        head, _, name = path.rpartition(b"/")
        mode = (mode & 0o7777) | stat.S_IFDIR
        made.append(Entry(path, name, self.dirs[head], ino, squashfs.DIR, mode, 0, 0, mtime, 2, 0,
                          None, 0, None))  # fmt: skip
        return made

    def leaf(
        self, path: bytes, kind: int, mode: int, mtime: int, size: int, target: bytes | None,
        extent: Extent | None,
    ) -> list[Entry]:  # fmt: skip
        """The entry of a file or symlink (after its parents not seen yet)."""
        head, _, name = path.rpartition(b"/")
        parent = self.dirs.get(head)
        made = []
        if parent is None:
            made = self.parents(path)
            parent = self.dirs[head]
        self.next += 1
        made.append(Entry._make((path, name, parent, self.next - 1, kind, mode, 0, 0, mtime, 1,
                                 size, target, 0, extent)))  # fmt: skip
        return made

    def parents(self, path: bytes) -> list[Entry]:
        """Entries of the missing directories above `path` (none, usually)."""
        head = path.rpartition(b"/")[0]
        return [] if head in self.dirs else self.directory(head, 0o755, self.mtime)


# --- tar ----------------------------------------------------------------------------------------


def _number(field: bytes) -> int:
    """A tar number field: octal digits (NUL- or space-terminated) or base-256."""
    try:
        return int(field.rstrip(b"\0 "), 8)
    except ValueError:
        pass
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    if field[:1] == b"\xff":
        return int.from_bytes(field, "big", signed=True)
    digits = field.split(b"\0", 1)[0].strip()
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        raise ValueError(f"a number field that is not one: {field!r}") from None


def _checksum_ok(header: bytes) -> bool:
    """The header's checksum: the sum of its bytes, the checksum field counted as spaces
    (unsigned, or signed as some old tars wrote it). Adler-32's low half is 1 + the byte sum
    mod 65521: exact for 256 bytes (at most 65280), so two halves give the sum at C speed.
    (The walk first compares modulo 65521, with one Adler-32 of the whole header, and comes
    here only when that fails: a damage that changes the sum by a multiple of 65521 gets past
    it, as one that keeps the sum gets past tar's own check.)"""
    view = memoryview(header)
    field = header[148:156]
    total = (zlib.adler32(view[:256]) & 0xFFFF) + (zlib.adler32(view[256:]) & 0xFFFF) + 254
    total -= sum(field)
    try:
        stored = _number(field)
    except ValueError:
        return False
    if stored == total:
        return True
    rest = header[:148] + header[156:]
    return stored == total - 256 * (len(rest) - len(rest.translate(None, _HIGH_BYTES)))


def _pax_records(data: bytes) -> dict[bytes, bytes]:
    """`<length> <key>=<value>\\n` records; ValueError if malformed."""
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data) and data[pos]:
        space = data.find(b" ", pos)
        length = _pax_int(data[pos:space] if space > 0 else b"", "record length")
        record = data[space + 1 : pos + length]
        key, equals, value = record[:-1].partition(b"=")
        if length <= space - pos or pos + length > len(data) or record[-1:] != b"\n" or not equals:
            raise ValueError(f"a malformed pax header record at byte {pos} of its header")
        records[key] = value
        pos += length
    return records


def _pax_int(value: bytes, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"a pax {what} that is not a number: {value!r}") from None


def _class_tar(path: bytes) -> bool:
    """Whether a member's path names a class tar (`<name>.tar`, `<name>` not empty)."""
    return path.endswith(b".tar") and len(path.rpartition(b"/")[2]) > 4


def _pax_time(value: bytes) -> int:
    """Whole seconds (floor) of a pax time such as `1712345678.25`."""
    seconds = value.split(b".", 1)[0]
    return _pax_int(seconds, "mtime") - (1 if seconds.startswith(b"-") and value != seconds else 0)


class TarImage(_ArchiveFile):
    """A tar file (and the class tars inside it) read like an image; see the module docstring."""

    archive = "tar"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        try:
            head = os.pread(self._fd, BLOCK, 0)
            for magic, name in _COMPRESSED:
                if head.startswith(magic):
                    self._corrupt(
                        f"{name}-compressed: compressed tars are not supported; decompress it first"
                    )
            if len(head) < BLOCK or not (head == _ZERO_BLOCK or _checksum_ok(head)):
                self._corrupt("not a tar file (no valid header at its start)")
        except BaseException:
            self.close()
            raise
        self._head = head

    @functools.cached_property
    def mkfs_time(self) -> int:
        """The first member's mtime (deterministic from the bytes: the same for a copy)."""
        try:
            return max(0, min(_number(self._head[136:148]), _MAX_TIME))
        except ValueError:
            return 0

    def walk(self) -> Iterator[Entry]:
        """The root, then every member in archive order, each directory before its contents."""
        tree = _Tree(self.mkfs_time)
        yield tree.root()
        os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_RANDOM)
        try:
            yield from self._members(tree)
        finally:
            if self._fd >= 0:
                os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_NORMAL)

    def _members(self, tree: _Tree) -> Iterator[Entry]:
        # The hot loop (one iteration per header) is written out flat, class tars included
        # (no generator per class tar), numbers and checksums parsed inline.
        unpack, dirs, new = _HEADER.unpack_from, tree.dirs, tuple.__new__
        window = _Window(self._fd)
        adler32, file_kind = zlib.adler32, squashfs.FILE
        pos, end = 0, self._size  # the tar being read: bytes [pos, end) of the file
        outer: tuple[bytes, bytes] | None = None  # in a class tar: its (member name, directory)
        back: tuple[int, bytes, int | None] = (0, b"", None)  # the outer tar's state to resume
        prefix = b""
        last = b""  # the name of the last member, for messages
        long_name = long_link = None
        pax: dict[bytes, bytes] = {}
        global_mtime: int | None = None
        while True:
            header = window.read(pos, BLOCK) if pos + BLOCK <= end else b""
            if len(header) != BLOCK:
                problem = "the archive ends after it" if pos >= end else "a header is cut short"
                self._tar_corrupt(outer, last, f"truncated: {problem}")
            if header == _ZERO_BLOCK:  # the end of the archive
                if outer is None:
                    return
                (pos, last, global_mtime), outer, prefix, end = back, None, b"", self._size
                continue
            name, mode, size, mtime, checksum, kind, link, magic, head = unpack(header)
            try:  # the checksum, modulo 65521 (see `_checksum_ok`): one C call
                stored = int(checksum.rstrip(b"\0 "), 8) + sum(checksum) - 255
                if (stored - (adler32(header) & 0xFFFF)) % 65521:
                    raise ValueError
            except ValueError:
                if not _checksum_ok(header):  # (the slow way: a signed sum, odd fields)
                    self._tar_corrupt(outer, last, f"the header after it (byte {pos}) has a bad "
                                      "checksum: not a tar, or damaged")  # fmt: skip
            data = pos + BLOCK
            name = name.partition(b"\0")[0]
            try:
                try:
                    size = int(size.rstrip(b"\0 "), 8)
                except ValueError:
                    size = _number(size)
                if kind in _META_TYPES:  # about the member after it
                    record = self._record(data, size, end, outer)
                    if kind == b"L":
                        long_name = record.partition(b"\0")[0]
                    elif kind == b"K":
                        long_link = record.partition(b"\0")[0]
                    elif kind == b"g":
                        records = _pax_records(record)
                        if b"mtime" in records:
                            global_mtime = _pax_time(records[b"mtime"])
                    else:
                        pax = _pax_records(record)
                    pos = data + (size + BLOCK - 1) // BLOCK * BLOCK
                    continue
                # the name: pax path > GNU long name > ustar prefix/name > name
                if magic == b"ustar\0" and head[0]:
                    name = head.partition(b"\0")[0] + b"/" + name
                if long_name is not None:
                    name = long_name
                if pax:
                    name = pax.get(b"path", name)
                    if b"size" in pax:
                        size = _pax_int(pax[b"size"], "size")
                    if any(key.startswith(b"GNU.sparse.") for key in pax):
                        name = pax.get(b"GNU.sparse.name", name)
                        raise ValueError("a sparse file (tar --sparse): not supported")
                last = name
                if kind == b"5" or (kind == b"\0" and name.endswith(b"/")):
                    size = 0  # a directory: no data follows, whatever its size says (as in tar)
                if size < 0:
                    raise ValueError(f"a negative size ({size})")
                if data + size > end:
                    raise ValueError(self._past(data + size, end, outer))
                path = _clean(name)
                try:
                    mtime, mode = int(mtime.rstrip(b"\0 "), 8), int(mode.rstrip(b"\0 "), 8)
                except ValueError:
                    mtime, mode = _number(mtime), _number(mode)
                if b"mtime" in pax:
                    mtime = _pax_time(pax[b"mtime"])
                elif global_mtime is not None:
                    mtime = global_mtime
                if not 0 <= mtime <= _MAX_TIME:
                    mtime = max(0, min(mtime, _MAX_TIME))
                mode &= 0o7777
                if kind == b"1" or kind == b"2":
                    link = long_link if long_link is not None else link.partition(b"\0")[0]
                    link = pax.get(b"linkpath", link)
            except ValueError as exc:
                self._tar_corrupt(outer, last if kind in _META_TYPES else name, str(exc))
            long_name = long_link = None
            if pax:
                pax = {}
            pos = data + (size + BLOCK - 1) // BLOCK * BLOCK
            if kind in _FILE_TYPES and path and not name.endswith(b"/"):
                path = prefix + path
                if outer is None and _class_tar(path) and self._is_tar(data, size):
                    yield from tree.directory(path[:-4], 0o755, mtime)
                    back = (pos, last, global_mtime)
                    outer, prefix, pos, end = (name, path[:-4]), path[:-4] + b"/", data, data + size
                    last, global_mtime = b"", None
                    continue
                head, _, base = path.rpartition(b"/")
                parent = dirs.get(head)
                if parent is None:
                    yield from tree.parents(path)
                    parent = dirs[head]
                tree.next += 1
                # tuple.__new__: Entry._make without its length check (the hot path)
                yield new(Entry, (path, base, parent, tree.next - 1, file_kind,
                                  mode | stat.S_IFREG, 0, 0, mtime, 1, size, None, 0,
                                  new(Extent, (size, data, b"", None, 0, 0))))  # fmt: skip
            elif kind in _SKIPPED_TYPES:
                continue
            elif not path:  # "./": the root (or the class tar's directory) itself
                if kind not in _DIRECTORY_TYPES and not name.endswith(b"/"):
                    self._tar_corrupt(outer, name, "a member without a name")
            elif kind in _DIRECTORY_TYPES or kind in _FILE_TYPES:  # D: GNU dumpdir (data skipped)
                yield from tree.directory(prefix + path, mode, mtime)
            elif kind == b"2":
                if not link or len(link) > MAX_SYMLINK:
                    self._tar_corrupt(outer, name, f"a symlink to {len(link)} bytes")
                yield from tree.leaf(prefix + path, squashfs.SYMLINK, mode | stat.S_IFLNK, mtime,
                                     len(link), link, None)  # fmt: skip
            elif kind == b"1":
                self._tar_corrupt(outer, name, f"a hard link (to {_shown(link)}): not supported")
            elif kind != b"V":  # V: a GNU volume label, not a member
                what = _TYPE_NAMES.get(kind, f"of unknown type {kind!r}")
                self._tar_corrupt(outer, name, f"{what}: not supported")

    def _record(self, pos: int, size: int, end: int, outer: tuple[bytes, bytes] | None) -> bytes:
        """The data of a pax header or GNU long name: bounded, within its container."""
        if not 0 <= size <= MAX_METADATA:
            raise ValueError(f"a header record of {size} bytes (at most {MAX_METADATA})")
        if pos + size > end:
            raise ValueError(self._past(pos + size, end, outer))
        record = os.pread(self._fd, size, pos)
        if len(record) != size:
            raise ValueError("truncated: a header record is cut short")
        return record

    @staticmethod
    def _past(stop: int, end: int, outer: tuple[bytes, bytes] | None) -> str:
        container = f"the end of {_shown(outer[0])}" if outer else "the end of the file"
        return f"truncated: its data ends at byte {stop}, past {container} ({end})"

    def _is_tar(self, pos: int, size: int) -> bool:
        """Whether the member data at `pos` starts like a tar (a valid header, or an empty
        tar's zero block)."""
        if size < BLOCK:
            return False
        head = os.pread(self._fd, BLOCK, pos)
        return head == _ZERO_BLOCK or (len(head) == BLOCK and _checksum_ok(head))

    def _tar_corrupt(
        self, outer: tuple[bytes, bytes] | None, member: bytes, problem: str
    ) -> NoReturn:
        where = f" in {_shown(outer[0])}" if outer else ""
        if not member:
            self._corrupt(f"first member{where}: {problem}")
        self._corrupt(f"member {_shown(member)}{where}: {problem}")

    def read(self, extent: Extent, offset: int, size: int, *, nowait: bool = False) -> bytes:
        """Bytes [offset, offset+size) of a member, short (or empty) at its end."""
        if offset < 0 or size < 0:
            raise ValueError("offset and size must not be negative")
        end = min(offset + size, extent.size)
        if offset >= end:
            return b""
        return self._read_data(extent.blocks_start + offset, end - offset, nowait)

    def locate(self, extent: Extent, offset: int, size: int) -> list[Run] | None:
        """Where the bytes `read` returns lie in the file (see `squashfs.SquashImage.locate`):
        a member's data is stored as it is read."""
        return self._runs(extent, offset, size)


# --- zip ----------------------------------------------------------------------------------------


class _Member(NamedTuple):
    """One central directory record, as the walk needs it."""

    name: bytes
    host: int  # "version made by" >> 8: 3 for Unix (external attributes hold st_mode)
    flags: int
    method: int
    mtime: int
    crc: int
    compressed: int
    size: int
    header: int  # absolute offset of its local header
    attributes: int  # external attributes


@functools.lru_cache(maxsize=4096)
def _dos_time(date: int, time: int) -> int:
    """A DOS date and time, read as UTC."""
    try:
        return calendar.timegm((1980 + (date >> 9), (date >> 5) & 15, date & 31, time >> 11,
                                (time >> 5) & 63, (time & 31) * 2, 0, 0, 0))  # fmt: skip
    except (ValueError, OverflowError):
        return 0


class ZipImage(_ArchiveFile):
    """A zip file read like an image; see the module docstring."""

    archive = "zip"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        try:
            self._start, self._length, self._count, self._shift = self._central_directory()
        except BaseException:
            self.close()
            raise
        self._cache = _InflatedCache(CACHE_BYTES, CACHE_MEMBERS)
        self._inflating = threading.Lock()  # one member inflated at a time (see the top)

    def share_cache(self, processes: int) -> None:
        """Keep this process's share of `CACHE_BYTES`: one of `processes` serving a mount."""
        self._cache.resize(CACHE_BYTES // max(processes, 1))

    def _central_directory(self) -> tuple[int, int, int, int]:
        """(offset, size, entries, shift) of the central directory; shift: bytes before the
        zip proper (a self-extractor's stub), added to every offset it records."""
        size = self._size
        tail_size = min(size, _EOCD.size + 0xFFFF + _LOCATOR.size)
        tail = self._pread(size - tail_size, tail_size, "end of central directory")
        at = tail.rfind(b"PK\x05\x06")
        while at >= 0 and at + _EOCD.size + _EOCD.unpack_from(tail, at)[7] > len(tail):
            at = tail.rfind(b"PK\x05\x06", 0, at)  # a signature inside the comment
        if at < 0 or at + _EOCD.size > len(tail):
            self._corrupt("not a zip file, or cut short: no end-of-central-directory record")
        _, disk, cd_disk, on_disk, count, length, offset, _ = _EOCD.unpack_from(tail, at)
        end = size - tail_size + at  # where the record is
        locator = at - _LOCATOR.size
        if locator >= 0 and _LOCATOR.unpack_from(tail, locator)[0] == _LOCATOR_SIG:
            _, z64_disk, _, disks = _LOCATOR.unpack_from(tail, locator)
            end = end - _LOCATOR.size - _EOCD64.size
            record = self._pread(end, _EOCD64.size, "zip64 end-of-central-directory record")
            sig, _, _, _, disk, cd_disk, on_disk, count, length, offset = _EOCD64.unpack(record)
            if sig != _EOCD64_SIG:
                self._corrupt("the zip64 end-of-central-directory record is not where it says")
            if z64_disk != 0 or disks > 1:
                disk = max(disk, 1)
        if disk != 0 or cd_disk != 0 or on_disk != count:
            self._corrupt("a split (multi-disk) zip: not supported; join it first (zip -s 0)")
        shift = end - offset - length
        if shift < 0:
            self._corrupt(
                f"damaged: the central directory ({length} bytes at {offset}) overlaps its end "
                f"record at byte {end}"
            )
        return offset + shift, length, count, shift

    @functools.cached_property
    def mkfs_time(self) -> int:
        """The first member's mtime (deterministic from the bytes: the same for a copy)."""
        return next((member.mtime for member in self._members()), 0)

    def _members(self) -> Iterator[_Member]:
        """The central directory's records, read in chunks that grow to 8 MiB."""
        pos, stop = self._start, self._start + self._length
        buf, at = b"", 0
        chunk = 64 << 10
        last = b""
        unpack, new = _CENTRAL.unpack_from, tuple.__new__
        for number in range(self._count):
            if at + _CENTRAL.size > len(buf):
                buf, at, pos, chunk = self._refill(buf, at, pos, stop, chunk, _CENTRAL.size, last)
            (sig, made_by, _, flags, method, time, date, crc, compressed, size, name_size,
             extra_size, comment_size, disk, _, attributes, header) = unpack(buf, at)  # fmt: skip
            if sig != _CENTRAL_SIG:
                self._zip_corrupt(
                    last,
                    f"central directory record {number + 1} after it is damaged (bad signature)",
                )
            record = _CENTRAL.size + name_size + extra_size + comment_size
            if at + record > len(buf):
                buf, at, pos, chunk = self._refill(buf, at, pos, stop, chunk, record, last)
            name = buf[at + 46 : at + 46 + name_size]
            mtime = _dos_time(date, time)
            wide = (size == 0xFFFFFFFF, compressed == 0xFFFFFFFF, header == 0xFFFFFFFF,
                    disk == 0xFFFF)  # fmt: skip
            if extra_size or True in wide:  # (ZIP64 values are in the extra field)
                extra = buf[at + 46 + name_size : at + 46 + name_size + extra_size]
                fields = self._extra(extra, wide, name)
                size, compressed, header, disk = (
                    value if value is not None else stored
                    for value, stored in zip(fields[:4], (size, compressed, header, disk),
                                             strict=True)
                )  # fmt: skip
                if fields[4] is not None:
                    mtime = fields[4]
            at += record
            if disk != 0:
                self._zip_corrupt(name, "on another disk of a split zip: not supported")
            last = name
            yield new(_Member, (name, made_by >> 8, flags, method, mtime, crc, compressed, size,
                                header + self._shift, attributes))  # fmt: skip

    def _refill(
        self, buf: bytes, at: int, pos: int, stop: int, chunk: int, need: int, last: bytes
    ) -> tuple[bytes, int, int, int]:
        """More of the central directory after `buf[at:]`: (buffer, 0, next position, chunk)."""
        chunk = max(chunk, need)
        take = min(chunk, stop - pos)
        if len(buf) - at + take < need:
            self._zip_corrupt(last, "the central directory is cut short after it (damaged zip)")
        more = self._pread(pos, take, "central directory")
        return buf[at:] + more, 0, pos + take, min(chunk * 2, 8 << 20)

    def _extra(
        self, extra: bytes, wide: tuple[bool, ...], name: bytes
    ) -> tuple[int | None, int | None, int | None, int | None, int | None]:
        """(size, compressed, header, disk, mtime) from the extra fields: ZIP64 values for the
        `wide` fields, and the extended timestamp's mtime; None where absent."""
        found: list[int | None] = [None] * 5
        at = 0
        while at + 4 <= len(extra):
            kind, length = _EXTRA.unpack_from(extra, at)
            body = extra[at + 4 : at + 4 + length]
            at += 4 + length
            if kind == 0x0001 and any(wide):
                i = 0
                for n, (is_wide, width) in enumerate(zip(wide, (8, 8, 8, 4), strict=True)):
                    if is_wide:
                        if i + width > len(body):
                            self._zip_corrupt(name, "its zip64 extra field is too short")
                        found[n] = int.from_bytes(body[i : i + width], "little")
                        i += width
            elif kind == 0x5455 and len(body) >= 5 and body[0] & 1:
                found[4] = int.from_bytes(body[1:5], "little", signed=True)
        if any(wide) and all(found[n] is None for n in range(4) if wide[n]):
            self._zip_corrupt(name, "sizes or offset in a zip64 extra field it does not have")
        return found[0], found[1], found[2], found[3], found[4]

    def _zip_corrupt(self, member: bytes, problem: str) -> NoReturn:
        if not member:
            self._corrupt(f"first member: {problem}")
        self._corrupt(f"member {_shown(member)}: {problem}")

    def walk(self) -> Iterator[Entry]:
        """The root, then every member in central directory order, each directory before its
        contents."""
        tree = _Tree(self.mkfs_time)
        yield tree.root()
        dirs, new, file_kind = tree.dirs, tuple.__new__, squashfs.FILE
        window = _Window(self._fd)
        left_out = 0
        os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_RANDOM)
        try:
            for member in self._members():
                name = member.name
                try:
                    path = _clean(name)
                except ValueError as exc:
                    self._zip_corrupt(name, str(exc))
                mode = member.attributes >> 16 if member.host == _UNIX else 0
                kind = mode & 0o170000
                if name.endswith(b"/") or kind == stat.S_IFDIR:
                    if path:
                        yield from tree.directory(path, mode or 0o755, member.mtime)
                    continue
                if not path:
                    self._zip_corrupt(name, "a file without a name")
                if member.method == _DEFLATE and member.size > MAX_INFLATED:
                    left_out += 1
                    if left_out <= LEFT_OUT_SAID:
                        self._leave_out(member)
                    continue
                extent = self._extent(member, window)
                if kind == stat.S_IFLNK:
                    target = self._whole(member, extent, MAX_SYMLINK, "symlink target")
                    yield from tree.leaf(path, squashfs.SYMLINK, mode, member.mtime, len(target),
                                         target, None)  # fmt: skip
                    continue
                head, _, base = path.rpartition(b"/")
                parent = dirs.get(head)
                if parent is None:
                    yield from tree.parents(path)
                    parent = dirs[head]
                tree.next += 1
                mode = (mode & 0o7777 or 0o644) | stat.S_IFREG
                # tuple.__new__: Entry._make without its length check (the hot path)
                yield new(Entry, (path, base, parent, tree.next - 1, file_kind, mode, 0, 0,
                                  member.mtime, 1, member.size, None, 0, extent))  # fmt: skip
        finally:
            if self._fd >= 0:
                os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_NORMAL)
        if left_out > LEFT_OUT_SAID:
            log.warning("%s: %d more members left out", self.path, left_out - LEFT_OUT_SAID)

    def _leave_out(self, member: _Member) -> None:
        log.warning(
            "%s: %r left out: deflated, %d bytes inflated: more than %d MiB (store it "
            "uncompressed: zip -0)",
            self.path, member.name.decode("utf-8", "backslashreplace"), member.size,
            MAX_INFLATED >> 20,
        )  # fmt: skip

    def _extent(self, member: _Member, window: _Window) -> Extent:
        """Where a member's data is (its local header read), refused if it cannot be served."""
        name, method, header = member.name, member.method, member.header
        size, compressed = member.size, member.compressed
        if member.flags & 0x41 or method == 99:
            self._zip_corrupt(name, "encrypted: not supported")
        if method == _DEFLATE:
            if size > MAX_INFLATED:
                limit = f"more than {MAX_INFLATED >> 20} MiB (store it uncompressed: zip -0)"
                self._zip_corrupt(name, f"deflated, {size} bytes inflated: {limit}")
            if compressed > size + (size >> 8) + 1024:
                self._zip_corrupt(name, f"{compressed} compressed bytes for {size}: damaged")
            blocks = _DEFLATED.pack(_DEFLATE, compressed, member.crc)
        elif method == _STORED:
            if compressed != size:
                self._zip_corrupt(name, f"stored, but {compressed} bytes for {size}")
            blocks = b""
        else:
            what = _METHODS.get(method, f"method {method}")
            self._zip_corrupt(
                name, f"compressed with {what}: only stored and deflate are supported"
            )
        if header + _LOCAL.size > self._start:
            self._zip_corrupt(name, f"its local header (byte {header}) is past the data")
        try:
            signature, name_size, extra_size = _LOCAL.unpack(window.read(header, _LOCAL.size))
        except struct.error:
            signature = 0
        if signature != _LOCAL_SIG:
            self._zip_corrupt(name, f"no local header at byte {header}: damaged zip")
        data = header + _LOCAL.size + name_size + extra_size
        if data + compressed > self._start:
            self._zip_corrupt(name, f"truncated: its data ends at byte {data + compressed}, past "
                              f"the start of the central directory ({self._start})")  # fmt: skip
        return tuple.__new__(Extent, (size, data, blocks, None, 0, 0))

    def _whole(self, member: _Member, extent: Extent, limit: int, what: str) -> bytes:
        """All of a small member's bytes (at most `limit`), inflated and checked."""
        if member.size > limit:
            self._zip_corrupt(member.name, f"a {what} of {member.size} bytes (at most {limit})")
        return self.read(extent, 0, member.size) if member.size else b""

    def read(self, extent: Extent, offset: int, size: int, *, nowait: bool = False) -> bytes:
        """Bytes [offset, offset+size) of a member, short (or empty) at its end; a deflated
        member is inflated whole, once (see the module docstring)."""
        if offset < 0 or size < 0:
            raise ValueError("offset and size must not be negative")
        end = min(offset + size, extent.size)
        if offset >= end:
            return b""
        if not extent.block_sizes:
            return self._read_data(extent.blocks_start + offset, end - offset, nowait)
        key = extent.blocks_start
        data = self._cache.get(key, count_miss=not nowait)
        if data is None:
            if nowait:
                raise WouldBlock(key)
            with self._inflating:
                data = self._cache.get(key, count=False)  # (inflated meanwhile?)
                if data is None:
                    self._cache.make_room(extent.size)
                    data = self._inflate(extent)
                    self._cache.put(key, data)
        return bytes(memoryview(data)[offset:end])

    def locate(self, extent: Extent, offset: int, size: int) -> list[Run] | None:
        """Where the bytes `read` returns lie in the file (see `squashfs.SquashImage.locate`):
        a stored member's, as in a tar; None for a deflated one."""
        return None if extent.block_sizes else self._runs(extent, offset, size)

    def _inflate(self, extent: Extent) -> bytearray:
        """A deflated member's bytes, checked, in one buffer of its size: read and inflated
        `INFLATE_STEP` bytes at a time (see the module docstring)."""
        try:
            method, compressed, crc = _DEFLATED.unpack(extent.block_sizes)
        except struct.error:
            method = -1
        start, size = extent.blocks_start, extent.size
        if method != _DEFLATE or size > MAX_INFLATED:
            self._corrupt(f"bad extent of the member at byte {start} in the index")
        out = bytearray(size)
        view = memoryview(out)
        inflater = zlib_ng.decompressobj(-15)
        done = taken = 0  # bytes inflated; compressed bytes read
        pending = b""  # compressed bytes read, not inflated yet
        try:
            while not inflater.eof:
                if not pending:
                    if taken == compressed:
                        break
                    step = min(INFLATE_STEP, compressed - taken)
                    pending = self._read_data(start + taken, step, False)
                    taken += step
                # at most a step, and one byte more than the member has: too long is damage
                piece = inflater.decompress(pending, min(INFLATE_STEP, size - done + 1))
                pending = inflater.unconsumed_tail
                if done + len(piece) > size:
                    break
                view[done : done + len(piece)] = piece
                done += len(piece)
        except zlib_ng.error as exc:  # type: ignore[misc]  # (its stub calls the class an instance)
            self._corrupt(f"the member at byte {start} does not inflate: {exc}")
        if not inflater.eof or done != size:
            self._corrupt(f"the member at byte {start} does not inflate to its {size} bytes")
        if zlib_ng.crc32(view) != crc:
            self._corrupt(f"the member at byte {start} fails its CRC-32 check")
        return out

    def statistics(self) -> squashfs.ReaderStatistics:
        """Counters of the inflated-member cache."""
        return self._cache.statistics()


class _InflatedCache:
    """Inflated members by data offset, at most `capacity` bytes and `members` of them (the
    most recent one always stays), shared by threads."""

    def __init__(self, capacity: int, members: int) -> None:
        self._capacity = capacity
        self._members = members
        self._data: OrderedDict[int, bytearray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._hits = self._misses = 0

    def get(self, key: int, *, count: bool = True, count_miss: bool = True) -> bytearray | None:
        """The member at `key`, or None; counted unless `count` is False, a miss unless
        `count_miss` is False too (a `nowait` read, which inflates nothing: the blocking read
        that follows counts it, so that misses are members inflated)."""
        with self._lock:
            data = self._data.get(key)
            if data is not None:
                self._data.move_to_end(key)
            if count:
                if data is None:
                    self._misses += count_miss
                else:
                    self._hits += 1
            return data

    def put(self, key: int, data: bytearray) -> None:
        with self._lock:
            old = self._data.pop(key, None)
            self._bytes += len(data) - (len(old) if old is not None else 0)
            self._data[key] = data
            self._evict(self._capacity, self._members, keep=1)

    def make_room(self, size: int) -> None:
        """Evict (the most recent member too) until a member of `size` bytes fits."""
        with self._lock:
            self._evict(self._capacity - size, self._members - 1, keep=0)

    def resize(self, capacity: int) -> None:
        with self._lock:
            self._capacity = capacity
            self._evict(capacity, self._members, keep=1)

    def _evict(self, capacity: int, members: int, *, keep: int) -> None:
        while len(self._data) > keep and (self._bytes > capacity or len(self._data) > members):
            _, evicted = self._data.popitem(last=False)
            self._bytes -= len(evicted)

    def statistics(self) -> squashfs.ReaderStatistics:
        with self._lock:
            return squashfs.ReaderStatistics(
                self._hits, self._misses, len(self._data), self._members
            )


def share_caches(images: Iterable[object], processes: int) -> None:
    """Give each zip of `images` its share of `CACHE_BYTES` in one of the `processes` that
    serve a mount (called in each of them): one budget per mount, not per process."""
    for image in images:
        if isinstance(image, ZipImage):
            image.share_cache(processes)


# --- for the source layer ---------------------------------------------------------------------


def read_member(path: str | os.PathLike[str], name: str, *, limit: int = MAX_MEMBER_READ) -> bytes:
    """The bytes of one small member of a zip (`LOC_synset_mapping.txt` in Kaggle's): its
    central directory read once; NoSuchEntry if it has no such file, CorruptImageError if the
    member is larger than `limit` or cannot be read."""
    found = read_members(path, [name], limit=limit)
    if name not in found:
        raise NoSuchEntry(f"{os.fspath(path)}: no member {name!r}")
    return found[name]


def read_members(
    path: str | os.PathLike[str], names: Iterable[str], *, limit: int = MAX_MEMBER_READ
) -> dict[str, bytes]:
    """The bytes of those of `names` that are files of the zip, in one pass over its central
    directory (names compared as paths: `./a` is `a`; of a name stored twice, the first)."""
    wanted = {_clean(os.fsencode(name)): name for name in names}
    last_components = {name.rpartition(b"/")[2] for name in wanted}
    found: dict[str, bytes] = {}
    with ZipImage(path) as image:
        for member in image._members():
            stored = member.name
            if stored.rpartition(b"/")[2] not in last_components:  # (cheap: most members)
                continue
            try:
                name = wanted.get(_clean(stored))
            except ValueError:
                continue
            if name is not None and name not in found:
                extent = image._extent(member, _Window(image._fd))
                found[name] = image._whole(member, extent, limit, "member")
    return found
