"""An unpacked directory tree as an "image": the cluster's "Direct" form, or Kaggle's ILSVRC/.

`DirImage` offers what the index builder and the index need of a `squashfs.SquashImage` --
`walk()`, `read()`, `locate()` (always None: never spliced), `fingerprint()`, `mkfs_time`,
`close()` -- so an unpacked tree is indexed once like an image, and afterwards every lookup,
stat and listing comes from LMDB: the shared filesystem only sees the `open` and `pread` of
the files actually read.

A file's `Extent` carries its path relative to the tree's root in `block_sizes` (a directory
has no blocks); `read()` opens that path under the root with `O_NOFOLLOW` (relative to the
root's descriptor) and `pread`s it. The descriptors of the last `OPEN_FILES` files read stay
open (an LRU), so that the several reads of one file, and an epoch's second pass over a small
tree, cost the shared filesystem one `open` per file, not one per read. Symlinks are kept as
symlinks, devices, fifos and sockets are left out, as for images.

Staleness: the fingerprint is a digest of the root's entries (names and types: the class
directories of `train/`) -- one listing, cheap to check at every mount, and the same for a
copy of the tree or the tree reached through another path (no mtimes, inode or device
numbers, which a copy does not keep). A file added, removed or changed inside a class
directory goes unnoticed until `imagenetfs index --rebuild`: an unpacked tree is mutable,
unlike an image.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from imagenetfs import archive, squashfs
from imagenetfs.errors import CorruptImageError, ImagenetfsError

_TYPES = {
    stat.S_IFDIR: squashfs.DIR,
    stat.S_IFREG: squashfs.FILE,
    stat.S_IFLNK: squashfs.SYMLINK,
}
MAX_DEPTH = 64
#: Descriptors of recently read files kept open (each costs the process one descriptor).
OPEN_FILES = 64


@dataclass(frozen=True)
class DirFingerprint:
    entries: int  # in the root
    names: str  # digest of the root's entries' names and types, in sorted order


class DirImage:
    """A directory tree read like an image."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise ImagenetfsError(f"{self.path}: cannot open: {e.strerror}") from None
        self.mkfs_time = int(os.fstat(self._fd).st_mtime)
        self._lock = threading.Lock()
        # relative path -> [descriptor, readers using it now]; a descriptor evicted while in
        # use is closed by its last reader, so no read ever meets a closed or reused number
        self._open: OrderedDict[bytes, list[int]] = OrderedDict()

    def close(self) -> None:
        with self._lock:
            for fd, _ in self._open.values():
                os.close(fd)
            self._open.clear()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def fingerprint(self) -> DirFingerprint:
        with os.scandir(self._fd) as it:
            entries = sorted((os.fsencode(e.name), e.is_dir(follow_symlinks=False)) for e in it)
        digest = hashlib.blake2b(digest_size=16)
        for name, is_dir in entries:
            digest.update(b"%d %s\0" % (is_dir, name))
        return DirFingerprint(len(entries), digest.hexdigest())

    def walk(self) -> Iterator[squashfs.Entry]:
        """The root, then each directory's children in sorted order, directories depth-first."""
        root = os.fstat(self._fd)
        top = self._entry(b"", b"", root.st_ino, root)
        assert top is not None  # a directory
        yield top
        stack: list[tuple[bytes, int, int]] = [(b"", root.st_ino, 0)]
        while stack:
            prefix, parent, depth = stack.pop()
            if depth > MAX_DEPTH:
                raise CorruptImageError(f"{self.path}: deeper than {MAX_DEPTH} levels")
            where = os.path.join(self.path, os.fsdecode(prefix)) if prefix else self.path
            try:
                with os.scandir(os.fsencode(where)) as it:
                    names = sorted(e.name for e in it)
            except OSError as e:
                raise ImagenetfsError(f"{where}: cannot list: {e.strerror}") from None
            subdirs = []
            for name in names:
                path = prefix + b"/" + name if prefix else name
                st = os.lstat(os.path.join(self.path, os.fsdecode(path)))
                entry = self._entry(path, name, parent, st)
                if entry is None:
                    continue
                yield entry
                if entry.kind == squashfs.DIR:
                    subdirs.append((path, st.st_ino, depth + 1))
            stack.extend(reversed(subdirs))

    def _entry(
        self, path: bytes, name: bytes, parent: int, st: os.stat_result
    ) -> squashfs.Entry | None:
        kind = _TYPES.get(stat.S_IFMT(st.st_mode))
        if kind is None:
            return None
        target = None
        extent = None
        if kind == squashfs.SYMLINK:
            target = os.readlink(os.path.join(self.path, os.fsdecode(path)).encode())
        elif kind == squashfs.FILE:
            extent = squashfs.Extent(st.st_size, 0, path, None, 0, 0)
        return squashfs.Entry(
            path, name, parent, st.st_ino, kind, st.st_mode, st.st_uid, st.st_gid,
            int(st.st_mtime), st.st_nlink, st.st_size, target, 0, extent,
        )  # fmt: skip

    def read(
        self, extent: squashfs.Extent, offset: int, size: int, *, nowait: bool = False
    ) -> bytes:
        """Bytes of the file whose relative path the extent carries."""
        if offset < 0 or size < 0:
            raise ValueError("offset and size must not be negative")
        if nowait:  # an open() on a shared filesystem can always block
            raise squashfs.WouldBlock(0)
        relative = extent.block_sizes
        entry = self._acquire(relative)
        try:
            return os.pread(entry[0], size, offset)
        finally:
            self._release(relative, entry)

    def locate(self, extent: squashfs.Extent, offset: int, size: int) -> list[squashfs.Run] | None:
        """None: a file's descriptor may be closed (evicted) once its read is done, so its
        bytes are always read, never spliced (see `squashfs.SquashImage.locate`)."""
        return None

    def _acquire(self, relative: bytes) -> list[int]:
        """The open descriptor of a file (opened now if need be), marked in use."""
        with self._lock:
            entry = self._open.get(relative)
            if entry is not None:
                self._open.move_to_end(relative)
                entry[1] += 1
                return entry
        if relative.startswith(b"/") or b"\0" in relative or b".." in relative.split(b"/"):
            raise CorruptImageError(f"{self.path}: bad path {relative!r} in the index")
        try:
            fd = os.open(relative, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._fd)
        except OSError as e:
            raise ImagenetfsError(f"{self.path}/{os.fsdecode(relative)}: {e.strerror}") from None
        entry = [fd, 1]
        with self._lock:
            if relative in self._open:  # opened by another thread meanwhile: keep one
                self._open[relative][1] += 1
                os.close(fd)
                return self._open[relative]
            self._open[relative] = entry
            while len(self._open) > OPEN_FILES:
                _, evicted = self._open.popitem(last=False)
                evicted[1] -= 1  # the cache's own reference
                if evicted[1] < 0:
                    os.close(evicted[0])
        return entry

    def _release(self, relative: bytes, entry: list[int]) -> None:
        with self._lock:
            entry[1] -= 1
            if entry[1] < 0:  # evicted while in use, and this was the last reader
                os.close(entry[0])

    def open_files(self) -> int:
        """How many file descriptors are kept open (bounded by `OPEN_FILES`)."""
        with self._lock:
            return len(self._open)


#: What serves an image's files: a SquashFS image, an unpacked tree, a tar or a zip.
Image = squashfs.SquashImage | DirImage | archive.TarImage | archive.ZipImage


def open_image(path: str | os.PathLike[str]) -> Image:
    """A SquashFS image file, an unpacked directory tree, a tar or a zip file, whichever
    `path` is (files are told apart by their bytes, not their names)."""
    if Path(path).is_dir():
        return DirImage(path)
    kind = archive.kind_of(path)
    if kind == "tar":
        return archive.TarImage(path)
    if kind == "zip":
        return archive.ZipImage(path)
    return squashfs.SquashImage(path)
