"""The pyfuse3 adapter (`mount --workers 0`): pyfuse3 `Operations` over the operation core.

Thin by design: each handler calls one `ops.Core` operation and converts -- attributes to
`EntryAttributes`, listings to `readdir_reply` calls, errors to `FUSEError(core.errno_for(...))`
-- and runs the blocking rest of an operation (`ops.Blocked`) in a worker thread, bounded by a
`CapacityLimiter`, so that the trio loop, which serves every other request, never waits. A
resize of one file is run once at a time: later requests for it wait on a `trio.Event` and then
ask the core again (see ops.py).

A READLINK reply the kernel would refuse (a target of 4,096 bytes or more, from an index built
before such symlinks were left out) is not sent: libfuse would say so twice and pyfuse3 once,
uncounted; it fails with EIO, said once and counted by the core's rule (the workers answer a
refused reply the same way, wire.py).

No handle table: `open` answers the file's inode as its handle (`read` gets the handle, not the
inode), so an open file costs nothing and `release` has nothing to drop. Listings are
READDIRPLUS (pyfuse3 always asks for it), each entry with attributes. A READ is timed for the
core's latency histogram (ops.py) from the entry of `read` to its bytes being ready, the wait
for a thread and the work in it included.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pyfuse3
import trio

from imagenetfs.errors import ReplyRefused
from imagenetfs.index import MAX_TARGET
from imagenetfs.ops import BLOCK_SIZE, Attributes, Blocked, Core


class Operations(pyfuse3.Operations):
    """pyfuse3's view of the core."""

    enable_writeback_cache = False
    enable_acl = False
    #: Attached in the serving process (supervisor.py), before pyfuse3 calls any handler: the
    #: object given to `pyfuse3.init` is made before the daemon forks.
    core: Core

    def __init__(self, *, read_threads: int = 8) -> None:
        super().__init__()
        self.on_init: Callable[[], None] | None = None  # called once FUSE_INIT is answered
        self._limiter = trio.CapacityLimiter(read_threads)
        self._pending: dict[int, trio.Event] = {}  # key -> done, for work run once at a time

    @contextmanager
    def _errors(self, what: str, subject: object) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            raise pyfuse3.FUSEError(self.core.errno_for(exc, what, subject)) from None

    async def _call(self, what: str, operation: Callable[..., Any], *args: Any) -> Any:
        """`operation(*args)`, and the blocking rest of it, if any, in a thread."""
        with self._errors(what, args):
            while True:
                try:
                    return operation(*args)
                except Blocked as blocked:
                    if blocked.key is None:
                        return await self._in_thread(blocked.work)
                    pending = self._pending.get(blocked.key)
                    if pending is not None:  # another request does it: wait, then ask again
                        await pending.wait()
                        continue
                    done = self._pending[blocked.key] = trio.Event()
                    try:
                        return await self._in_thread(blocked.work)
                    finally:
                        del self._pending[blocked.key]
                        done.set()

    async def _in_thread(self, work: Callable[[], Any]) -> Any:
        return await trio.to_thread.run_sync(work, limiter=self._limiter)

    @staticmethod
    def _entry(attrs: Attributes) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = attrs.ino
        entry.generation = 0
        entry.entry_timeout = entry.attr_timeout = attrs.timeout
        entry.st_mode = attrs.mode
        entry.st_nlink = attrs.nlink
        entry.st_uid = attrs.uid
        entry.st_gid = attrs.gid
        entry.st_rdev = 0
        entry.st_size = attrs.size
        entry.st_blksize = BLOCK_SIZE
        entry.st_blocks = attrs.blocks
        entry.st_atime_ns = entry.st_mtime_ns = entry.st_ctime_ns = attrs.mtime * 1_000_000_000
        return entry

    # --- lifecycle -------------------------------------------------------------------------

    def init(self) -> None:
        if self.on_init is not None:
            self.on_init()

    # --- metadata --------------------------------------------------------------------------

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._entry(await self._call("lookup", self.core.lookup, parent_inode, name))

    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        return self._entry(await self._call("getattr", self.core.getattr, inode))

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        with self._errors("readlink", inode):
            target = self.core.readlink(inode)
            if len(target) > MAX_TARGET:  # (an index built before such targets were left out)
                raise ReplyRefused(
                    f"the kernel would refuse a reply of {16 + len(target)} bytes (a target "
                    f"of {len(target)}: it takes at most {MAX_TARGET})"
                )
            return target

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        with self._errors("opendir", inode):
            self.core.opendir(inode)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        listing = await self._call("readdir", self.core.readdir, fh, start_id)
        with self._errors("readdir", (fh, start_id)):
            for entry in listing:
                attrs = self._entry(self.core.listed_attributes(entry))
                if not pyfuse3.readdir_reply(token, entry.name, attrs, entry.cookie):
                    break

    async def releasedir(self, fh: int) -> None:
        return None

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        stats = self.core.statfs()
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = stats.block_size
        data.f_blocks = stats.blocks
        data.f_bfree = data.f_bavail = 0
        data.f_files = stats.files
        data.f_ffree = data.f_favail = 0
        data.f_namemax = stats.name_max
        return data

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        with self._errors("access", inode):
            self.core.access(inode, mode)
        return True

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        with self._errors("getxattr", inode):
            return self.core.getxattr(inode, name)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        with self._errors("listxattr", inode):
            return self.core.listxattr(inode)

    # --- data ------------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        await self._call("open", self.core.open, inode, flags)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        started = time.perf_counter_ns()
        try:
            data: bytes = await self._call("read", self.core.read, fh, off, size)
        finally:
            self.core.read_served(started)
        return data

    async def release(self, fh: int) -> None:
        return None
