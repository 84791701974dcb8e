"""FUSE glue: pyfuse3 `Operations` over the index. Thin by design.

Each handler translates one request into `Index` queries and nothing else; the tree, its
numbering and its bytes all live in the index and the images. What this module owns:

- one attribute builder (`_attributes`): every `EntryAttributes` comes from it, with the long
  timeouts an immutable tree deserves, the mounting user as owner, read-only modes;
- one errno table (`_ERRNO`): domain exceptions become `FUSEError`s at this boundary, and an
  unexpected exception is logged once and answered with EIO (the daemon keeps serving);
- open handles: `open` stores the file's `Node` under a fresh handle, `release` drops it, so
  memory stays flat however many files an epoch opens;
- reads are tried inline first, where they cannot block: bytes that are in the page cache
  (`RWF_NOWAIT`) or in the block cache, no decompression. Everything else -- a cold `pread`,
  a decompression -- runs in a worker thread (`trio.to_thread`, bounded by a
  `CapacityLimiter`), so the event loop, which serves every other request, never stalls. (A
  thread hop on every read halves throughput, measured; see DESIGN.md.)
- counters (`statistics()`) for `imagenetfs status`.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from imagenetfs.errors import CorruptImageError, ImagenetfsError
from imagenetfs.index import DIR, FILE, SYMLINK, Node, NoSuchEntry, NotADirectory
from imagenetfs.resize import ResizeError
from imagenetfs.squashfs import WouldBlock
from imagenetfs.views import Tree

log = logging.getLogger(__name__)

#: The tree never changes while mounted: let the kernel cache entries and attributes "forever".
TIMEOUT = 365 * 86400.0
BLOCK_SIZE = 4096

_ERRNO: dict[type[BaseException], int] = {
    NoSuchEntry: errno.ENOENT,
    NotADirectory: errno.ENOTDIR,
    CorruptImageError: errno.EIO,
    ResizeError: errno.EIO,
    ImagenetfsError: errno.EIO,
}

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


@dataclass
class Counters:
    lookups: int = 0
    getattrs: int = 0
    readdirs: int = 0
    opens: int = 0
    reads: int = 0
    inline_reads: int = 0
    bytes_read: int = 0
    errors: int = 0
    open_handles: int = 0


class Operations(pyfuse3.Operations):
    """The read-only tree of one index."""

    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, tree: Tree, *, read_threads: int = 8) -> None:
        super().__init__()
        self.tree = tree
        self.index = tree.index
        self.uid, self.gid = os.getuid(), os.getgid()
        # open handle -> (file, its resized bytes when it is in a resized view)
        self._handles: dict[int, tuple[Node, bytes | None]] = {}
        self._resizing: dict[int, trio.Event] = {}
        self._recent: dict[int, bytes] = {}  # last few resized files, for concurrent openers
        self.cache_settings: tuple[Path, int] | None = None  # resize cache, opened when serving
        self._next_fh = 1
        self._limiter = trio.CapacityLimiter(read_threads)
        self.counters = Counters()
        self.on_init: Callable[[], None] | None = None

    def statistics(self) -> dict[str, Any]:
        self.counters.open_handles = len(self._handles)
        stats = {"fs": vars(self.counters).copy(), "index": vars(self.index.stats).copy()}
        if self.tree.cache is not None:
            stats["resize_cache"] = self.tree.cache.statistics()
        return stats

    # --- the boundary: domain errors to errno, once --------------------------------------

    @contextmanager
    def _errors(self, what: str, ident: object) -> Iterator[None]:
        try:
            yield
        except pyfuse3.FUSEError:
            self.counters.errors += 1
            raise
        except Exception as exc:
            self.counters.errors += 1
            code = next((e for t, e in _ERRNO.items() if isinstance(exc, t)), None)
            if code is None:
                log.exception("%s(%r) failed", what, ident)
                code = errno.EIO
            elif code == errno.EIO:
                log.error("%s(%r): %s", what, ident, exc)
            raise pyfuse3.FUSEError(code) from None

    def _attributes(self, node: Node, *, cacheable: bool = True) -> pyfuse3.EntryAttributes:
        """The one attribute builder. `cacheable=False` for a resized file whose size is not
        known yet: the kernel must ask again (GETATTR) before it relies on the size."""
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.ino
        attr.generation = 0
        attr.entry_timeout = TIMEOUT if cacheable else 0
        attr.attr_timeout = TIMEOUT if cacheable else 0
        attr.st_mode = node.mode
        attr.st_nlink = node.nlink
        attr.st_uid = self.uid
        attr.st_gid = self.gid
        attr.st_rdev = 0
        attr.st_size = node.size
        attr.st_blksize = BLOCK_SIZE
        attr.st_blocks = (node.size + 511) // 512
        ns = node.mtime * 1_000_000_000
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = ns
        return attr

    # --- lifecycle -------------------------------------------------------------------------

    def init(self) -> None:
        if self.on_init is not None:
            self.on_init()

    # --- metadata --------------------------------------------------------------------------

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self.counters.lookups += 1
        with self._errors("lookup", (parent_inode, name)):
            if name == b".":
                node = self.tree.getattr(parent_inode)
            elif name == b"..":
                node = self.tree.getattr(self.tree.getattr(parent_inode).parent)
            else:
                node = self.tree.lookup(parent_inode, name)
            return self._attributes(await self._sized(node))

    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        self.counters.getattrs += 1
        with self._errors("getattr", inode):
            return self._attributes(await self._sized(self.tree.getattr(inode)))

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        with self._errors("readlink", inode):
            node = self.tree.getattr(inode)
            if node.kind != SYMLINK:
                raise pyfuse3.FUSEError(errno.EINVAL)
            return node.target

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        with self._errors("opendir", inode):
            if self.tree.getattr(inode).kind != DIR:
                raise NotADirectory(inode)
            return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """Entries `.`, `..`, then the children; cookie k = "resume after the k-th entry"."""
        self.counters.readdirs += 1
        with self._errors("readdir", fh):
            directory = self.tree.getattr(fh)
            if start_id < 1 and not pyfuse3.readdir_reply(
                token, b".", self._attributes(directory), 1
            ):
                return
            if start_id < 2:
                parent = self.tree.getattr(directory.parent)
                if not pyfuse3.readdir_reply(token, b"..", self._attributes(parent), 2):
                    return
            children = self.tree.readdir(fh, max(start_id - 2, 0))
            for cookie, node in enumerate(children, max(start_id, 2) + 1):
                size = self.tree.known_size(node)  # listing resizes nothing
                if size is not None and size != node.size:
                    node = replace(node, size=size)
                attr = self._attributes(node, cacheable=size is not None)
                if not pyfuse3.readdir_reply(token, node.name, attr, cookie):
                    break

    async def releasedir(self, fh: int) -> None:
        return None

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        stats = self.index.stats
        data.f_bsize = data.f_frsize = BLOCK_SIZE
        data.f_blocks = (stats.bytes + BLOCK_SIZE - 1) // BLOCK_SIZE
        data.f_bfree = data.f_bavail = 0
        data.f_files = stats.entries
        data.f_ffree = data.f_favail = 0
        data.f_namemax = 255
        return data

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        with self._errors("access", inode):
            self.tree.getattr(inode)
        if mode & os.W_OK:
            raise pyfuse3.FUSEError(errno.EROFS)
        return True

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        """No extended attributes, as on squashfs, ext4 and squashfuse: ENODATA."""
        with self._errors("getxattr", inode):
            self.tree.getattr(inode)
        raise pyfuse3.FUSEError(errno.ENODATA)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        """An empty list (ENOTSUP would make `tar --xattrs` warn on every file)."""
        with self._errors("listxattr", inode):
            self.tree.getattr(inode)
        return []

    # --- data ------------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        self.counters.opens += 1
        if flags & _WRITE_FLAGS:
            raise pyfuse3.FUSEError(errno.EROFS)
        with self._errors("open", inode):
            node = self.tree.getattr(inode)
            if node.kind != FILE:
                raise pyfuse3.FUSEError(errno.EISDIR if node.kind == DIR else errno.EINVAL)
            data = await self._resized(node) if self.tree.spec_of(node) else None
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = (node, data)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        self.counters.reads += 1
        handle = self._handles.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        node, resized = handle
        if resized is not None:
            self.counters.bytes_read += min(size, max(len(resized) - off, 0))
            return resized[off : off + size]
        if off >= node.size or size <= 0:
            return b""
        with self._errors("read", (node.ino, off, size)):
            try:  # in the page cache and needing no decompression: serve it inline
                data = self.tree.read(node, off, size, nowait=True)
                self.counters.inline_reads += 1
            except WouldBlock:
                data = await trio.to_thread.run_sync(
                    self.tree.read, node, off, size, limiter=self._limiter
                )
        self.counters.bytes_read += len(data)
        return data

    async def release(self, fh: int) -> None:
        self._handles.pop(fh, None)

    # --- resized views ---------------------------------------------------------------------

    async def _sized(self, node: Node) -> Node:
        """`node` with its served size: for a resized file, resize it if nobody has yet."""
        if self.tree.spec_of(node) is None:
            return node
        size = self.tree.known_size(node)
        if size is None:
            size = len(await self._resized(node))
        return replace(node, size=size)

    async def _resized(self, node: Node) -> bytes:
        """The resized bytes, in a worker thread; concurrent requests share one resize."""
        while (pending := self._resizing.get(node.ino)) is not None:
            await pending.wait()
        if (recent := self._recent.get(node.ino)) is not None:
            return recent
        done = self._resizing[node.ino] = trio.Event()
        try:
            data: bytes = await trio.to_thread.run_sync(
                self.tree.resized_bytes, node, limiter=self._limiter
            )
            self._recent[node.ino] = data
            if len(self._recent) > 64:
                del self._recent[next(iter(self._recent))]
        finally:
            del self._resizing[node.ino]
            done.set()
        return data
