"""The worker adapter (wire.py) without /dev/fuse: synthetic requests in, replies checked.

`Worker.handle` turns one request buffer into one reply buffer; `Worker.run` loops over a
descriptor it is given -- here one end of a SOCK_SEQPACKET socket pair, which keeps message
boundaries as /dev/fuse does. What the replies say is the core's (tests/test_ops.py); here:
that every opcode is unpacked and packed the way the kernel's structs say, errors go out as
negative errnos, no reply goes to FORGET, and FUSE_INIT is answered with our flags.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest
from helpers import SMALL_WNIDS, SmallSource, small_source

from imagenetfs import ops, wire
from imagenetfs import protocol as fuse
from imagenetfs.errors import ImagenetfsError
from imagenetfs.index import DIR, DTYPE, FILE, ROOT_INO, SYMLINK, Index
from imagenetfs.ops import Core
from imagenetfs.views.resize import parse_spec, resize
from imagenetfs.views.tree import VIEW_SHIFT, Tree

pytestmark = pytest.mark.skipif(
    shutil.which("mksquashfs") is None, reason="needs mksquashfs (squashfs-tools)"
)

MKDIR = 9  # one of the writing opcodes


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> SmallSource:
    return small_source(tmp_path_factory.mktemp("small"))


@pytest.fixture
def worker(small: SmallSource) -> Iterator[wire.Worker]:
    with Index.open(small.index) as ix, tempfile.TemporaryFile() as lock:
        core = Core(Tree(ix, [parse_spec("64x64")]), uid=11, gid=22, blocking_reads=True)
        yield wire.Worker(core, -1, lock_fd=lock.fileno())


def request(opcode: int, nodeid: int = ROOT_INO, body: bytes = b"", unique: int = 42) -> bytes:
    return (
        fuse.IN_HEADER.pack(fuse.IN_HEADER.size + len(body), opcode, unique, nodeid, 0, 0, 0, 0, 0)
        + body
    )


def ask(worker: wire.Worker, opcode: int, nodeid: int = ROOT_INO, body: bytes = b"") -> bytes:
    """The payload of a successful reply."""
    reply = worker.handle(memoryview(request(opcode, nodeid, body)))
    assert reply is not None
    length, error, unique = fuse.OUT_HEADER.unpack_from(reply)
    assert (length, error, unique) == (len(reply), 0, 42), (length, error)
    return reply[fuse.OUT_HEADER.size :]


def refused(worker: wire.Worker, opcode: int, nodeid: int = ROOT_INO, body: bytes = b"") -> str:
    """The errno name of a refused request."""
    reply = worker.handle(memoryview(request(opcode, nodeid, body)))
    assert reply is not None and len(reply) == fuse.OUT_HEADER.size
    _, error, unique = fuse.OUT_HEADER.unpack(reply)
    assert error < 0 and unique == 42
    return errno.errorcode[-error]


def read_in(offset: int, size: int) -> bytes:
    return fuse.READ_IN.pack(0, offset, size, 0, 0, 0, 0)


def entry_of(worker: wire.Worker, parent: int, name: str) -> tuple[int, tuple[int, ...]]:
    payload = ask(worker, fuse.LOOKUP, parent, name.encode() + b"\0")
    assert len(payload) == fuse.ENTRY_OUT.size
    fields = fuse.ENTRY_OUT.unpack(payload)
    nodeid, _, entry_valid, attr_valid, _, _ = fields[:6]
    assert entry_valid == attr_valid == ops.TIMEOUT
    return nodeid, fields[6:]


def records(payload: bytes, plus: bool = False) -> list[tuple[int, int, int, bytes]]:
    """(ino, cookie, type, name) of each READDIR(PLUS) record."""
    out, at = [], 0
    while at < len(payload):
        if plus:
            assert payload[at : at + len(fuse.NO_ATTRIBUTES)] == fuse.NO_ATTRIBUTES
            at += len(fuse.NO_ATTRIBUTES)
        ino, cookie, length, kind = fuse.DIRENT.unpack_from(payload, at)
        name = payload[at + fuse.DIRENT.size : at + fuse.DIRENT.size + length]
        out.append((ino, cookie, kind, name))
        at += fuse.DIRENT.size + length + (-length % 8)
    assert at == len(payload)
    return out


def test_lookup_getattr_read(worker: wire.Worker, small: SmallSource) -> None:
    served = small.served()
    rel = f"train/{SMALL_WNIDS[0]}/{SMALL_WNIDS[0]}_2.JPEG"
    ino = ROOT_INO
    for name in rel.split("/"):
        ino, attr = entry_of(worker, ino, name)
    (at_ino, size, blocks, *_, mode, nlink, uid, gid, _, blksize, _) = attr
    assert (at_ino, size, mode, nlink, uid, gid, blksize) == (
        ino, len(served[rel]), 0o100444, 1, 11, 22, 4096,
    )  # fmt: skip
    assert blocks * 512 >= size
    payload = ask(worker, fuse.GETATTR, ino, bytes(16))
    fields = fuse.ATTR_OUT.unpack(payload)
    assert fields[0] == ops.TIMEOUT and fields[3:] == attr
    assert ask(worker, fuse.READ, ino, read_in(0, 1 << 17)) == served[rel]
    assert ask(worker, fuse.READ, ino, read_in(5, 11)) == served[rel][5:16]
    assert ask(worker, fuse.READ, ino, read_in(1 << 30, 100)) == b""
    assert refused(worker, fuse.LOOKUP, ROOT_INO, b"missing\0") == "ENOENT"
    assert refused(worker, fuse.LOOKUP, ino, b"x\0") == "ENOTDIR"
    assert refused(worker, fuse.GETATTR, 10**6, bytes(16)) == "ENOENT"


def test_readdir_records_and_budget(worker: wire.Worker) -> None:
    train, _ = entry_of(worker, ROOT_INO, "train")
    wnid, _ = entry_of(worker, train, SMALL_WNIDS[0])
    full = records(ask(worker, fuse.READDIR, wnid, read_in(0, 4096)))
    assert [r[3] for r in full[:2]] == [b".", b".."]
    assert [r[1] for r in full] == list(range(1, len(full) + 1))
    assert full[0][0] == wnid and full[1][0] == train
    for ino, _, kind, name in full[2:]:
        found, attr = entry_of(worker, wnid, name.decode())
        assert found == ino and kind == attr[9] >> 12
    kinds = {name: kind for _, _, kind, name in full}
    assert kinds[b"link.JPEG"] == DTYPE[SYMLINK] and kinds[b"notes.txt"] == DTYPE[FILE]
    for k in range(len(full) + 1):  # resume after every cookie
        assert records(ask(worker, fuse.READDIR, wnid, read_in(k, 4096))) == full[k:]
    small = records(ask(worker, fuse.READDIR, wnid, read_in(0, 100)))  # a budget of 100 bytes
    assert small == full[: len(small)] and 2 <= len(small) < len(full)
    plus = records(ask(worker, fuse.READDIRPLUS, wnid, read_in(0, 1 << 16)), plus=True)
    assert plus == full
    view, _ = entry_of(worker, ROOT_INO, "resized")  # built, not stored: the same records
    assert [r[3] for r in records(ask(worker, fuse.READDIR, view, read_in(0, 4096)))] == [
        b".", b"..", b"64x64",
    ]  # fmt: skip
    root = records(ask(worker, fuse.READDIR, ROOT_INO, read_in(0, 4096)))
    assert root[-1][3] == b"resized" and root[-1][2] == DTYPE[DIR]
    assert refused(worker, fuse.READDIR, full[3][0], read_in(0, 4096)) == "ENOTDIR"


def test_open_and_the_other_opcodes(worker: wire.Worker, small: SmallSource) -> None:
    train, _ = entry_of(worker, ROOT_INO, "train")
    wnid, _ = entry_of(worker, train, SMALL_WNIDS[0])
    f, _ = entry_of(worker, wnid, f"{SMALL_WNIDS[0]}_1.JPEG")
    link, _ = entry_of(worker, wnid, "link.JPEG")
    flags = fuse.OPEN_IN.pack
    assert refused(worker, fuse.OPEN, f, flags(os.O_RDONLY) + bytes(4)) == "ENOSYS", (
        "no open needed"
    )
    for flag in (os.O_WRONLY, os.O_RDWR, os.O_TRUNC, os.O_APPEND, os.O_CREAT):
        assert refused(worker, fuse.OPEN, f, flags(flag) + bytes(4)) == "EROFS"
    assert refused(worker, fuse.OPEN, wnid, flags(0) + bytes(4)) == "EISDIR"
    assert fuse.OPEN_OUT.unpack(ask(worker, fuse.OPENDIR, wnid, flags(0) + bytes(4))) == (0, 0, 0)
    assert refused(worker, fuse.OPENDIR, f, flags(0) + bytes(4)) == "ENOTDIR"
    assert ask(worker, fuse.READLINK, link) == f"{SMALL_WNIDS[0]}_1.JPEG".encode()
    assert refused(worker, fuse.READLINK, f) == "EINVAL"
    blocks, bfree, bavail, files, ffree, bsize, namelen, frsize, _ = fuse.STATFS_OUT.unpack(
        ask(worker, fuse.STATFS)
    )
    assert (bfree, bavail, ffree, bsize, namelen, frsize) == (0, 0, 0, 4096, 255, 4096)
    assert files == worker.core.tree.index.stats.entries and blocks > 0
    assert ask(worker, fuse.ACCESS, f, flags(os.R_OK) + bytes(4)) == b""
    assert refused(worker, fuse.ACCESS, f, flags(os.W_OK) + bytes(4)) == "EROFS"
    assert refused(worker, fuse.GETXATTR, f, fuse.GETXATTR_OUT.pack(100, 0) + b"user.x\0") == (
        "ENODATA"
    )
    assert ask(worker, fuse.LISTXATTR, f, fuse.GETXATTR_OUT.pack(0, 0)) == bytes(8)
    assert ask(worker, fuse.LISTXATTR, f, fuse.GETXATTR_OUT.pack(100, 0)) == b""
    assert refused(worker, fuse.IOCTL, f, bytes(32)) == "ENOTTY"
    assert worker.core.counters.values[ops.IOCTLS] == 1
    assert refused(worker, fuse.FLUSH, f, bytes(24)) == "ENOSYS"
    assert refused(worker, MKDIR, wnid, bytes(8) + b"new\0") == "EROFS"
    assert refused(worker, 9999) == "ENOSYS"
    assert ask(worker, fuse.RELEASE, f, bytes(24)) == b""
    assert worker.handle(memoryview(request(fuse.FORGET, f, bytes(8)))) is None, (
        "no reply to FORGET"
    )
    assert worker.core.counters.values[ops.ERRORS] == 0, "all of these are answers"
    assert ask(worker, fuse.DESTROY) == b"" and worker.done


def test_a_resize_runs_once_under_the_record_lock(worker: wire.Worker, small: SmallSource) -> None:
    """A view file: LOOKUP resizes it (under the lock), GETATTR and READ then answer from
    what is known; a file that cannot be resized answers EIO, counted as an error."""
    rel = f"train/{SMALL_WNIDS[1]}/{SMALL_WNIDS[1]}_3.JPEG"
    expected = resize(small.served()[rel], parse_spec("64x64"))
    ino = ROOT_INO
    for name in ["resized", "64x64", *rel.split("/")]:
        ino, attr = entry_of(worker, ino, name)
    assert ino >> VIEW_SHIFT == 1 and attr[1] == len(expected)
    assert ask(worker, fuse.READ, ino, read_in(0, 1 << 17)) == expected
    parent = ROOT_INO
    for name in ["resized", "64x64", "train", SMALL_WNIDS[0]]:
        parent, _ = entry_of(worker, parent, name)
    assert refused(worker, fuse.LOOKUP, parent, b"broken.JPEG\0") == "EIO"
    stats = worker.core.statistics()["fs"]
    assert stats["resizes"] == 1 and stats["errors"] == 1


def test_a_damaged_record_is_an_eio_not_a_dead_worker(small: SmallSource, tmp_path: Path) -> None:
    """LOOKUP's short way reads the index record itself: one cut short (an index damaged on
    disk) is answered EIO, counted and logged, and the worker goes on."""
    damaged = tmp_path / "damaged.lmdb"
    shutil.copy(small.index, damaged)
    with Index.open(damaged) as ix:
        train = ix.lookup(ROOT_INO, b"train")
        wnid = next(iter(ix.readdir(train.ino)))
        victim = next(iter(ix.readdir(wnid.ino)))
    env = lmdb.open(str(damaged), subdir=False, max_dbs=5, lock=False)
    with env.begin(write=True) as txn:
        assert txn.put(
            struct.pack(">I", victim.ino), b"\x01\x02", db=env.open_db(b"nodes", txn=txn)
        )
    env.close()
    with Index.open(damaged) as ix:
        core = Core(Tree(ix), uid=11, gid=22, blocking_reads=True)
        worker = wire.Worker(core, -1)
        assert refused(worker, fuse.LOOKUP, wnid.ino, victim.name + b"\0") == "EIO"
        assert core.counters.values[ops.ERRORS] == 1
        assert entry_of(worker, ROOT_INO, "train")[0] == train.ino, "and it goes on"


def test_run_serves_a_descriptor_it_is_given(worker: wire.Worker, small: SmallSource) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        worker.fd = theirs.fileno()
        ours.send(request(fuse.LOOKUP, ROOT_INO, b"train\0", unique=1))
        ours.send(request(fuse.FORGET, ROOT_INO, bytes(8), unique=2))
        ours.send(request(fuse.GETATTR, ROOT_INO, bytes(16), unique=3))
        ours.shutdown(socket.SHUT_WR)  # the end of requests: run() returns
        worker.run()
        replies = [ours.recv(1 << 20) for _ in range(2)]
    assert [fuse.OUT_HEADER.unpack_from(r)[1:] for r in replies] == [(0, 1), (0, 3)]


def test_a_refused_reply_fails_that_request_and_the_worker_goes_on(
    worker: wire.Worker, caplog: pytest.LogCaptureFixture
) -> None:
    """A reply the other end will not take (here a socket whose buffer is smaller than a
    64 KiB READ reply: EMSGSIZE; the kernel says EINVAL) is answered EIO instead, in one log
    line, counted; the worker serves the next request."""
    ino = ROOT_INO
    for name in ("train", SMALL_WNIDS[0], "big.JPEG"):
        ino, _ = entry_of(worker, ino, name)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # (doubled: 8 KiB)
        worker.fd = theirs.fileno()
        ours.send(request(fuse.READ, ino, read_in(0, 1 << 16), unique=1))
        ours.send(request(fuse.GETATTR, ROOT_INO, bytes(16), unique=2))
        ours.shutdown(socket.SHUT_WR)
        worker.run()
        replies = [ours.recv(1 << 20) for _ in range(2)]
    assert [fuse.OUT_HEADER.unpack_from(r) for r in replies] == [
        (16, -errno.EIO, 1), (16 + fuse.ATTR_OUT.size, 0, 2),
    ]  # fmt: skip
    said = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert said == [f"read({ino}): the kernel refused a reply of 65552 bytes (Message too long)"]
    assert worker.core.counters.values[ops.ERRORS] == 1


def test_answer_init() -> None:
    offered = (1 << 32) - 1
    for minor, ok in ((31, True), (40, True), (22, False)):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with ours, theirs:
            ours.send(
                request(fuse.INIT, 0, fuse.INIT_IN.pack(7, minor, 1 << 17, offered), unique=9)
            )
            if ok:
                wire.answer_init(theirs.fileno())
            else:
                with pytest.raises(ImagenetfsError, match=r"7\.23 or later"):
                    wire.answer_init(theirs.fileno())
            reply = ours.recv(1 << 16)
        length, error, unique = fuse.OUT_HEADER.unpack_from(reply)
        assert unique == 9 and length == len(reply)
        if not ok:
            assert error == -errno.EPROTO
            continue
        major, got_minor, readahead, flags, *_ = fuse.INIT_OUT.unpack_from(
            reply, fuse.OUT_HEADER.size
        )
        assert (major, got_minor, readahead) == (7, min(minor, wire.MINOR), 1 << 17)
        assert flags == wire.WANTED
        # the kernel's bits (include/uapi/linux/fuse.h), not our constants: no READDIRPLUS
        # (DO_READDIRPLUS, READDIRPLUS_AUTO), and parallel directory operations
        assert not flags & (1 << 13 | 1 << 14), "no READDIRPLUS"
        assert flags & (1 << 18), "PARALLEL_DIROPS"
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        ours.send(request(fuse.LOOKUP, 1, b"x\0"))
        with pytest.raises(ImagenetfsError, match="expected FUSE_INIT"):
            wire.answer_init(theirs.fileno())


def test_board_sums_the_workers_slots() -> None:
    """Each worker's two threads (the worker's, its cold reads') count in slots of their own;
    the totals are the sums of all of them."""
    board = wire.Board(3)
    for n in range(3):
        slot = board.slot(n)
        slot[ops.READS] = 10 * (n + 1)
        slot[len(ops.FS_COUNTERS)] = n  # the cache's hits
        board.slot(n, 1)[ops.READS_COLD] = 100
        board.slot(n, 1)[ops.READS] = 100
    assert list(board.slot(2, 1))[ops.READS] == 100 and board.slot(2)[ops.READS] == 30
    totals = board.totals()
    assert totals[ops.READS] == 360 and totals[len(ops.FS_COUNTERS)] == 3
    assert totals[ops.READS_COLD] == 300
    assert ops.Counters.report(totals, cache=True)["resize_cache"]["hits"] == 3
