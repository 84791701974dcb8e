"""Worker processes that serve one mount in the FUSE wire protocol (`mount --workers N`).

One pyfuse3 daemon tops out at one core (~30 µs of Python per request). To use more, the
mounting process lets pyfuse3 answer FUSE_INIT, stops its loop, and forks workers. Each worker
opens `/dev/fuse`, clones the session onto it (`FUSE_DEV_IOC_CLONE`: the kernel then hands
requests to whichever clone reads first, and aborts only a dead worker's own requests), and
answers requests with a plain `os.read`/`os.write` loop over the same `views.Tree` the pyfuse3
adapter uses. Measured on this kind of machine: ~6 µs per request instead of ~30.

Workers are stateless between requests: a file handle is the file's inode number, so OPEN,
READ and RELEASE of one file may reach different workers. Listings (READDIRPLUS) give files
their type and inode number but no attributes (nodeid 0), so the kernel instantiates no inode
per listed file -- the bulk of a walk's cost -- while directories come with full attributes.
Otherwise replies mirror `fs.Operations` (same attributes, timeouts and errnos); see
docs/SEMANTICS.md. A worker exits when the mount
goes away (ENODEV) or on SIGTERM; the parent supervises, restarts a worker that died, and
unmounts at the end.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
from collections import OrderedDict
from dataclasses import replace

from imagenetfs.errors import ImagenetfsError
from imagenetfs.index import DIR, FILE, SYMLINK, Node, NoSuchEntry, NotADirectory
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
DIRENT = struct.Struct("<QQII")
STATFS_OUT = struct.Struct("<QQQQQIIII24x")
OPEN_KEEP_CACHE = 2
NO_ATTRIBUTES = bytes(ENTRY.size + ATTR.size)  # an entry_out with nodeid 0: "no attributes"


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

    def __init__(self, tree: Tree, session: int, uid: int, gid: int) -> None:
        self.tree = tree
        self.uid, self.gid = uid, gid
        self.fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        fcntl.ioctl(self.fd, FUSE_DEV_IOC_CLONE, struct.pack("I", session))
        self._resized: OrderedDict[int, bytes] = OrderedDict()

    def run(self) -> None:
        while True:
            try:
                request = os.read(self.fd, BUFFER)
            except OSError as e:
                if e.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue
                if e.errno == errno.ENODEV:  # unmounted
                    return
                raise
            self.handle(request)

    def handle(self, request: bytes) -> None:
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
            return self.error(unique, e.errno or errno.EIO)
        except ImagenetfsError as e:
            log.error("opcode %d on %d: %s", opcode, nodeid, e)
            return self.error(unique, errno.EIO)
        except Exception:
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
        if opcode == LOOKUP:
            name = bytes(body).split(b"\0", 1)[0]
            if name == b".":
                node = tree.getattr(nodeid)
            elif name == b"..":
                node = tree.getattr(tree.getattr(nodeid).parent)
            else:
                node = tree.lookup(nodeid, name)
            return self.entry(self.sized(node))
        if opcode == GETATTR:
            return ATTR_OUT.pack(TIMEOUT, 0, 0) + self.attr(self.sized(tree.getattr(nodeid)))
        if opcode in (OPEN, OPENDIR):
            flags = struct.unpack_from("<I", body)[0]
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT):
                raise OSError(errno.EROFS, "read-only")
            node = tree.getattr(nodeid)
            if opcode == OPENDIR and node.kind != DIR:
                raise NotADirectory(nodeid)
            if opcode == OPEN and node.kind != FILE:
                raise OSError(errno.EISDIR if node.kind == DIR else errno.EINVAL, "not a file")
            return OPEN_OUT.pack(nodeid, OPEN_KEEP_CACHE if opcode == OPEN else 0, 0)
        if opcode == READ:
            fh, offset, size = READ_IN.unpack_from(body)[:3]
            node = tree.getattr(fh)
            if tree.spec_of(node) is not None:
                return self.resized(node)[offset : offset + size]
            if offset >= node.size:
                return b""
            return tree.read(node, offset, size)
        if opcode in (READDIRPLUS, READDIR):
            fh, offset, size = READ_IN.unpack_from(body)[:3]
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
        out = bytearray()

        def add(name: bytes, node: Node, cookie: int, cacheable: bool = True) -> bool:
            dirent = DIRENT.pack(node.ino, cookie, len(name), node.mode >> 12) + name
            dirent += b"\0" * (-len(dirent) % 8)
            if not plus:
                record = dirent
            elif node.kind == DIR:
                record = self.entry(node, cacheable) + dirent
            else:
                # Files: entry type and inode number, no attributes (nodeid 0). The kernel then
                # makes no inode per listed file, which is most of a listing's cost; os.walk
                # and scandir need only the type, and a stat that follows costs one LOOKUP.
                record = NO_ATTRIBUTES + dirent
            if len(out) + len(record) > size:
                return False
            out.extend(record)
            return True

        if offset < 1 and not add(b".", directory, 1):
            return bytes(out)
        if offset < 2 and not add(b"..", tree.getattr(directory.parent), 2):
            return bytes(out)
        for cookie, node in enumerate(tree.readdir(ino, max(offset - 2, 0)), max(offset, 2) + 1):
            if not add(node.name, node, cookie):  # listing resizes nothing
                break
        return bytes(out)

    # --- resized files ---------------------------------------------------------------------

    def sized(self, node: Node) -> Node:
        if self.tree.spec_of(node) is None:
            return node
        size = self.tree.known_size(node)
        return replace(node, size=len(self.resized(node)) if size is None else size)

    def resized(self, node: Node) -> bytes:
        data = self._resized.get(node.ino)
        if data is None:
            data = self._resized[node.ino] = self.tree.resized_bytes(node)
            if len(self._resized) > 64:
                self._resized.popitem(last=False)
        return data
