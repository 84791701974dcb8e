"""The LMDB index: the whole served tree, built once from the images, then memory-mapped.

Design
------
`build()` walks every image once (`squashfs.SquashImage.walk`, `dirtree.DirImage.walk` for
an unpacked tree, `archive.TarImage.walk` / `ZipImage.walk` for a tar or zip), asks a *placer*
where each entry goes in the served tree (so the source layer decides that val files land in
`val/<wnid>/`), assembles the tree in memory and writes it in one LMDB transaction. Inode
numbers are dense: the root is 1 (FUSE's root id) and, breadth-first, the children of each
directory get consecutive numbers in sorted-name order. So a directory record needs only its
first child and its child count: `readdir(ino, offset)` is `getattr(first + offset)`, ...
with the offset as a stable cookie, and no listing is ever stored twice.

Databases in the one LMDB file (`subdir=False`):

- `meta`: `schema` (version), `images` (JSON: each image's name relative to the source and
  its fingerprint), `stats`, `source` (the directory it was built from: the default source);
- `nodes`: ino (u32 big-endian, so byte order is numeric order) -> packed `Node`: kind,
  parent, size, mtime, name, then a directory's (first child, count), a file's image number
  and extent, or a symlink's target;
- `names`: parent ino (u32 BE) + name -> child ino: one `get` per `lookup`;
- `lists`: (directory ino, chunk number) -> the directory's listing as FUSE READDIR records,
  `LIST_CHUNK` children per chunk: a u16 count, the records' end offsets (u16 each: a chunk
  is < 64 KiB), then the records, each a `fuse_dirent` with the child's ino, its cookie
  (position + 3, after `.` and `..`), its type and name. Native byte order, like the
  protocol. A listing request is then a few `get`s and slices, not a loop over the children
  (a walk of full ImageNet: seconds less). Stored as they are (`meta` `lists`: "raw"), and
  written after everything else, so that they lie in consecutive pages: full ImageNet's take
  73 MB so, 14 MB deflated -- but inflating them was most of a READDIR's cost in the workers
  (653k -> 134k instructions per 32 KiB), and with the map read ahead (below) a cold walk
  reads them in large sequential reads. Indexes of schema 5 built before keep them deflated
  and interleaved with the rest (no `lists` key) and are read as they are;
- `blobs`: (ino, chunk number) -> a zlib-compressed 1 MiB chunk of a virtual file (meta.bin,
  the file lists; see views/tree.py), whose node names the pseudo image `BLOB_IMAGE`. Compressed,
  the lists of full ImageNet take ~12 MB instead of 110; a read decompresses only the chunks
  it touches (the last one is kept per thread).

Every entry of the served tree is its own inode: a hard link in an image shows up as separate
files with identical bytes (nlink 1), which is what a read-only tree of ImageNet needs and keeps
the numbering dense. Device nodes, fifos and sockets are left out. So are symlinks whose
target is longer than `MAX_TARGET` (4,095 bytes, what the kernel takes in a READLINK reply;
a tar or a crafted image may hold more), each said in one warning line naming the image and
the entry (the first `LEFT_OUT_SAID`, then how many more): one entry the kernel could never
serve does not make the rest of a download unusable, and nothing is left out unsaid.

Atomicity: a build writes `<index>.tmp-<pid>-<node>` (nodeid.py: two nodes building into one
shared directory never write the same file), commits, syncs, and only then renames it over
`<index>`; a killed build leaves at most a stray temporary file, never an index that opens,
and the next build on that node removes it (a build of another node may still be writing its
own: only that node can tell). An
index that cannot be written (no permission, a full disk) is one line naming it.
`Index.open()` is O(1) in the number of files: it maps the file and reads `meta`. It keeps
the file open, and a process forked after the opening (a worker) gets an LMDB environment of
its own on that descriptor (`reopen`): what a mount serves never depends on paths after it
opened them. It refuses an index of another schema version. The map is read with the
kernel's readahead (LMDB's default): without it (MDB_NORDAHEAD) every page a cold walk or stat
touches was a 4 KiB read of its own, and a walk of full ImageNet on a fresh mount took ~1.6x
as long.

Relocatable: the index names its images relative to the source, and identifies each by a
fingerprint of its bytes (size, superblock, a digest of sampled blocks; for an unpacked tree,
its root's entries) -- never by mtime, device or inode numbers. So one index, built once by an
admin beside the data, serves the same images reached through any path (a bind mount, a
container's `/data`) or copied to local disk: `Index.open(path, source=DIR)` opens the images
under DIR, and refuses, in one line naming the image and the command that rebuilds, when they
are not the ones indexed.
"""

from __future__ import annotations

import array
import bisect
import contextlib
import hashlib
import json
import logging
import os
import stat
import struct
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Self

import lmdb

from imagenetfs import nodeid, places, protocol, squashfs
from imagenetfs.dirtree import Image, open_image
from imagenetfs.errors import ImagenetfsError, InvalidRequest, NoSuchEntry, NotADirectory

log = logging.getLogger(__name__)

SCHEMA_VERSION = 5
ROOT_INO = 1
MAX_NAME = 255
#: The longest symlink target served: the kernel refuses a READLINK reply of PATH_MAX (4,096)
#: bytes or more (and fails the request with EIO).
MAX_TARGET = 4095
#: Entries left out at build time said one line each; past that, one line says how many more.
LEFT_OUT_SAID = 10

DIR, FILE, SYMLINK = 1, 2, 3
_KIND_OF_TYPE = {squashfs.DIR: DIR, squashfs.FILE: FILE, squashfs.SYMLINK: SYMLINK}
_FORMAT = {DIR: stat.S_IFDIR | 0o555, FILE: stat.S_IFREG | 0o444, SYMLINK: stat.S_IFLNK | 0o777}
#: The `d_type` of each kind in a listing (DT_DIR, DT_REG, DT_LNK: the mode's type bits).
DTYPE = {kind: stat.S_IFMT(mode) >> 12 for kind, mode in _FORMAT.items()}

_INO = struct.Struct(">I")  # keys: big-endian so LMDB's byte order is numeric order
_CHILD = struct.Struct("<I")
_HEAD = struct.Struct("<BIQQH")  # kind, parent, size, mtime, name length
_NAME_AT = _HEAD.size - 2  # where a record keeps its name length
_DIR_TAIL = struct.Struct("<III")  # first child, count, subdirectory count
_FILE_TAIL = struct.Struct("<HQQIQ")  # image, blocks_start, fragment (or -1), frag offset, sparse
_NO_FRAGMENT = 0xFFFFFFFF
#: The "image number" of virtual files: their bytes are in the `blobs` database.
BLOB_IMAGE = 0xFFFF
BLOB_CHUNK = 1 << 20

#: Children per stored listing chunk (`lists`): ~6 KB of records for ImageNet's names.
LIST_CHUNK = 128
_LIST_COUNT = struct.Struct("<H")
_LIST_CHUNK_MAX = 2 + LIST_CHUNK * (2 + protocol.MAX_DIRENT)
assert _LIST_CHUNK_MAX < 1 << 16, "end offsets are u16"
_Child = tuple[int, int, bytes]  # ino, kind, name

#: Address space reserved for a build; LMDB only writes what it uses.
_BUILD_MAP_SIZE = 1 << 40


class IndexError_(ImagenetfsError):
    """The index cannot be used: missing, corrupt, another schema, or stale for its images."""


@dataclass(frozen=True, slots=True)
class Node:
    """One entry of the served tree, as `getattr` answers it."""

    ino: int
    kind: int  # DIR, FILE or SYMLINK
    parent: int
    size: int  # bytes for files, target length for symlinks, child count for directories
    mtime: int
    name: bytes
    tail: bytes  # kind-specific, decoded by the accessors below

    @property
    def mode(self) -> int:
        return _FORMAT[self.kind]

    @property
    def nlink(self) -> int:
        """2 + subdirectories for a directory (the Unix convention `find` relies on), else 1."""
        return 2 + _DIR_TAIL.unpack_from(self.tail)[2] if self.kind == DIR else 1

    def children(self) -> tuple[int, int]:
        """(first child ino, child count) of a directory."""
        if self.kind != DIR:
            raise NotADirectory(self.ino)
        first, count, _ = _DIR_TAIL.unpack_from(self.tail)
        return first, count

    @property
    def image(self) -> int | None:
        """The image number holding a file's bytes (`BLOB_IMAGE` for a virtual file)."""
        return _FILE_TAIL.unpack_from(self.tail)[0] if self.kind == FILE else None

    def extent(self) -> tuple[int, squashfs.Extent]:
        """(image number, extent) of a regular file."""
        image, start, fragment, frag_off, sparse = _FILE_TAIL.unpack_from(self.tail)
        blocks = self.tail[_FILE_TAIL.size :]
        frag = None if fragment == _NO_FRAGMENT else fragment
        return image, squashfs.Extent(self.size, start, blocks, frag, frag_off, sparse)

    @property
    def target(self) -> bytes:
        return self.tail if self.kind == SYMLINK else b""


def directory_node(ino: int, parent: int, name: bytes, mtime: int, subdirs: int) -> Node:
    """A directory that is not in the index (the views' `resized/`): attributes only."""
    return Node(ino, DIR, parent, subdirs, mtime, name, _DIR_TAIL.pack(0, 0, subdirs))


#: The "image number" of the files a view makes on read (views/shards.py): in no image, no blob.
VIEW_IMAGE = 0xFFFE


def virtual_file_node(ino: int, parent: int, name: bytes, size: int, mtime: int) -> Node:
    """A file that is not in the index (the shard view's): attributes only."""
    return Node(ino, FILE, parent, size, mtime, name, _FILE_TAIL.pack(VIEW_IMAGE, 0, 0, 0, 0))


def _decode(ino: int, value: bytes) -> Node:
    kind, parent, size, mtime, name_len = _HEAD.unpack_from(value)
    end = _HEAD.size + name_len
    return Node(ino, kind, parent, size, mtime, value[_HEAD.size : end], value[end:])


def _encode(kind: int, parent: int, size: int, mtime: int, name: bytes, tail: bytes) -> bytes:
    return _HEAD.pack(kind, parent, size, mtime, len(name)) + name + tail


# --- building ---------------------------------------------------------------------------------

#: Where an entry of image `i` goes in the served tree: path components, or None to leave it out.
Placer = Callable[[int, squashfs.Entry], Sequence[bytes] | None]


def place_by_image_name(images: Sequence[Path]) -> Placer:
    """Each image's tree under a directory named after the image: train.squashfs -> train/."""
    stems = [p.name.split(".", 1)[0].encode() for p in images]

    def place(i: int, entry: squashfs.Entry) -> Sequence[bytes] | None:
        return [stems[i], *entry.path.split(b"/")] if entry.path else [stems[i]]

    return place


#: Computes virtual files (path components -> bytes) from the paths of the placed files.
VirtualFiles = Callable[[list[tuple[bytes, ...]]], dict[tuple[bytes, ...], bytes]]


@dataclass
class _Dir:
    mtime: int
    children: dict[bytes, _Dir | _Leaf] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Leaf:
    kind: int
    size: int
    mtime: int
    tail: bytes
    blob: bytes | None = None  # contents of a virtual file, stored in the index


def _valid_name(name: bytes) -> bool:
    return (
        0 < len(name) <= MAX_NAME
        and name not in (b".", b"..")
        and b"/" not in name
        and (b"\0" not in name)
    )


class _TreeBuilder:
    def __init__(self, default_mtime: int) -> None:
        self.root = _Dir(default_mtime)
        self.default_mtime = default_mtime
        self.files = 0
        self.bytes = 0
        self.left_out = 0  # entries that cannot be served (see the module docstring)

    def leave_out(self, where: str, path: bytes, why: str) -> None:
        self.left_out += 1
        if self.left_out <= LEFT_OUT_SAID:
            shown = path.decode("utf-8", "backslashreplace")
            log.warning("%s: %r left out: %s", where, shown, why)

    def _parent(self, components: Sequence[bytes], where: str) -> _Dir:
        node = self.root
        for name in components:
            child = node.children.get(name)
            if child is None:
                child = node.children[name] = _Dir(self.default_mtime)
            elif not isinstance(child, _Dir):
                raise IndexError_(f"{where}: {b'/'.join(components)!r} is both a file and a dir")
            node = child
        return node

    def add(
        self, components: Sequence[bytes], image: int, entry: squashfs.Entry, where: str
    ) -> None:
        for name in components:
            if not _valid_name(name):
                raise IndexError_(f"{where}: invalid name {name!r} in the tree")
        kind = _KIND_OF_TYPE.get(entry.kind)
        if kind is None:
            return  # device nodes, fifos, sockets: not part of a dataset tree
        if kind == SYMLINK and len(entry.target or b"") > MAX_TARGET:
            size = len(entry.target or b"")
            why = f"a symlink to {size} bytes (the kernel serves targets of at most {MAX_TARGET})"
            self.leave_out(where, entry.path, why)
            return
        if not components:  # the root itself
            if kind == DIR:
                self.root.mtime = entry.mtime
            return
        parent = self._parent(components[:-1], where)
        name = components[-1]
        if kind == DIR:
            existing = parent.children.get(name)
            if isinstance(existing, _Dir):
                existing.mtime = entry.mtime
                return
            if existing is None:
                parent.children[name] = _Dir(entry.mtime)
                return
        elif name not in parent.children:
            if kind == FILE:
                assert entry.extent is not None
                ext = entry.extent
                frag = _NO_FRAGMENT if ext.fragment is None else ext.fragment
                tail = (
                    _FILE_TAIL.pack(image, ext.blocks_start, frag, ext.fragment_offset, ext.sparse)
                    + ext.block_sizes
                )
                parent.children[name] = _Leaf(FILE, ext.size, entry.mtime, tail)
                self.files += 1
                self.bytes += ext.size
            else:
                target = entry.target or b""
                parent.children[name] = _Leaf(SYMLINK, len(target), entry.mtime, target)
            return
        path = b"/".join(components)
        raise IndexError_(f"{where}: two entries map to the same path {path!r}")

    def file_paths(self) -> Iterator[tuple[bytes, ...]]:
        """Paths of every placed file, as components."""
        stack: list[tuple[tuple[bytes, ...], _Dir]] = [((), self.root)]
        while stack:
            prefix, directory = stack.pop()
            for name, child in directory.children.items():
                if isinstance(child, _Dir):
                    stack.append(((*prefix, name), child))
                elif child.kind == FILE:
                    yield (*prefix, name)

    def add_blob(self, components: Sequence[bytes], data: bytes) -> None:
        """A virtual file whose bytes live in the index itself."""
        parent = self._parent(components[:-1], "virtual files")
        if components[-1] in parent.children:
            return  # the source has a real file of that name: it wins
        tail = _FILE_TAIL.pack(BLOB_IMAGE, 0, _NO_FRAGMENT, 0, 0)
        parent.children[components[-1]] = _Leaf(FILE, len(data), self.default_mtime, tail, data)
        self.bytes += len(data)

    def records(self) -> Iterator[tuple[int, int, bytes, bytes, bytes | list[_Child] | None]]:
        """(ino, parent, name, packed node, extra) in ino order: breadth-first, names sorted;
        extra is a virtual file's bytes, a directory's children (ino, kind, name), or None.

        Consecutive numbers go to each directory's children when the directory is reached,
        so the output is in ino order, and also in (parent, name) order.
        """
        queue: deque[tuple[int, int, bytes, _Dir | _Leaf]] = deque(
            [(ROOT_INO, ROOT_INO, b"", self.root)]
        )
        next_ino = ROOT_INO + 1
        while queue:
            ino, parent, name, node = queue.popleft()
            if isinstance(node, _Leaf):
                value = _encode(node.kind, parent, node.size, node.mtime, name, node.tail)
                yield ino, parent, name, value, node.blob
                continue
            names = sorted(node.children)
            subdirs = sum(isinstance(c, _Dir) for c in node.children.values())
            tail = _DIR_TAIL.pack(next_ino, len(names), subdirs)
            value = _encode(DIR, parent, len(names), node.mtime, name, tail)
            kinds = [c.kind if isinstance(c, _Leaf) else DIR for c in map(node.children.get, names)]
            listing = list(zip(range(next_ino, next_ino + len(names)), kinds, names, strict=True))
            yield ino, parent, name, value, listing
            for child_name in names:
                queue.append((next_ino, ino, child_name, node.children[child_name]))
                next_ino += 1
            node.children = {}  # encoded: let the memory go


@dataclass(frozen=True)
class IndexStats:
    entries: int
    files: int
    images: int
    bytes: int  # total size of the files


def build(
    index_path: Path,
    images: Sequence[Path],
    place: Placer | None = None,
    *,
    source: str | None = None,
    virtual: VirtualFiles | None = None,
    progress: bool = True,
    image_info: bool = False,
) -> IndexStats:
    """Walk `images`, place their entries with `place`, add the `virtual` files computed from
    the placed ones, and write the index atomically. The images are recorded by their path
    relative to `source` (default: their common directory). With `image_info`, also read
    every file named like an image, whole, and record its width and height from its header
    and the CRC32C of its bytes (see `Index.image_size`, `Index.file_crc`): the one pass that
    reads files' bytes."""
    images = [Path(os.path.abspath(p)) for p in images]
    if not images:
        raise IndexError_("no images to index")
    root = os.path.abspath(source) if source else os.path.commonpath([p.parent for p in images])
    names = [os.path.relpath(p, root) for p in images]
    if any(name.startswith("..") for name in names):
        raise IndexError_(f"images {', '.join(map(str, images))} are not all under {root}")
    placer = place or place_by_image_name(images)
    fingerprints = []
    tree: _TreeBuilder | None = None
    info: dict[tuple[bytes, ...], tuple[int, int, int]] | None = {} if image_info else None
    from tqdm import tqdm  # only when building: keeps mounting light

    with tqdm(
        desc="indexing", unit=" entries", unit_scale=True, disable=None if progress else True
    ) as bar:
        for i, image_path in enumerate(images):
            with open_image(image_path) as image:
                fingerprints.append(asdict(image.fingerprint()))
                if tree is None:
                    tree = _TreeBuilder(image.mkfs_time)
                for n, entry in enumerate(image.walk()):
                    components = placer(i, entry)
                    if components is not None:
                        tree.add(components, i, entry, str(image_path))
                        if info is not None:
                            _record_info(info, components, image, entry)
                    if n % 4096 == 4095:
                        bar.update(4096)
                bar.update(n % 4096 + 1)
    if tree is None:
        raise IndexError_("no images to index")
    if tree.left_out > LEFT_OUT_SAID:
        log.warning("%d more entries left out", tree.left_out - LEFT_OUT_SAID)
    if virtual is not None:
        for components, data in virtual(list(tree.file_paths())).items():
            tree.add_blob(components, data)
    records = [{"name": n, **fp} for n, fp in zip(names, fingerprints, strict=True)]
    return _write(index_path, tree, records, root, info)


#: Endings of the names of image files (compared lower-case): the files the size pass reads,
#: a resized view resizes (views/tree.py) and the shard view makes samples of (views/shards.py).
IMAGE_SUFFIXES = (b".jpeg", b".jpg", b".png")
#: Key prefix of the recorded image information in `blobs` (no file has inode 0): per file,
#: width and height (0, 0: none found) and the CRC32C of its bytes, 12 bytes (indexes built
#: before the CRC was recorded hold 8: width and height).
_SIZE_KEY = _INO.pack(0)
_DIMS = struct.Struct("<II")
_INFO = struct.Struct("<III")
#: The image pass reads a file in pieces of this size; the first holds whatever the header
#: parser reads (imagesize.MOST).
_INFO_CHUNK = 4 << 20


def _record_info(
    info: dict[tuple[bytes, ...], tuple[int, int, int]],
    components: Sequence[bytes],
    image: Image,
    entry: squashfs.Entry,
) -> None:
    """Width, height and CRC32C of a file named like an image: its bytes read once, whole."""
    if entry.kind != squashfs.FILE or not components[-1].lower().endswith(IMAGE_SUFFIXES):
        return
    import google_crc32c

    from imagenetfs.imagesize import MOST, dimensions

    extent = entry.extent
    assert extent is not None

    def read(offset: int) -> bytes:
        want = min(_INFO_CHUNK, extent.size - offset)
        data = image.read(extent, offset, want)
        if len(data) != want:
            raise IndexError_(
                f"{b'/'.join(components).decode(errors='replace')}: {len(data)} bytes at "
                f"{offset} where {want} were listed (its image was cut short?)"
            )
        return data

    assert _INFO_CHUNK >= MOST
    first = read(0)
    crc = google_crc32c.value(first)
    for offset in range(_INFO_CHUNK, extent.size, _INFO_CHUNK):
        crc = google_crc32c.extend(crc, read(offset))
    found = dimensions(lambda offset, size: first[offset : offset + size], extent.size)
    width, height = found or (0, 0)
    info[tuple(components)] = (width, height, crc)


def _remove_killed_builds(index_path: Path) -> None:
    """The temporary files of builds of `index_path` that were killed on this node (their
    process is gone): a SIGKILLed build cannot remove its own. Those of other nodes are left:
    only their node can tell whether the build still runs."""
    prefix = f"{index_path.name}.tmp-"
    with contextlib.suppress(OSError):
        for entry in os.scandir(index_path.parent):
            if not entry.name.startswith(prefix):
                continue
            writer = nodeid.parse(entry.name[len(prefix) :])
            if writer is None or nodeid.running_here(*writer):  # (another node's: yes)
                continue
            log.info("removing %s, left by a killed index build", entry.path)
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _write(
    index_path: Path,
    tree: _TreeBuilder,
    records: list[dict[str, Any]],
    source: str,
    info: dict[tuple[bytes, ...], tuple[int, int, int]] | None = None,
) -> IndexStats:
    tmp = places.temporary_name(index_path)
    try:
        index_path.parent.mkdir(parents=True, exist_ok=True)
        _remove(tmp)
        _remove_killed_builds(index_path)
        env = lmdb.open(
            str(tmp), subdir=False, map_size=_BUILD_MAP_SIZE, max_dbs=5, lock=False, sync=False
        )
    except (OSError, lmdb.Error) as e:
        raise _unwritable(index_path, e) from None
    entries = 0
    try:
        nodes = env.open_db(b"nodes")
        names = env.open_db(b"names")
        blobs = env.open_db(b"blobs")
        lists = env.open_db(b"lists")
        meta = env.open_db(b"meta")
        with env.begin(write=True) as txn:
            node_cursor, name_cursor = txn.cursor(nodes), txn.cursor(names)
            listings: list[tuple[bytes, bytes]] = []  # (key, chunk): 73 MB for full ImageNet
            dirs: dict[int, tuple[bytes, ...]] = {}  # the paths of directories (size pass)
            for ino, parent, name, value, extra in tree.records():
                node_cursor.put(_INO.pack(ino), value, append=True)
                if info is not None:
                    path = (*dirs[parent], name) if ino != ROOT_INO else ()
                    if isinstance(extra, list):
                        dirs[ino] = path
                    elif path in info:
                        txn.put(_SIZE_KEY + _INO.pack(ino), _INFO.pack(*info[path]), db=blobs)
                if isinstance(extra, bytes):
                    for n, start in enumerate(range(0, len(extra), BLOB_CHUNK)):
                        chunk = zlib.compress(extra[start : start + BLOB_CHUNK], 6)
                        txn.put(_INO.pack(ino) + _INO.pack(n), chunk, db=blobs)
                elif extra is not None:
                    for n, chunk in enumerate(_listing_chunks(extra)):
                        listings.append((_INO.pack(ino) + _INO.pack(n), chunk))
                if ino != ROOT_INO:
                    name_cursor.put(_INO.pack(parent) + name, _CHILD.pack(ino), append=True)
                entries += 1
            # The listings last, in their own run of pages (see the module docstring).
            list_cursor = txn.cursor(lists)
            for key, chunk in listings:
                list_cursor.put(key, chunk, append=True)
            stats = IndexStats(entries, tree.files, len(records), tree.bytes)
            txn.put(b"schema", str(SCHEMA_VERSION).encode(), db=meta)
            txn.put(b"images", json.dumps(records).encode(), db=meta)
            txn.put(b"stats", json.dumps(asdict(stats)).encode(), db=meta)
            txn.put(b"source", json.dumps(source).encode(), db=meta)
            txn.put(b"lists", json.dumps("raw").encode(), db=meta)
            if info is not None:
                sized = sum(1 for width, _, _ in info.values() if width)
                txn.put(b"image_sizes", json.dumps(sized).encode(), db=meta)
                txn.put(b"crc32c", json.dumps(len(info)).encode(), db=meta)
        env.sync(True)
    except BaseException as e:
        env.close()
        _remove(tmp)
        if isinstance(e, OSError | lmdb.Error):  # (a full disk, a quota: met while writing)
            raise _unwritable(index_path, e) from None
        raise
    env.close()
    try:
        os.replace(tmp, index_path)
    except OSError as e:
        _remove(tmp)
        raise _unwritable(index_path, e) from None
    return stats


def _unwritable(index_path: Path, e: OSError | lmdb.Error) -> IndexError_:
    """One line for an index that cannot be written: its path, why, and what to do."""
    # (LMDB says "<path>: <strerror>")
    problem = e.strerror or str(e) if isinstance(e, OSError) else str(e).rsplit(": ", 1)[-1]
    return IndexError_(
        f"cannot write the index {index_path}: {problem}; free space there, or give --index "
        "a path you can write"
    )


def _listing_chunks(children: Sequence[_Child]) -> Iterator[bytes]:
    """The `lists` values of one directory (see the module docstring)."""
    for first in range(0, len(children), LIST_CHUNK):
        records, ends, end = [], array.array("H"), 0
        for cookie, (ino, kind, name) in enumerate(children[first : first + LIST_CHUNK], first + 3):
            record = protocol.dirent(ino, cookie, DTYPE[kind], name)
            records.append(record)
            end += len(record)
            ends.append(end)
        yield _LIST_COUNT.pack(len(ends)) + ends.tobytes() + b"".join(records)


def _remove(path: Path) -> None:
    for p in (path, Path(f"{path}-lock")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


# --- querying ---------------------------------------------------------------------------------


class Index:
    """A built index, opened read-only: the query side (`lookup`, `getattr`, `readdir`, `read`).

    Safe to share between threads: each thread keeps its own read transaction (the index never
    changes once built, so a transaction never goes stale), and image reads are `pread`s.
    """

    def __init__(self, path: Path, fd: int, env: lmdb.Environment, meta: dict[str, Any]) -> None:
        self.path = path
        self._fd = fd  # the index file, held open: see `reopen`
        self._attach(env)
        self.built_from = Path(meta["source"])
        self.image_records: list[dict[str, Any]] = meta["images"]
        self.stats = IndexStats(**meta["stats"])
        self._deflated_lists = meta["lists"] != "raw"  # (built before listings were raw)
        #: how many image sizes the index holds (`build(image_info=True)`); None: no pass
        self.image_sizes: int | None = meta["image_sizes"]
        #: how many files' CRC32C it holds (the same pass); None: none (no pass, or a pass
        #: made before it recorded them)
        self.file_crcs: int | None = meta["crc32c"]
        self.source = self.built_from  # where the images are served from (`open_images`)
        self._images: list[Image] = []

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        source: Path | None = None,
        names: Sequence[str] | None = None,
        verify: bool = True,
    ) -> Self:
        """Open `path`; with `verify`, also open its images under `source` (default: where it
        was built from) and check that they are the ones indexed -- and, given the `names` of
        the images the source holds, that there are no others."""
        if not path.is_file():
            raise IndexError_(f"{path}: no index here; build it with: {rebuild_command(path)}")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise IndexError_(f"{path}: cannot open: {e.strerror}") from None
        try:
            env = _open_env(fd)
        except lmdb.Error as e:
            os.close(fd)
            raise IndexError_(f"{path}: not a usable imagenetfs index ({e})") from None
        try:
            # A truncated file would make LMDB touch pages past its end: SIGBUS, not an error.
            needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
            size = os.fstat(fd).st_size
            if size < needed:
                raise ValueError(f"truncated: {size} of {needed} bytes")
            meta = _read_meta(env, path)
            index = cls(path, fd, env, meta)
        except (lmdb.Error, KeyError, TypeError, ValueError) as e:
            env.close()
            os.close(fd)
            raise IndexError_(
                f"{path}: corrupt index ({e}); rebuild it with: {rebuild_command(path, None)}"
            ) from None
        except BaseException:
            env.close()
            os.close(fd)
            raise
        if verify:
            try:
                index.open_images(source or index.built_from, names)
            except BaseException:
                index.close()
                raise
        return index

    def reopen(self) -> None:
        """In a process forked after this index was opened: replace the inherited LMDB
        environment (one must not be used across a fork) by one of this process's own, on the
        same file through the descriptor held since opening -- an index renamed over meanwhile
        is not seen. The images stay as they are, open: what a worker serves never depends on
        paths."""
        self._env.close()
        self._attach(_open_env(self._fd))

    def fileno(self) -> int:
        """The descriptor of the index file, held open since `open` (see `reopen`)."""
        return self._fd

    def _attach(self, env: lmdb.Environment) -> None:
        """Serve from `env`: its databases, and fresh per-thread transactions."""
        self._env = env
        self._nodes = env.open_db(b"nodes", create=False)
        self._names = env.open_db(b"names", create=False)
        self._blobs = env.open_db(b"blobs", create=False)
        self._lists = env.open_db(b"lists", create=False)
        self._local = threading.local()

    def open_images(self, source: Path, names: Sequence[str] | None = None) -> None:
        """Open every image under `source` and refuse to go on if one is not the image indexed
        (or, given the `names` the source holds, if the source has other images)."""
        self.source = source = Path(os.path.abspath(source))
        indexed = [record["name"] for record in self.image_records]
        if names is not None and sorted(names) != sorted(indexed):
            self._stale(
                f"the source {source} holds {', '.join(names)}, the index was built for "
                f"{', '.join(indexed)}"
            )
        for record in self.image_records:
            path = source / record["name"]
            if not path.exists():
                self._stale(f"image {path} is missing")
            try:
                image = open_image(path)
            except ImagenetfsError as e:  # unreadable or not a valid image
                self._stale(str(e))
            self._images.append(image)
            now = asdict(image.fingerprint())
            changed = [k for k, v in now.items() if record.get(k) != v]
            if changed:
                self._stale(f"image {path} is not the one indexed ({', '.join(changed)} differ)")

    def _stale(self, problem: str) -> NoReturn:
        raise IndexError_(
            f"{self.path}: {problem}; rebuild the index with: "
            f"{rebuild_command(self.path, str(self.source))}"
        )

    @property
    def images(self) -> list[Image]:
        """The open images, in index order (an image file -- SquashFS, tar, zip -- can
        `switch` to a local copy)."""
        return self._images

    def close(self) -> None:
        for image in self._images:
            image.close()
        self._images = []
        self._env.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _txn(self) -> lmdb.Transaction[bytes]:
        txn: lmdb.Transaction[bytes] | None = getattr(self._local, "txn", None)
        if txn is None:
            txn = self._local.txn = self._env.begin(buffers=False)
        return txn

    def getattr(self, ino: int) -> Node:
        value: bytes | None = (
            self._txn().get(_INO.pack(ino), db=self._nodes) if 0 < ino < 1 << 32 else None
        )
        if value is None:
            raise NoSuchEntry(ino)
        return _decode(ino, value)

    def lookup(self, parent: int, name: bytes) -> Node:
        if not 0 < parent < 1 << 32:
            raise NoSuchEntry(parent)
        value = self._txn().get(_INO.pack(parent) + name, db=self._names)
        if value is None:
            if self.getattr(parent).kind != DIR:
                raise NotADirectory(parent)
            raise NoSuchEntry(name)
        return self.getattr(_CHILD.unpack(value)[0])

    def entry(self, parent: int, name: bytes) -> tuple[int, int, int, int, int] | None:
        """(ino, mode, nlink, size, mtime) of child `name` of `parent`, read off the stored
        record without a `Node`: `lookup`'s answer on the hot path (a LOOKUP per file opened).
        None when there is no such child -- `lookup` then says why."""
        txn = self._txn()
        child = txn.get(_INO.pack(parent) + name, db=self._names) if 0 < parent < 1 << 32 else None
        if child is None:
            return None
        ino = _CHILD.unpack(child)[0]
        value = txn.get(_INO.pack(ino), db=self._nodes)
        if value is None:
            return None
        kind, _, size, mtime, name_len = _HEAD.unpack_from(value)
        nlink = 2 + _DIR_TAIL.unpack_from(value, _HEAD.size + name_len)[2] if kind == DIR else 1
        return ino, _FORMAT[kind], nlink, size, mtime

    def readdir(self, ino: int, offset: int = 0) -> Iterator[Node]:
        """Children of directory `ino` from position `offset` (a stable cookie) on."""
        for child, value in self._children(ino, offset):
            yield _decode(child, value)

    def entries(self, ino: int, offset: int = 0) -> Iterator[tuple[int, int, bytes]]:
        """(ino, kind, name) of the children from `offset` on: `readdir` without a `Node`
        per entry, for listings that need no attributes (most of a walk's entries)."""
        for child, value in self._children(ino, offset):
            end = _HEAD.size + int.from_bytes(value[_NAME_AT : _HEAD.size], "little")
            yield child, value[0], value[_HEAD.size : end]

    def files(self, ino: int) -> Iterator[tuple[int, int, bytes]]:
        """(ino, size, name) of the regular files among the children of `ino`: `readdir`
        without a `Node` per entry (the shard view walks every file with it)."""
        for child, value in self._children(ino, 0):
            if value[0] == FILE:
                _, _, size, _, name_len = _HEAD.unpack_from(value)
                yield child, size, value[_HEAD.size : _HEAD.size + name_len]

    def listing(self, ino: int, first: int, size: int) -> bytes:
        """READDIR records of the children of `ino` from position `first` on, as many as fit
        in `size` bytes; b"" past the last child."""
        count = self.getattr(ino).children()[1]
        parts: list[bytes] = []
        while first < count:
            n, within = divmod(first, LIST_CHUNK)
            ends, records = self._list_chunk(ino, n)
            if within >= len(ends):
                raise IndexError_(f"{self.path}: corrupt listing of directory {ino}")
            start = ends[within - 1] if within else 0
            stop = bisect.bisect_right(ends, start + size, lo=within)
            if stop == within:  # the next record does not fit
                if not parts:
                    raise InvalidRequest(f"listing buffer of {size} bytes: too small")
                break
            parts.append(records[start : ends[stop - 1]])
            size -= ends[stop - 1] - start
            first += stop - within
        return b"".join(parts)

    def _list_chunk(self, ino: int, n: int) -> tuple[array.array[int], bytes]:
        last: tuple[tuple[int, int], array.array[int], bytes] | None
        last = getattr(self._local, "listing", None)
        if last is not None and last[0] == (ino, n):
            return last[1], last[2]
        stored = self._txn().get(_INO.pack(ino) + _INO.pack(n), db=self._lists)
        if stored is None:
            raise IndexError_(f"{self.path}: directory {ino} has no stored listing {n}")
        try:
            if self._deflated_lists:
                data = zlib.decompressobj(-15).decompress(stored, _LIST_CHUNK_MAX)
            elif len(stored) <= _LIST_CHUNK_MAX:
                data = stored
            else:
                raise ValueError(f"{len(stored)} bytes")
            count = _LIST_COUNT.unpack_from(data)[0]
            ends = array.array("H", data[2 : 2 + 2 * count])
        except (zlib.error, struct.error, ValueError) as e:
            raise IndexError_(f"{self.path}: corrupt listing of directory {ino}: {e}") from None
        records = data[2 + 2 * count :]
        if count > LIST_CHUNK or len(ends) != count or (count and ends[-1] != len(records)):
            raise IndexError_(f"{self.path}: corrupt listing of directory {ino}")
        self._local.listing = ((ino, n), ends, records)
        return ends, records

    def _children(self, ino: int, offset: int) -> Iterator[tuple[int, bytes]]:
        first, count = self.getattr(ino).children()
        start, end = first + max(offset, 0), first + count
        if start >= end:
            return
        # Children are consecutive keys: one cursor walk instead of a lookup each.
        cursor = self._txn().cursor(db=self._nodes)
        if not cursor.set_key(_INO.pack(start)):
            raise NoSuchEntry(start)
        for expected, (key, value) in zip(range(start, end), cursor.iternext(), strict=False):
            if int.from_bytes(key, "big") != expected:  # a gap: only a corrupt index has one
                raise NoSuchEntry(expected)
            yield expected, value

    def _blob_chunk(self, ino: int, n: int) -> bytes:
        """Chunk `n` of virtual file `ino`, decompressed (bounded by the chunk size)."""
        last: tuple[tuple[int, int], bytes] | None = getattr(self._local, "blob", None)
        if last is not None and last[0] == (ino, n):
            return last[1]
        stored = self._txn().get(_INO.pack(ino) + _INO.pack(n), db=self._blobs)
        if stored is None:
            raise NoSuchEntry(ino)
        try:
            data = zlib.decompressobj().decompress(stored, BLOB_CHUNK)
        except zlib.error as e:
            raise IndexError_(f"{self.path}: corrupt virtual file {ino}: {e}") from None
        self._local.blob = ((ino, n), data)
        return data

    def _read_blob(self, node: Node, offset: int, size: int) -> bytes:
        end = min(offset + size, node.size)
        parts = []
        for n in range(offset // BLOB_CHUNK, (end - 1) // BLOB_CHUNK + 1 if end > offset else 0):
            chunk = self._blob_chunk(node.ino, n)
            base = n * BLOB_CHUNK
            parts.append(chunk[max(offset - base, 0) : end - base])
        return b"".join(parts)

    def read(self, node: Node, offset: int, size: int, *, nowait: bool = False) -> bytes:
        """File bytes; with `nowait`, raises `squashfs.WouldBlock` rather than wait (see there)."""
        image, extent = node.extent()
        if image == BLOB_IMAGE:
            return self._read_blob(node, offset, size)
        return self._images[image].read(extent, offset, size, nowait=nowait)

    def advise(self, node: Node) -> None:
        """Ask the kernel to start reading file `node`'s stored bytes (`span`) into the page
        cache without waiting (`POSIX_FADV_WILLNEED`): a hint for bytes about to be read."""
        span = self.span(node)
        if span is not None and span.length > 0:
            with contextlib.suppress(OSError):
                os.posix_fadvise(span.fd, span.offset, span.length, os.POSIX_FADV_WILLNEED)

    def image_size(self, ino: int) -> tuple[int, int] | None:
        """(width, height) of file `ino` as the image pass recorded it (`index --image-info`);
        None when it did not (no pass, or not an image it could read)."""
        if self.image_sizes is None:
            return None
        value = self._txn().get(_SIZE_KEY + _INO.pack(ino), db=self._blobs)
        if value is None or len(value) not in (_DIMS.size, _INFO.size):
            return None
        width, height = _DIMS.unpack_from(value)
        return (width, height) if width else None

    def file_crc(self, ino: int) -> int | None:
        """The CRC32C of file `ino`'s bytes as the image pass recorded it; None when it did
        not (no pass, a pass that recorded none, or a file not named like an image)."""
        if self.file_crcs is None:
            return None
        value = self._txn().get(_SIZE_KEY + _INO.pack(ino), db=self._blobs)
        if value is None or len(value) != _INFO.size:
            return None
        crc: int = _INFO.unpack(value)[2]
        return crc

    def locate(self, node: Node, offset: int, size: int) -> list[squashfs.Run] | None:
        """Where the bytes `read` returns lie in the image files (`SquashImage.locate`); None
        for a virtual file and whatever its image cannot say."""
        image, extent = node.extent()
        if image == BLOB_IMAGE:
            return None
        return self._images[image].locate(extent, offset, size)

    def cache_visible(self, node: Node) -> bool:
        """Whether the filesystem of a file's image says what its page cache holds
        (`squashfs.cache_visible`); True for a virtual file."""
        image = node.extent()[0]
        if image == BLOB_IMAGE:
            return True
        visible = getattr(self._images[image], "cache_visible", None)
        return True if visible is None else bool(visible())

    def span(self, node: Node) -> squashfs.Run | None:
        """Where a file's stored bytes lie in its image (the images' `span`), for read-ahead;
        None for a virtual file and an image that cannot say."""
        image, extent = node.extent()
        if image == BLOB_IMAGE:
            return None
        span = getattr(self._images[image], "span", None)
        return None if span is None else span(extent)


def _open_env(fd: int) -> lmdb.Environment:
    """A read-only LMDB environment on the index file open as `fd` (no lock file: the index
    never changes once built)."""
    return lmdb.open(
        f"/proc/self/fd/{fd}", subdir=False, readonly=True, lock=False, max_dbs=5, readahead=True
    )


def _read_meta(env: lmdb.Environment, path: Path) -> dict[str, Any]:
    meta_db = env.open_db(b"meta", create=False)
    with env.begin(db=meta_db) as txn:
        schema = txn.get(b"schema")
        if schema is None:
            raise KeyError("no schema version")
        if int(schema) != SCHEMA_VERSION:
            raise IndexError_(
                f"{path}: index schema {int(schema)}, this imagenetfs reads schema "
                f"{SCHEMA_VERSION}; rebuild it with: {rebuild_command(path, None)}"
            )
        meta: dict[str, Any] = {
            key: json.loads(txn.get(key.encode()) or b"null")
            for key in ("images", "stats", "source", "lists", "image_sizes", "crc32c")
        }
    return meta


def rebuild_command(index_path: Path, source: str | None = None) -> str:
    """The command that (re)builds an index for `source` -- into the user's own cache when
    `index_path` cannot be written (an admin's index beside read-only data)."""
    src = f"--source {source} " if source else "--source DIR "
    if source and not _writable(index_path):
        index_path = user_index_path(Path(source))
    return f"imagenetfs index {src}--index {index_path} --rebuild"


def _writable(path: Path) -> bool:
    if path.exists():
        return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
    parent = next((p for p in path.parents if p.exists()), None)
    return parent is not None and os.access(parent, os.W_OK | os.X_OK)


def user_index_path(source: Path) -> Path:
    """The index of `source` in the user's own cache (when no other is given or found)."""
    source = source.resolve()
    key = hashlib.blake2b(str(source).encode(), digest_size=6).hexdigest()
    return places.user_cache_dir() / f"index-{source.name or 'root'}-{key}.lmdb"
