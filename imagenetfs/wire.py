"""Worker processes that serve one mount in the FUSE wire protocol (the default way to serve).

One pyfuse3 daemon tops out at one core (~30 µs of Python per request). To use more, pyfuse3
only mounts; the mounting process answers FUSE_INIT itself and forks workers. Each worker
opens `/dev/fuse`, clones the session onto it (`FUSE_DEV_IOC_CLONE`: the kernel then hands
requests to whichever clone reads first, and aborts only a dead worker's own requests), and
answers requests with a plain read/write loop over the same `views.Tree` the pyfuse3 adapter
(`--workers 0`) uses. Measured on this kind of machine: ~6 µs per request instead of ~30.

Workers are stateless between requests. OPEN is answered ENOSYS once a request has passed the
checks: the kernel then stops sending it (and RELEASE) for the rest of the mount, keeps file
pages cached across opens, and READ names the file by its inode number. The mounting process
answers FUSE_INIT itself (`answer_init`) and leaves out READDIRPLUS: listings are plain
READDIR records (name, type, inode number), about four times as many per request, and the
kernel instantiates no inode per listed entry -- the bulk of a walk's cost. `os.walk` and
`scandir` need only the type; a stat that follows costs one LOOKUP. The records of base-tree
listings are stored in the index ready to send (`lists`); elsewhere they are built from the
index records without a `Node` per entry (and, should READDIRPLUS come, with nodeid 0: "no
attributes"). Otherwise replies mirror `fs.Operations` (same attributes, timeouts and
errnos); see docs/SEMANTICS.md.

Counters for `imagenetfs status` live in a `Board`, one slot of shared memory per worker that
only that worker writes and the parent sums. Concurrent requests for one resized file in two
workers resize it once: the second waits on a POSIX record lock (byte `ino % LOCK_STRIPES` of a
shared file; the kernel drops it if its holder dies) and then finds the result in the resize
cache. A worker exits when the mount goes away (ENODEV) or on SIGTERM; the parent supervises,
restarts a worker that died, and unmounts at the end.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import struct
from collections import OrderedDict
from dataclasses import fields, replace
from typing import Any

from imagenetfs.errors import ImagenetfsError
from imagenetfs.fs import Counters
from imagenetfs.index import DIR, FILE, SYMLINK, Node, NoSuchEntry, NotADirectory, dirent
from imagenetfs.views import Tree

log = logging.getLogger(__name__)

FUSE_DEV_IOC_CLONE = 0x8004E500
BUFFER = (1 << 20) + 4096
TIMEOUT = 365 * 86400

# Opcodes (linux/fuse.h)
LOOKUP, FORGET, GETATTR, READLINK = 1, 2, 3, 5
OPEN, READ, STATFS, RELEASE = 14, 15, 17, 18
GETXATTR, LISTXATTR, FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR = 22, 23, 25, 26, 27, 28, 29
ACCESS, INTERRUPT, DESTROY, IOCTL, BATCH_FORGET, READDIRPLUS = 34, 36, 38, 39, 42, 44
NO_REPLY = {FORGET, INTERRUPT, BATCH_FORGET}
WRITES = {4, 6, 8, 9, 10, 11, 12, 13, 16, 21, 24, 35, 43, 45}  # setattr, symlink, ... rename2

IN_HEADER = struct.Struct("<IIQQIIIHH")
OUT_HEADER = struct.Struct("<IiQ")
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
ENTRY = struct.Struct("<QQQQII")
ATTR_OUT = struct.Struct("<QII")
OPEN_OUT = struct.Struct("<QIi")
READ_IN = struct.Struct("<QQIIQII")
STATFS_OUT = struct.Struct("<QQQQQIIII24x")
NO_ATTRIBUTES = bytes(ENTRY.size + ATTR.size)  # an entry_out with nodeid 0: "no attributes"

#: Slot layout of the `Board`: the pyfuse3 adapter's counters, then the resize cache's.
FS_COUNTERS = tuple(f.name for f in fields(Counters))
CACHE_COUNTERS = ("hits", "misses", "stores", "evictions", "failures")
_AT = {name: n for n, name in enumerate(FS_COUNTERS)}
LOOKUPS, GETATTRS, READDIRS, OPENS = _AT["lookups"], _AT["getattrs"], _AT["readdirs"], _AT["opens"]
READS, BYTES_READ, ERRORS = _AT["reads"], _AT["bytes_read"], _AT["errors"]
LOCK_STRIPES = 4096
#: Error replies that are regular answers, not failures: no open needed, no ioctls, no xattrs.
ANSWERS = {errno.ENOSYS, errno.ENOTTY, errno.ENODATA}


class Board:
    """Counters of N workers in one shared anonymous mapping: slot n belongs to worker n."""

    def __init__(self, workers: int) -> None:
        self.slot_size = 8 * (len(FS_COUNTERS) + len(CACHE_COUNTERS))
        self.workers = workers
        self._map = mmap.mmap(-1, workers * self.slot_size)

    def slot(self, n: int) -> memoryview:
        return memoryview(self._map)[n * self.slot_size : (n + 1) * self.slot_size].cast("Q")

    def totals(self) -> dict[str, dict[str, Any]]:
        """{"fs": summed counters, "resize_cache": summed cache counters}."""
        sums = [0] * (len(FS_COUNTERS) + len(CACHE_COUNTERS))
        for n in range(self.workers):
            for i, value in enumerate(self.slot(n)):
                sums[i] += value
        fs = dict(zip(FS_COUNTERS, sums, strict=False))
        cache = dict(zip(CACHE_COUNTERS, sums[len(FS_COUNTERS) :], strict=True))
        return {"fs": fs, "resize_cache": cache}


# FUSE_INIT: the kernel's offer (fuse_init_in) and our answer (fuse_init_out, 64 bytes)
INIT_IN = struct.Struct("<IIII")  # major, minor, max_readahead, flags
INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")
MINOR = 31  # the protocol revision spoken here (what libfuse 3.14 answers)
ASYNC_READ, ATOMIC_O_TRUNC, EXPORT_SUPPORT, BIG_WRITES = 1 << 0, 1 << 3, 1 << 4, 1 << 5
AUTO_INVAL_DATA, ASYNC_DIO, PARALLEL_DIROPS, MAX_PAGES = 1 << 12, 1 << 15, 1 << 18, 1 << 22
#: What we ask for: libfuse's choice for pyfuse3 without DO_READDIRPLUS (listings are plain
#: READDIR, ~4x more entries per request and no inode per listed entry) and with
#: PARALLEL_DIROPS (the workers are stateless: lookups in one directory need not queue).
WANTED = ASYNC_READ | ATOMIC_O_TRUNC | EXPORT_SUPPORT | BIG_WRITES | AUTO_INVAL_DATA
WANTED |= ASYNC_DIO | PARALLEL_DIROPS | MAX_PAGES
MAX_WRITE = 1 << 20


def answer_init(fd: int) -> None:
    """Read the kernel's FUSE_INIT from session `fd` and accept it, instead of libfuse."""
    request = os.read(fd, BUFFER)  # (EINTR is retried by Python itself)
    _, opcode, unique, *_ = IN_HEADER.unpack_from(request)
    if opcode != INIT:
        raise ImagenetfsError(f"expected FUSE_INIT from the kernel, got opcode {opcode}")
    major, minor, readahead, offered = INIT_IN.unpack_from(request, IN_HEADER.size)
    if major != 7 or minor < 23:
        os.write(fd, OUT_HEADER.pack(16, -errno.EPROTO, unique))
        raise ImagenetfsError(f"kernel FUSE protocol {major}.{minor}: 7.23 or later needed")
    flags = WANTED & offered
    reply = INIT_OUT.pack(7, min(minor, MINOR), readahead, flags, 0, 0, MAX_WRITE, 1, 256, 0, 0)
    os.write(fd, OUT_HEADER.pack(16 + len(reply), 0, unique) + reply)


def session_fd() -> int:
    """The descriptor of this process's /dev/fuse session (the one pyfuse3 opened)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                return int(name)
        except OSError:
            continue
    raise ImagenetfsError("no /dev/fuse session to clone")


class Worker:
    """Serves requests from a cloned /dev/fuse descriptor until the mount goes away."""

    def __init__(
        self,
        tree: Tree,
        session: int,
        uid: int,
        gid: int,
        *,
        counters: memoryview | None = None,
        lock_fd: int | None = None,
    ) -> None:
        self.tree = tree
        self.uid, self.gid = uid, gid
        self.fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        fcntl.ioctl(self.fd, FUSE_DEV_IOC_CLONE, struct.pack("I", session))
        self._resized: OrderedDict[int, bytes] = OrderedDict()
        size = len(FS_COUNTERS) + len(CACHE_COUNTERS)
        self.counters = memoryview(bytearray(8 * size)).cast("Q") if counters is None else counters
        # a restarted worker goes on from its slot's counts; its cache object counts from 0
        self._cache_base = list(self.counters[len(FS_COUNTERS) :])
        self.lock_fd = lock_fd

    def run(self) -> None:
        buffer = bytearray(BUFFER)  # one buffer for every request: no 1 MiB allocation each
        view = memoryview(buffer)
        while True:
            try:
                request = view[: os.readv(self.fd, [buffer])]
            except OSError as e:
                if e.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue
                if e.errno == errno.ENODEV:  # unmounted
                    return
                raise
            self.handle(request)

    def handle(self, request: memoryview) -> None:
        _, opcode, unique, nodeid, *_ = IN_HEADER.unpack_from(request)
        if opcode in NO_REPLY:
            return
        body = memoryview(request)[IN_HEADER.size :]
        try:
            reply = self.dispatch(opcode, nodeid, body)
        except NoSuchEntry:
            return self.error(unique, errno.ENOENT)
        except NotADirectory:
            return self.error(unique, errno.ENOTDIR)
        except OSError as e:
            if e.errno not in ANSWERS:
                self.counters[ERRORS] += 1
            return self.error(unique, e.errno or errno.EIO)
        except ImagenetfsError as e:
            self.counters[ERRORS] += 1
            log.error("opcode %d on %d: %s", opcode, nodeid, e)
            return self.error(unique, errno.EIO)
        except Exception:
            self.counters[ERRORS] += 1
            log.exception("opcode %d on %d failed", opcode, nodeid)
            return self.error(unique, errno.EIO)
        self.send(unique, 0, reply)
        if opcode == DESTROY:
            raise SystemExit(0)

    def send(self, unique: int, error: int, payload: bytes = b"") -> None:
        try:
            os.write(self.fd, OUT_HEADER.pack(16 + len(payload), error, unique) + payload)
        except OSError as e:
            if e.errno != errno.ENOENT:  # the request was interrupted meanwhile: fine
                raise

    def error(self, unique: int, code: int) -> None:
        self.send(unique, -code)

    # --- requests --------------------------------------------------------------------------

    def dispatch(self, opcode: int, nodeid: int, body: memoryview) -> bytes:
        tree = self.tree
        counters = self.counters
        if opcode == READ:
            counters[READS] += 1
            offset, size = READ_IN.unpack_from(body)[1:3]
            node = tree.getattr(nodeid)  # no OPEN (see above): the file is the request's node
            if tree.spec_of(node) is not None:
                data = self.resized(node)[offset : offset + size]
            elif offset >= node.size:
                return b""
            else:
                data = tree.read(node, offset, size)
            counters[BYTES_READ] += len(data)
            return data
        if opcode == LOOKUP:
            counters[LOOKUPS] += 1
            name = bytes(body).split(b"\0", 1)[0]
            if name == b".":
                node = tree.getattr(nodeid)
            elif name == b"..":
                node = tree.getattr(tree.getattr(nodeid).parent)
            else:
                node = tree.lookup(nodeid, name)
            return self.entry(self.sized(node))
        if opcode == GETATTR:
            counters[GETATTRS] += 1
            return ATTR_OUT.pack(TIMEOUT, 0, 0) + self.attr(self.sized(tree.getattr(nodeid)))
        if opcode in (OPEN, OPENDIR):
            counters[OPENS] += opcode == OPEN
            flags = struct.unpack_from("<I", body)[0]
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT):
                raise OSError(errno.EROFS, "read-only")
            node = tree.getattr(nodeid)
            if opcode == OPENDIR and node.kind != DIR:
                raise NotADirectory(nodeid)
            if opcode == OPEN and node.kind != FILE:
                raise OSError(errno.EISDIR if node.kind == DIR else errno.EINVAL, "not a file")
            if opcode == OPENDIR:
                # A handle without FOPEN_CACHE_DIR: the kernel's listing cache made the first
                # walk of ImageNet ~20% slower (2.1 s, not 1.8) to make a second one faster.
                return OPEN_OUT.pack(0, 0, 0)
            # Success, said the kernel's way for "no open needed": it opens every later file
            # itself (no OPEN/RELEASE round trips) and keeps its pages across opens
            # (FOPEN_KEEP_CACHE). The mount is read-only, so the kernel refuses writing opens
            # before they would reach us.
            raise OSError(errno.ENOSYS, "no open needed")
        if opcode in (READDIRPLUS, READDIR):
            counters[READDIRS] += 1
            offset, size = READ_IN.unpack_from(body)[1:3]
            return self.readdir(nodeid, offset, size, plus=opcode == READDIRPLUS)
        if opcode in (RELEASE, RELEASEDIR):
            return b""
        if opcode == READLINK:
            node = tree.getattr(nodeid)
            if node.kind != SYMLINK:
                raise OSError(errno.EINVAL, "not a symlink")
            return node.target
        if opcode == STATFS:
            stats = tree.index.stats
            blocks = (stats.bytes + 4095) // 4096
            return STATFS_OUT.pack(blocks, 0, 0, stats.entries, 0, 4096, 255, 4096, 0)
        if opcode == ACCESS:
            tree.getattr(nodeid)
            if struct.unpack_from("<I", body)[0] & os.W_OK:
                raise OSError(errno.EROFS, "read-only")
            return b""
        if opcode == GETXATTR:
            tree.getattr(nodeid)
            raise OSError(errno.ENODATA, "no xattrs")
        if opcode == LISTXATTR:
            tree.getattr(nodeid)
            wanted = struct.unpack_from("<I", body)[0]
            return struct.pack("<II", 0, 0) if wanted == 0 else b""
        if opcode == IOCTL:
            raise OSError(errno.ENOTTY, "no ioctls")
        if opcode == DESTROY:
            return b""
        if opcode in WRITES:
            raise OSError(errno.EROFS, "read-only")
        raise OSError(errno.ENOSYS, "not implemented")  # FLUSH and the rest: not sent again

    def attr(self, node: Node) -> bytes:
        return ATTR.pack(
            node.ino, node.size, (node.size + 511) // 512, node.mtime, node.mtime, node.mtime,
            0, 0, 0, node.mode, node.nlink, self.uid, self.gid, 0, 4096, 0,
        )  # fmt: skip

    def entry(self, node: Node, cacheable: bool = True) -> bytes:
        valid = TIMEOUT if cacheable else 0
        return ENTRY.pack(node.ino, 0, valid, valid, 0, 0) + self.attr(node)

    def readdir(self, ino: int, offset: int, size: int, plus: bool) -> bytes:
        """Entries `.`, `..`, then the children; cookie k = "resume after the k-th entry"."""
        tree = self.tree
        directory = tree.getattr(ino)
        if directory.kind != DIR:
            raise NotADirectory(ino)
        out: list[bytes] = []
        used = 0
        if offset < 2:
            dots = [(b".", directory), (b"..", tree.getattr(directory.parent))][offset:]
            for cookie, (name, node) in enumerate(dots, offset + 1):
                record = dirent(node.ino, cookie, DIR, name)
                if plus:
                    record = self.entry(node) + record
                if used + len(record) > size:
                    return b"".join(out)
                out.append(record)
                used += len(record)
        if not plus:  # most listings: records stored in the index, sliced out as they are
            stored = tree.listing(ino, max(offset, 2) - 2, size - used)
            if stored is not None:
                return b"".join(out) + stored
        # Elsewhere (resized views, READDIRPLUS): one record per child, built here.
        prefix = NO_ATTRIBUTES if plus else b""  # see the module docstring
        cookie = max(offset, 2)
        for child, kind, name in tree.entries(ino, cookie - 2):
            cookie += 1
            record = prefix + dirent(child, cookie, kind, name)
            used += len(record)
            if used > size:
                break
            out.append(record)
        return b"".join(out)

    # --- resized files ---------------------------------------------------------------------

    def sized(self, node: Node) -> Node:
        if self.tree.spec_of(node) is None:
            return node
        size = self.tree.known_size(node)
        self._count_cache()
        return replace(node, size=len(self.resized(node)) if size is None else size)

    def resized(self, node: Node) -> bytes:
        data = self._resized.get(node.ino)
        if data is None:
            stripe = node.ino % LOCK_STRIPES
            if self.lock_fd is not None:  # one resize per file across workers (see above)
                try:
                    fcntl.lockf(self.lock_fd, fcntl.LOCK_EX, 1, stripe)
                except OSError as e:  # a temporary directory without record locks
                    log.warning("no record locks (%s): workers may resize a file twice", e)
                    self.lock_fd = None
            try:
                data = self._resized[node.ino] = self.tree.resized_bytes(node)
            finally:
                if self.lock_fd is not None:
                    fcntl.lockf(self.lock_fd, fcntl.LOCK_UN, 1, stripe)
                self._count_cache()
            if len(self._resized) > 64:
                self._resized.popitem(last=False)
        return data

    def _count_cache(self) -> None:
        if self.tree.cache is None:
            return
        first = len(FS_COUNTERS)
        stats = self.tree.cache.statistics()
        for i, name in enumerate(CACHE_COUNTERS):
            self.counters[first + i] = self._cache_base[i] + stats[name]
