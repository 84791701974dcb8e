"""The FUSE wire protocol as spoken here: opcodes, record layouts, and how to pack a listing.

Layouts only, no I/O (linux/fuse.h, protocol 7.31, native byte order -- little-endian on the
machines we serve). `wire.py` reads requests and writes replies with them; the index builder
stores each directory's listing as READDIR records (`dirent`) so that a worker sends them as
they are.
"""

from __future__ import annotations

import struct

# Opcodes
LOOKUP, FORGET, GETATTR, READLINK = 1, 2, 3, 5
OPEN, READ, STATFS, RELEASE = 14, 15, 17, 18
GETXATTR, LISTXATTR, FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR = 22, 23, 25, 26, 27, 28, 29
ACCESS, INTERRUPT, DESTROY, IOCTL, BATCH_FORGET, READDIRPLUS = 34, 36, 38, 39, 42, 44
#: What the log calls a request.
NAMES = {LOOKUP: "lookup", GETATTR: "getattr", READLINK: "readlink", OPEN: "open",
         READ: "read", STATFS: "statfs", GETXATTR: "getxattr", LISTXATTR: "listxattr",
         OPENDIR: "opendir", READDIR: "readdir", ACCESS: "access", IOCTL: "ioctl",
         READDIRPLUS: "readdirplus"}  # fmt: skip
#: Requests the kernel expects no reply to.
NO_REPLY = frozenset({FORGET, INTERRUPT, BATCH_FORGET})
#: setattr, symlink, mknod, mkdir, unlink, rmdir, rename, link, write, setxattr,
#: removexattr, create, rename2, fallocate... (a `ro` mount never sends them).
WRITES = frozenset({4, 6, 8, 9, 10, 11, 12, 13, 16, 21, 24, 35, 43, 45})

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len, opcode, unique, nodeid, uid, gid, pid, ...
#: The part of in_header a worker reads: len, opcode, unique, nodeid.
IN_START = struct.Struct("<IIQQ")
OUT_HEADER = struct.Struct("<IiQ")  # len, -errno, unique
#: fuse_attr: ino, size, blocks, atime, mtime, ctime, their nsecs, mode, nlink, uid, gid,
#: rdev, blksize, flags
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
#: fuse_entry_out: nodeid, generation, entry_valid, attr_valid, their nsecs, then its attr
ENTRY_OUT = struct.Struct("<QQQQII" + ATTR.format[1:])
#: fuse_attr_out: attr_valid, its nsec, a dummy, then the attr
ATTR_OUT = struct.Struct("<QII" + ATTR.format[1:])
OPEN_IN = struct.Struct("<I")  # flags (also ACCESS's mask, GETXATTR/LISTXATTR's size)
OPEN_OUT = struct.Struct("<QIi")
READ_IN = struct.Struct("<QQIIQII")  # fh, offset, size, ... (READ, READDIR, READDIRPLUS)
STATFS_OUT = struct.Struct("<QQQQQIIII24x")
GETXATTR_IN = struct.Struct("<II")  # size wanted, padding; then the name (GETXATTR)
GETXATTR_OUT = struct.Struct("<II")  # size, padding
#: An entry_out with nodeid 0 -- "no attributes" -- before a READDIRPLUS record.
NO_ATTRIBUTES = bytes(ENTRY_OUT.size)

# FUSE_INIT: the kernel's offer (fuse_init_in) and the answer (fuse_init_out, 64 bytes)
INIT_IN = struct.Struct("<IIII")  # major, minor, max_readahead, flags
INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")
ASYNC_READ, ATOMIC_O_TRUNC, EXPORT_SUPPORT, BIG_WRITES = 1 << 0, 1 << 3, 1 << 4, 1 << 5
AUTO_INVAL_DATA, ASYNC_DIO, PARALLEL_DIROPS, MAX_PAGES = 1 << 12, 1 << 15, 1 << 18, 1 << 22

#: Request buffer: 40 in_header + 40 write_in + 1 MiB max_write, with room to spare.
BUFFER = (1 << 20) + 4096
#: ioctl(2) on /dev/fuse: attach a descriptor to an existing session.
FUSE_DEV_IOC_CLONE = 0x8004E500

#: struct fuse_dirent without the name: ino, cookie of the next entry, name length, DT_ type.
DIRENT = struct.Struct("=QQII")
MAX_DIRENT = DIRENT.size + 255 + 7  # a record with a name of the longest length, padded
_PADDING = [b"\0" * (-n % 8) for n in range(8)]


def dirent(ino: int, cookie: int, dtype: int, name: bytes) -> bytes:
    """One READDIR record: `struct fuse_dirent`, the name, zeros to a multiple of 8 bytes."""
    return DIRENT.pack(ino, cookie, len(name), dtype) + name + _PADDING[len(name) & 7]
