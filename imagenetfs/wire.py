"""The worker adapter: serve one mount in the FUSE wire protocol over the operation core.

One pyfuse3 daemon tops out at one core (~30 µs of Python per request). To use more, pyfuse3
only mounts; the daemon answers FUSE_INIT itself (`answer_init`) and starts worker processes
(supervisor.py). Each worker gets a descriptor cloned from the session (`clone_session`: the
kernel hands each request to whichever clone reads first, and aborts only a dead worker's own
requests) and runs `Worker.run`: read a request, unpack it, call one `ops.Core` operation,
pack the reply, write it. Measured on this kind of machine: ~6 µs per request instead of ~30.
`Worker.handle` is that step alone, bytes in, bytes out: the tests feed it synthetic requests.

Protocol choices (what pyfuse3 would not let us say):
- FUSE_INIT leaves out READDIRPLUS: listings are plain READDIR records (name, type, inode
  number), about four times as many per request, and the kernel instantiates no inode per
  listed entry -- the bulk of a walk's cost. Base-tree listings are the records stored in the
  index, sent as they are. It asks for PARALLEL_DIROPS: workers are stateless, lookups in one
  directory need not queue.
- OPEN is answered ENOSYS once the core has checked it: the kernel then stops sending OPEN (and
  RELEASE) for the rest of the mount, keeps file pages cached across opens (FOPEN_KEEP_CACHE),
  and READ names the file by its inode. OPENDIR gets a handle without FOPEN_CACHE_DIR: the
  kernel's listing cache made the first walk of ImageNet ~20% slower (2.1 s, not 1.8).

LOOKUP takes a short way first: a name in a base-tree directory is answered off its index
record (`Core.stored_lookup`: two LMDB gets, no `Node`); the dots, the views, missing names
and errors go the long way (`Core.lookup`). One LOOKUP per file opened or stat-ed: ~28k
instructions instead of ~46k.

Blocking (`ops.Blocked`): a worker has nothing else to do, so its core reads blocking; a resize
is run under a POSIX record lock on byte `inode % LOCK_STRIPES` of a file shared by the
workers (the kernel drops it if its holder dies), so that concurrent requests for one file in
two workers resize it once -- the second finds it in the resize cache. Counters live in a
`Board`: slots of shared memory, two per worker (one per thread), each written by one thread
only and summed by the supervisor -- the read-latency histogram too (ops.py): a READ is timed
from the entry of `_read` to its bytes being ready, the resize or the lock wait included.

Spliced reads (`Splicer`). A READ of bytes stored as they are read -- the blocks of a `-noD
-noF` image and its uncompressed fragments, tar members, stored zip members -- is not copied
through Python: the core says where they lie (`Core.locate_read`: runs of descriptor,
position, length; one, or two for a tail in a fragment), and the worker writes the reply's
header into a pipe of its own, splices each run from the image file behind it, then splices
the whole reply from the pipe to the device in one call (the kernel takes a spliced reply
whole, its length the header's: `fuse_dev_splice_write`). So a READ is a write of 16 bytes and
two or three splices, and its bytes go from the image's page cache to the request's pages in
one copy, in the kernel -- where the copy path preads them into a buffer and writes them out
again. Everything else is copied as before: bytes to decompress, resized and virtual files,
unpacked trees (the core answers None), a READ with more pages than the pipe holds (`PIPE_SIZE`
capped by /proc/sys/fs/pipe-max-size, 1 MiB for a user: READs up to ~1,000 KiB fit), an image
on a filesystem whose files cannot be spliced from (EINVAL: hugetlbfs, /proc; that descriptor
is copied from for good), and a splice that comes back short (an image cut short since it was
indexed: `read` then answers EIO, as it would have). Before the copy path answers, the pipe is
emptied of whatever part of a reply is in it, so that no byte of it goes out with another.
Counted as the copy path counts (bytes, the latency until the bytes are in the pipe), and in
`reads_spliced`. `IMAGENETFS_SPLICE=0` (read when a worker starts) turns splicing off, for A/B
comparisons; pyfuse3 (`--workers 0`, fs.py) writes its replies itself and always copies.

Cold reads (`ColdReads`). A spliced READ whose bytes are not in the page cache would hold its
worker while the disk (or a shared filesystem) delivers them, and on two cores that idles a
core: measured on the official tars, the first seconds of a cold epoch spent 19-44% of the CPU
time in iowait (docs/bench/issue15-cold/). So before splicing, a worker probes the first and
the last byte of each run with a one-byte `RWF_NOWAIT` read; when one is not cached, it hands
the READ to a second thread of its own (at most `COLD_WAITING` waiting; past that it splices it
itself) and goes on with the next request. The thread splices with a pipe of its own; where a
splice cannot do it, it copies, and a READ cut short (an image truncated since it was indexed)
fails with EIO, logged and counted by `Core.errno_for`'s rule. It counts what it sends in a
slot of the `Board` of its own (`reads_cold`, and the latency from the worker taking the READ
up), so no counter has two writers. Nothing else moves to it: it never touches the index, a
cache or the core's state. On a filesystem that cannot say what it caches (no `RWF_NOWAIT`:
FUSE, NFS, Lustre), every READ of an image may wait, and one blocking read per worker leaves a
slow share's link half idle: there the worker hands every such READ to its threads -- up to
`UNSEEN_THREADS`, started on the first, each with a pipe and a counter slot of its own, at
most `UNSEEN_WAITING` READs waiting (past that the worker reads it itself) -- spliced READs
as above, and copied ones (gzip images) as the blocking rest of the core's read, which the
core hands back (`Core.defer_unseen`: it has counted the READ; the thread only reads, and
counts the latency and `reads_cold`). `IMAGENETFS_COLD_THREAD=0` turns the threads off (for
A/B runs).

Read-ahead and pushes, for a reader in the images' order (`cp -r`, a loop over sorted paths): a
worker tells `ahead.Ahead` where each file it starts reading lies in its image (the READ's
runs, or `Core.span`; a file pushed, below, as it is pushed), which asks the kernel to read
ahead once files come in order (see ahead.py). And Python's `open()` asks `isatty()` of each
file (an IOCTL, answered ENOTTY) before reading it: `_push` first sends the file's bytes, when
it holds at most `PUSH_MAX`, to the kernel's page cache for it (FUSE_NOTIFY_STORE), once per
file per mount -- `Board.sent`, a bit per inode shared by the workers and set by a READ from
byte 0 too, so that a file the kernel already holds is not pushed again. The READs that would
have followed are then not sent. A push goes to the worker's push thread (`Pushes`: at
most `PUSH_WAITING` waiting that wait for the disk or inflate, `PUSH_WAITING_AT_HAND` whose
bytes are at hand; past that the IOCTL is answered at once and the READs come),
which splices bytes stored as they are read (like a READ's reply), or reads and inflates
them, or copies a virtual file's or a block cache's (`Core.whole_file`), stores them, and
only then answers the IOCTL. The reader waits in its ioctl meanwhile, so no READ of its own
for that file is in flight: that is what makes a push safe here and not at a READ -- the
kernel locks a READ's pages until it is answered, and a store waits for them. Another
reader's READ of the same file may be in flight (the kernel may even have queued it behind
this IOCTL): the push thread waits for it, and it is answered by the request loop or a
cold-read thread, never from behind the push. A push from the request loop could wait for a
READ that only a request loop can answer: with one worker, or with every worker in such a
store at once, the mount would hang (test_ahead.py shows both). So a push is stored from the
loop only when its bytes are at hand and the worker holds `PUSH_TOKEN` -- a record lock that
one worker at a time holds, and only with others, whose loops are then free to answer the
READs (`_push_here`: it saves the thread's hop, ~10% of a first epoch of cached files). Over a
gzip image a file's blocks are then inflated once, in one worker, where PIL's small reads made
~3.3 READs a file, landing on both workers and inflating the file's blocks for each worker's
own block cache. A push that fails (a corrupt block, EIO, the kernel refusing it) is given up,
said at debug level: the IOCTL is answered as ever, and the READs that come fail as they would
have. The cost: a reader that opens a file with Python's `open()` and reads only its start (an
image's header) now has the whole file read, inflated and sent, up to `PUSH_MAX`. Counted in
`files_pushed` and `bytes_pushed` (the push thread in a slot of its own).
`IMAGENETFS_READ_AHEAD=0` and `IMAGENETFS_PUSH=0` turn them off.

Replies the kernel refuses. The kernel checks each reply against its request and refuses,
with an error on the write (EINVAL), one it cannot take -- a READLINK reply of 4,096 bytes or
more (`index.MAX_TARGET`: an index built before it was checked may hold such a target), or
any reply a bug makes too long. That request then fails with EIO -- the kernel already failed
it, or the worker answers EIO now (`answer_refused`) -- said in one line and counted by the
core's rule, and the worker goes on: one bad entry never costs a worker, so never the mount
(the supervisor unmounts after a crash loop). Only ENODEV (unmounted) ends a worker.

The heap (`steady_heap`). Every READ allocates its data and its reply, 128 KiB each as the
kernel usually asks: glibc's default thresholds (mmap from 128 KiB, trimming the heap's top
past 128 KiB, both moving with use) may hand those pages back to the kernel after each READ
and fault them in again on the next -- or not, depending on whatever else sits on the heap.
Measured here: an unrelated change to the worker tipped it from ~9,000 to ~79,000 minor faults
in one cold epoch of 5,000 files, and that epoch from 1.9 to 2.2 s. A worker fixes the
thresholds instead: buffers up to `HEAP_MMAP` come from the heap, and up to `HEAP_KEEP` bytes
of free heap stay with the process.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import itertools
import logging
import mmap
import os
import queue
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from imagenetfs import protocol as fuse
from imagenetfs.ahead import Ahead
from imagenetfs.errors import (
    CorruptImageError,
    ImagenetfsError,
    InvalidRequest,
    NotImplemented_,
    ReadOnly,
    ReplyRefused,
)
from imagenetfs.index import DTYPE
from imagenetfs.ops import (
    BLOCK_SIZE,
    BYTES_PUSHED,
    BYTES_READ,
    FILES_PUSHED,
    READS_COLD,
    Blocked,
    Core,
    Counters,
    Listed,
)
from imagenetfs.protocol import IN_HEADER, IN_START, NO_REPLY, OUT_HEADER
from imagenetfs.squashfs import NO_NOWAIT, Piece, Run

log = logging.getLogger(__name__)

LOCK_STRIPES = 4096
#: The byte of the workers' lock file after the stripes: held by the one worker that may store
#: a push from its request loop (`Worker._push_here`).
PUSH_TOKEN = LOCK_STRIPES
#: The protocol revision spoken here (what libfuse 3.14 answers).
MINOR = 31
#: What FUSE_INIT asks for: libfuse's choice for pyfuse3 without DO_READDIRPLUS, with
#: PARALLEL_DIROPS (see the module docstring).
WANTED = fuse.ASYNC_READ | fuse.ATOMIC_O_TRUNC | fuse.EXPORT_SUPPORT | fuse.BIG_WRITES
WANTED |= fuse.AUTO_INVAL_DATA | fuse.ASYNC_DIO | fuse.PARALLEL_DIROPS | fuse.MAX_PAGES
MAX_WRITE = 1 << 20
#: glibc's `mallopt` parameters (malloc.h), and what a worker sets them to (see above).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HEAP_MMAP = 4 << 20
HEAP_KEEP = 16 << 20
#: Turns spliced reads off when "0" (see the module docstring).
SPLICE_ENV = "IMAGENETFS_SPLICE"
#: What a worker's reply pipe is asked to hold: the largest READ (256 pages, FUSE_INIT's
#: max_pages) and its header -- the kernel caps it at /proc/sys/fs/pipe-max-size for a user.
PIPE_SIZE = 2 << 20
PAGE = mmap.PAGESIZE
#: Turns a worker's cold-read thread off when "0" (see the module docstring).
COLD_ENV = "IMAGENETFS_COLD_THREAD"
#: How many READs may wait for a worker's cold-read thread; past that the worker splices them.
COLD_WAITING = 4
#: Threads a worker may have for the reads of a filesystem that cannot say what it caches, and
#: how many such READs may wait for them; past that the worker reads them itself.
UNSEEN_THREADS = 4
UNSEEN_WAITING = 8
#: Threads per worker, each with a counter slot of its own: the worker's, its cold reads'
#: (1 to `UNSEEN_THREADS`), its pushes' (the last, `PUSH_THREAD`).
THREADS = 2 + UNSEEN_THREADS
PUSH_THREAD = THREADS - 1
#: FUSE_NOTIFY_STORE (a message to the kernel: bytes for a file's page cache, `Worker._push`)
#: and what follows its header: nodeid, offset, size, padding.
NOTIFY_STORE = 4
STORE_OUT = struct.Struct("<QQII")
STORE_EXTRA = STORE_OUT.size
#: The largest file pushed whole with its IOCTL (`Worker._push`).
PUSH_MAX = 512 << 10
#: How many pushes may wait for a worker's push thread -- of ones that wait for the disk or
#: inflate, and of ones whose bytes are at hand (in the page cache, a virtual file's, a block
#: cache's) -- past which an IOCTL is answered at once and the file's READs come. The few of
#: the first keep the READs of other readers' cold files going meanwhile, in the request loop
#: and the cold-read threads; the second are quick, and a READ costs more than the wait.
PUSH_WAITING = 4
PUSH_WAITING_AT_HAND = 16
#: Turns pushing off when "0".
PUSH_ENV = "IMAGENETFS_PUSH"


def answer_refused(
    fd: int,
    core: Core,
    what: str,
    subject: object,
    unique: int,
    size: int,
    exc: OSError,
    counters: Counters | None = None,
) -> None:
    """Fail request `unique` (`what` on `subject`), whose reply of `size` bytes the kernel
    refused with `exc`, with EIO: said and counted by the core's rule; a request the kernel
    has failed already (ENOENT) or a mount gone (ENODEV) needs nothing more."""
    refusal = ReplyRefused(f"the kernel refused a reply of {size} bytes ({exc.strerror})")
    code = core.errno_for(refusal, what, subject, counters)
    try:
        os.write(fd, OUT_HEADER.pack(16, -code, unique))
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENODEV):
            log.warning("an error reply was refused too (%s): request %d left to the kernel", e,
                        unique)  # fmt: skip


def answer_init(fd: int) -> None:
    """Read the kernel's FUSE_INIT from session `fd` and accept it, instead of libfuse."""
    request = os.read(fd, fuse.BUFFER)  # (EINTR is retried by Python itself)
    _, opcode, unique, *_ = IN_HEADER.unpack_from(request)
    if opcode != fuse.INIT:
        raise ImagenetfsError(f"expected FUSE_INIT from the kernel, got opcode {opcode}")
    major, minor, readahead, offered = fuse.INIT_IN.unpack_from(request, IN_HEADER.size)
    if major != 7 or minor < 23:
        os.write(fd, OUT_HEADER.pack(16, -errno.EPROTO, unique))
        raise ImagenetfsError(f"kernel FUSE protocol {major}.{minor}: 7.23 or later needed")
    flags = WANTED & offered
    reply = fuse.INIT_OUT.pack(
        7, min(minor, MINOR), readahead, flags, 0, 0, MAX_WRITE, 1, 256, 0, 0
    )
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


def clone_session(session: int) -> int:
    """A new /dev/fuse descriptor attached to `session` (FUSE_DEV_IOC_CLONE)."""
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, fuse.FUSE_DEV_IOC_CLONE, struct.pack("I", session))
    except BaseException:
        os.close(fd)
        raise
    return fd


def steady_heap() -> None:
    """Fix glibc's malloc thresholds for this process (see the module docstring); nothing
    where the C library has no `mallopt`."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, HEAP_MMAP)
        mallopt(M_TRIM_THRESHOLD, HEAP_KEEP)


class Board:
    """The counters of N workers in one shared anonymous mapping: `slot(n, thread)` is worker
    n's thread's (0: the worker's, then its cold reads', then its pushes'), on cache lines of
    its own (two writers on one line would slow each other down). With `inodes`, also `sent`:
    one bit per inode below it, set once a file's bytes have gone to the kernel (a push or a
    READ from its start), shared by the workers (see `Worker._push`)."""

    def __init__(self, workers: int, inodes: int = 0) -> None:
        self.slot_size = 8 * Counters.SLOTS
        self.stride = -(-self.slot_size // 64) * 64
        self.workers = workers
        self._map = mmap.mmap(-1, workers * THREADS * self.stride)
        self.sent: memoryview | None = None
        if inodes > 0:
            self._sent_map = mmap.mmap(-1, -(-inodes // 8))
            self.sent = memoryview(self._sent_map)

    def slot(self, n: int, thread: int = 0) -> memoryview:
        """Worker `n`'s counters of its `thread`: 0 the worker's, 1 to `UNSEEN_THREADS` its
        cold reads' threads', `PUSH_THREAD` its push thread's."""
        start = (n * THREADS + thread) * self.stride
        return memoryview(self._map)[start : start + self.slot_size].cast("Q")

    def totals(self) -> list[int]:
        sums = [0] * Counters.SLOTS
        for n in range(self.workers):
            for thread in range(THREADS):
                for i, value in enumerate(self.slot(n, thread)):
                    sums[i] += value
        return sums


def splice_wanted() -> bool:
    """Whether workers splice (see the module docstring): unless `IMAGENETFS_SPLICE=0`."""
    return os.environ.get(SPLICE_ENV, "1").strip() != "0"


def cold_thread_wanted() -> bool:
    """Whether workers hand cold reads to a thread (see the module docstring): unless
    `IMAGENETFS_COLD_THREAD=0`."""
    return os.environ.get(COLD_ENV, "1").strip() != "0"


def pipe_size() -> int:
    """`PIPE_SIZE`, or less where /proc/sys/fs/pipe-max-size says a user may have less."""
    try:
        with open("/proc/sys/fs/pipe-max-size", "rb") as f:
            return min(PIPE_SIZE, int(f.read()))
    except (OSError, ValueError):
        return PIPE_SIZE


class Splicer:
    """One worker's way of sending a READ's reply from image files to the device through a
    pipe, without a copy in user space (see the module docstring): `fill`, then `send`."""

    def __init__(self, device: int) -> None:
        self.device = device
        # non-blocking: a miscount can only make a splice or a read come back EAGAIN, never
        # hang; the file side of a splice still waits for the disk
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self._w, fcntl.F_SETPIPE_SZ, pipe_size())
        except OSError as e:  # (over the user's pipe-user-pages-soft): smaller READs only
            log.info("reply pipe left at its default size: %s", e)
        #: pipe buffers: one holds the header, each page of a run one more
        self.slots = fcntl.fcntl(self._w, fcntl.F_GETPIPE_SZ) // PAGE
        self._unable: set[int] = set()  # descriptors whose files cannot be spliced from

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)

    def fill(self, unique: int, runs: list[Piece]) -> int | None:
        """Put the reply to READ `unique` in the pipe: its header, then the bytes of `runs`
        (each a run spliced from its file, or bytes written as they are). Their size; or None
        when they cannot all go -- more pages than the pipe holds, a file that cannot be
        spliced from, a splice that comes back short or fails -- with the pipe empty again."""
        return self._fill(lambda size: OUT_HEADER.pack(16 + size, 0, unique), runs)

    def fill_store(self, nodeid: int, runs: list[Piece]) -> int | None:
        """Put a FUSE_NOTIFY_STORE of the bytes of `runs` in the pipe, as file `nodeid`'s from
        its byte 0 (`Worker._push`): its header, then the bytes. As `fill` answers; `send`
        then takes the size plus `STORE_EXTRA`."""
        return self._fill(
            lambda size: (
                OUT_HEADER.pack(16 + STORE_EXTRA + size, NOTIFY_STORE, 0)
                + STORE_OUT.pack(nodeid, 0, size, 0)
            ),
            runs,
        )

    def _fill(self, header: Callable[[int], bytes], runs: list[Piece]) -> int | None:
        size, pages = 0, 1
        for run in runs:
            if isinstance(run, bytes):  # (written: a page per 4 KiB, merged with nothing)
                size += len(run)
                pages += -(-len(run) // PAGE)
                continue
            fd, pos, length = run
            if fd in self._unable:
                return None
            size += length
            pages += (pos + length - 1) // PAGE - pos // PAGE + 1
        if pages > self.slots:
            return None
        fd = -1
        try:
            os.write(self._w, header(size))
            for run in runs:
                if isinstance(run, bytes):
                    if os.write(self._w, run) != len(run):  # (room was counted: never short)
                        self.drain()
                        return None
                    fd = -1
                    continue
                fd, pos, length = run
                while length:
                    got = os.splice(fd, self._w, length, offset_src=pos)
                    if got == 0:  # the end of a file cut short since it was indexed
                        self.drain()
                        return None
                    pos += got
                    length -= got
        except OSError as e:
            self.drain()
            if e.errno == errno.EINVAL and fd >= 0:  # the file's filesystem has no splice_read
                self._cannot(fd, e)
            return None
        except BaseException:  # (a signal handler's exception)
            self.drain()
            raise
        return size

    def send(self, size: int, extra: int = 0) -> None:
        """Splice the reply `fill` put in the pipe (`size` bytes of data, `extra` bytes of
        header past the 16 of a reply) to the device, in one call. A request interrupted
        meanwhile (ENOENT) needs no reply; other errors raise. The pipe is empty afterwards,
        whatever happened."""
        try:
            os.splice(self._r, self.device, 16 + extra + size)
        except BaseException as e:
            self.drain()
            if not (isinstance(e, OSError) and e.errno == errno.ENOENT):
                raise

    def drain(self) -> None:
        """Empty the pipe."""
        try:
            while os.read(self._r, self.slots * PAGE):
                pass
        except BlockingIOError:
            pass

    def _cannot(self, fd: int, e: OSError) -> None:
        self._unable.add(fd)
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = f"descriptor {fd}"
        log.info("%s cannot be spliced from (%s): its reads are copied", name, e.strerror)


class _Job(NamedTuple):
    ino: int
    unique: int
    runs: list[Piece]  # to splice; or [] and `work`
    started: int  # when the worker took the READ up (`time.perf_counter_ns()`)
    room: threading.BoundedSemaphore  # released when answered
    work: Callable[[], bytes] | None = None  # the rest of a READ counted by the worker's core


#: What `ColdReads.cold` answers.
CACHED, COLD, UNSEEN = 0, 1, 2


class ColdReads:
    """A worker's threads for READs that would wait for the disk (see the module docstring):
    the worker offers each READ it would splice (`take`), and the rest of each copied READ
    its core hands back (`take_work`: a file on a filesystem that cannot say what it caches).
    The first thread takes READs whose bytes are not in the page cache; up to
    `len(counters)` threads take those of a filesystem that cannot say. Each answers on
    `device` and counts in a slot of its own, `counters[i]`. `core` lends them only its rule
    for failures (`Core.errno_for`)."""

    def __init__(self, core: Core, device: int, counters: Counters | list[Counters]) -> None:
        self.core = core
        self.device = device
        self.counters = counters if isinstance(counters, list) else [counters]
        self.broken = False  # no thread to hand READs to: the worker keeps them
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._room = threading.BoundedSemaphore(COLD_WAITING)
        self._unseen_room = threading.BoundedSemaphore(UNSEEN_WAITING)
        self._threads: list[tuple[threading.Thread, Splicer]] = []
        self._probe = bytearray(1)
        self._cannot_tell: set[int] = set()  # descriptors without RWF_NOWAIT

    def cold(self, runs: list[Piece]) -> int:
        """`COLD` when some bytes of `runs` are not in the page cache, as far as a one-byte
        `RWF_NOWAIT` read at the first and the last byte of each run says; `UNSEEN` where the
        file's filesystem cannot tell; else `CACHED`."""
        probe = self._probe
        for run in runs:
            if isinstance(run, bytes):
                continue
            fd, pos, length = run
            if fd in self._cannot_tell:
                return UNSEEN
            for at in (pos, pos + length - 1) if length > 1 else (pos,):
                try:
                    if os.preadv(fd, [probe], at, os.RWF_NOWAIT) != 1:
                        return COLD  # (past the end: the thread finds the file cut short)
                except BlockingIOError:
                    return COLD
                except OSError as e:
                    if e.errno in NO_NOWAIT:
                        self._cannot_tell.add(fd)
                        return UNSEEN
                    return CACHED  # (any other error: the worker's own read meets it)
        return CACHED

    def take(self, ino: int, unique: int, runs: list[Piece], started: int) -> bool:
        """Hand READ `unique` (of `ino`'s bytes in `runs`) to a thread unless they are
        `CACHED`: True when one took it; False when they are cached, when as many READs wait
        already as may (`COLD_WAITING`, `UNSEEN_WAITING`), or when there is no thread (a
        reply one sent was refused, or none could be started)."""
        if self.broken:
            return False
        state = self.cold(runs)
        if state == CACHED:
            return False
        return self._put(_Job(ino, unique, runs, started, self._room), state == UNSEEN)

    def take_work(self, ino: int, unique: int, work: Callable[[], bytes], started: int) -> bool:
        """Hand READ `unique` of `ino`, whose bytes `work()` reads (the core has counted it),
        to a thread: True when one took it (then it answers); False as `take` says."""
        if self.broken:
            return False
        return self._put(_Job(ino, unique, [], started, self._unseen_room, work), True)

    @property
    def _splicer(self) -> Splicer | None:
        """The first thread's splicer (None before it starts)."""
        return self._threads[0][1] if self._threads else None

    def _put(self, job: _Job, unseen: bool) -> bool:
        if not job.room.acquire(blocking=False):
            return False
        wanted = len(self.counters) if unseen else 1
        if len(self._threads) < wanted and not self._start(wanted) and not self._threads:
            job.room.release()
            return False
        self._jobs.put(job)
        return True

    def close(self) -> None:
        """Let the threads answer what they hold (briefly: the mount may be going away)."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread, splicer in self._threads:
            thread.join(timeout=1)
            if not thread.is_alive():
                splicer.close()

    def _start(self, wanted: int) -> bool:
        """Start threads until there are `wanted`: False when one could not be."""
        while len(self._threads) < wanted:
            try:
                splicer = Splicer(self.device)
            except OSError as e:  # (out of descriptors, say): the worker keeps its reads
                if not self._threads:
                    log.warning("no thread for cold reads (%s): a worker waits for its reads", e)
                    self.broken = True
                return False
            n = len(self._threads)
            thread = threading.Thread(
                target=self._serve, args=(splicer, self.counters[n]), name="cold reads",
                daemon=True,
            )  # fmt: skip
            self._threads.append((thread, splicer))
            thread.start()
        return True

    def _serve(self, splicer: Splicer, counters: Counters) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())  # all to the worker
        while (job := self._jobs.get()) is not None:
            try:
                if job.work is not None:
                    self._work(job, counters)
                else:
                    self._answer(splicer, job, counters)
            except Exception:  # a bug: said, that READ fails, the worker keeps the next ones
                self.broken = True
                log.exception("a cold read of inode %d failed", job.ino)
                self._reply(OUT_HEADER.pack(16, -errno.EIO, job.unique), job, counters)
            finally:
                job.room.release()

    def _work(self, job: _Job, counters: Counters) -> None:
        """Answer a READ whose bytes `job.work()` reads (counted by the worker's core)."""
        assert job.work is not None
        try:
            data = job.work()
            reply = OUT_HEADER.pack(16 + len(data), 0, job.unique) + data
            counters.values[READS_COLD] += 1
        except Exception as exc:
            reply = self._failed(exc, job, counters)
        counters.served(_clock() - job.started)
        self._reply(reply, job, counters)

    def _answer(self, splicer: Splicer, job: _Job, counters: Counters) -> None:
        """Splice the READ's bytes, or copy them where a splice cannot (`Splicer.fill`); EIO
        when they are not all there (a file cut short since it was indexed)."""
        size = splicer.fill(job.unique, job.runs)
        if size is not None:
            counters.served(_clock() - job.started)
            counters.sent(size, cold=True)
            try:
                splicer.send(size)
                return
            except OSError as e:
                if e.errno == errno.ENODEV:  # unmounted
                    return
                self.broken = True
                log.warning("a spliced reply was refused (%s): a worker waits for its reads", e)
                reply = self._failed(e, job, counters)
        else:
            try:
                data = b"".join(_read_exactly(run) for run in job.runs)
                counters.sent(len(data), spliced=False, cold=True)
                reply = OUT_HEADER.pack(16 + len(data), 0, job.unique) + data
            except (OSError, ImagenetfsError) as exc:
                reply = self._failed(exc, job, counters)
            counters.served(_clock() - job.started)
        self._reply(reply, job, counters)

    def _failed(self, exc: Exception, job: _Job, counters: Counters) -> bytes:
        """The reply to a READ that failed with `exc`: said and counted by the core's rule."""
        return OUT_HEADER.pack(16, -self.core.errno_for(exc, "read", job.ino, counters), job.unique)

    def _reply(self, reply: bytes, job: _Job, counters: Counters) -> None:
        try:
            os.write(self.device, reply)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENODEV):  # interrupted; unmounted
                answer_refused(self.device, self.core, "read", job.ino, job.unique, len(reply),
                               e, counters)  # fmt: skip


def _read_exactly(run: Piece) -> bytes:
    if isinstance(run, bytes):
        return run
    fd, pos, length = run
    data = os.pread(fd, length, pos)
    if len(data) != length:
        raise CorruptImageError(
            f"truncated: {length} bytes at byte {pos} wanted, {len(data)} there "
            "(the file changed since it was indexed)"
        )
    return data


def store(device: int, ino: int, data: bytes, counters: Counters) -> bool:
    """Send `data` to the kernel's page cache as file `ino`'s bytes from its byte 0
    (FUSE_NOTIFY_STORE, copied), and count them: True when the kernel took them."""
    size = len(data)
    header = OUT_HEADER.pack(16 + STORE_EXTRA + size, NOTIFY_STORE, 0)
    try:
        os.writev(device, [header + STORE_OUT.pack(ino, 0, size, 0), data])
    except OSError as e:  # (the file gone from the kernel's inodes: nothing to store)
        log.debug("a push of inode %d was refused: %s", ino, e)
        return False
    pushed(counters, size)
    return True


def splice_store(splicer: Splicer, ino: int, runs: list[Piece], counters: Counters) -> bool | None:
    """Send file `ino`'s bytes in `runs` to the kernel's page cache, spliced, and count them:
    True when the kernel took them, False when it refused them, None when they could not be
    spliced (`Splicer.fill_store`: nothing was sent)."""
    size = splicer.fill_store(ino, runs)
    if size is None:
        return None
    try:
        splicer.send(size, STORE_EXTRA)
    except OSError as e:  # (the file gone from the kernel's inodes: nothing to store)
        log.debug("a push of inode %d was refused: %s", ino, e)
        return False
    pushed(counters, size)
    return True


def pushed(counters: Counters, size: int) -> None:
    """Count a file pushed with `size` bytes (`Worker._push`)."""
    counts = counters.values
    counts[FILES_PUSHED] += 1
    counts[BYTES_PUSHED] += size
    counts[BYTES_READ] += size  # (file data served, as a READ's)


class _Push(NamedTuple):
    ino: int
    reply: bytes  # the IOCTL's answer, sent once the push is done or given up
    runs: list[Piece] | None  # the file's bytes, stored as they are read: spliced
    work: Callable[[], bytes] | None = None  # or the core's read of them (the disk, inflating)
    data: bytes | None = None  # or the bytes themselves (a virtual file, a block cache's)
    at_hand: bool = False  # waits for no disk and no inflating (`PUSH_WAITING_AT_HAND`)


class Pushes:
    """A worker's thread for the pushes that would wait (see the module docstring): the
    worker hands it an IOCTL (`take`) with the answer it made and where the file's bytes are
    to be had; the thread reads them -- splices the runs of bytes stored as they are read,
    or runs the core's read, which inflates -- sends them to the kernel (FUSE_NOTIFY_STORE),
    counts them in `counters` (a slot of its own), then sends the IOCTL's answer. A thread of
    its own, not a cold-read thread: its store may wait for a READ of the same file that
    another reader sent meanwhile (the kernel locks a READ's pages until it is answered), and
    that READ must never wait behind it. A push that fails (a corrupt block, an I/O error) is
    given up, said at debug level only: the READs then come as without it, and answer (and
    count) the failure."""

    def __init__(self, device: int, counters: Counters, *, splice: bool) -> None:
        self.device = device
        self.counters = counters
        self.splice = splice
        self.broken = False  # a bug met, or no thread: no more pushes that wait
        self._jobs: queue.SimpleQueue[_Push | None] = queue.SimpleQueue()
        self._room = threading.BoundedSemaphore(PUSH_WAITING)
        self._room_at_hand = threading.BoundedSemaphore(PUSH_WAITING_AT_HAND)
        self._thread: threading.Thread | None = None
        self._splicer: Splicer | None = None

    def take(self, job: _Push) -> bool:
        """Hand a push to the thread (started on the first): True when it took it -- then it
        answers the IOCTL; False when as many as may (`PUSH_WAITING`, `PUSH_WAITING_AT_HAND`)
        wait already, or there is no thread."""
        room = self._room_for(job)
        if self.broken or not room.acquire(blocking=False):
            return False
        if self._thread is None:
            try:
                self._splicer = Splicer(self.device) if self.splice else None
            except OSError as e:  # (out of descriptors, say): the files are READ
                log.warning("no pipe for pushes (%s): files are READ", e)
                self.broken = True
                room.release()
                return False
            self._thread = threading.Thread(target=self._serve, name="pushes", daemon=True)
            self._thread.start()
        self._jobs.put(job)
        return True

    def _room_for(self, job: _Push) -> threading.BoundedSemaphore:
        return self._room_at_hand if job.at_hand else self._room

    def close(self) -> None:
        """Let the thread answer what it holds (briefly: the mount may be going away)."""
        if self._thread is None:
            return
        self._jobs.put(None)
        self._thread.join(timeout=1)
        if not self._thread.is_alive() and self._splicer is not None:
            self._splicer.close()

    def _serve(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())  # all to the worker
        while (job := self._jobs.get()) is not None:
            try:
                self._push(job)
            except Exception:  # a bug: said; no more pushes that wait, the READs come
                self.broken = True
                log.exception("a push of inode %d failed", job.ino)
            finally:
                self._room_for(job).release()
                try:
                    os.write(self.device, job.reply)
                except OSError as e:  # (interrupted: ENOENT; unmounted: ENODEV)
                    log.debug("the ioctl of inode %d was not answered: %s", job.ino, e)

    def _push(self, job: _Push) -> None:
        splicer = self._splicer
        if (
            job.runs is not None
            and splicer is not None
            and splice_store(splicer, job.ino, job.runs, self.counters) is not None
        ):
            return  # (stored, or refused: else copied below)
        try:
            if job.data is not None:
                data = job.data
            elif job.work is not None:
                data = job.work()
            else:
                assert job.runs is not None
                data = b"".join(_read_exactly(run) for run in job.runs)
        except (OSError, ImagenetfsError) as e:  # (the READs that come say it, and count it)
            log.debug("a push of inode %d was given up: %s", job.ino, e)
            return
        store(self.device, job.ino, data, self.counters)


class Worker:
    """Answers the requests that arrive on `fd` until the mount goes away (ENODEV, or the end
    of a socket in the tests); with `splice`, sends what it can of READs by splicing."""

    def __init__(
        self,
        core: Core,
        fd: int,
        *,
        lock_fd: int | None = None,
        splice: bool = False,
        cold: Counters | list[Counters] | None = None,
        ahead: bool = False,
        sent: memoryview | None = None,
        push: Counters | None = None,
        others: int = 0,
    ) -> None:
        self.core = core
        self.fd = fd
        self.lock_fd = lock_fd
        self.splicer = Splicer(fd) if splice else None
        # (with `cold`, the counters of the cold reads' threads: see the module docstring)
        self.cold = ColdReads(core, fd, cold) if splice and cold is not None else None
        core.defer_unseen = self.cold is not None
        # (with `ahead`, reading ahead of a reader in image order: ahead.py)
        self.ahead = Ahead(core.counters) if ahead else None
        # (with `sent`, the shared bits of files whose bytes went to the kernel: `_push`;
        # with `push` too, the counters of the thread for the pushes that wait)
        self.sent = sent
        self.pushes = None if sent is None or push is None else Pushes(fd, push, splice=splice)
        self.others = others  # (workers to answer the READs a store may wait for: `_push_here`)
        self.done = False  # DESTROY answered
        self._stored_lookup = core.stored_lookup
        self._handlers: dict[int, Callable[[int, memoryview], bytes]] = {
            fuse.LOOKUP: self._lookup,
            fuse.GETATTR: self._getattr,
            fuse.READDIR: self._readdir,
            fuse.READDIRPLUS: self._readdirplus,
            fuse.OPEN: self._open,
            fuse.OPENDIR: self._opendir,
            fuse.RELEASE: self._nothing,
            fuse.RELEASEDIR: self._nothing,
            fuse.READLINK: lambda ino, _: self.core.readlink(ino),
            fuse.STATFS: self._statfs,
            fuse.ACCESS: self._access,
            fuse.GETXATTR: self._getxattr,
            fuse.LISTXATTR: self._listxattr,
            fuse.DESTROY: self._destroy,
        }
        self._handlers.update(dict.fromkeys(fuse.WRITES, self._write))

    def run(self) -> None:
        steady_heap()
        try:
            self._serve()
        finally:
            # the last block-cache counts, for the supervisor's last look: first, since the
            # joins below take up to a second each, and a second SIGTERM (`STOP_AGAIN`) may cut
            # them short; then again, with what the threads counted as they finished
            self.core.refresh()
            if self.cold is not None:
                self.cold.close()
            if self.pushes is not None:
                self.pushes.close()
            self.core.refresh()
            if self.splicer is not None:
                self.splicer.close()

    def _serve(self) -> None:
        buffer = bytearray(fuse.BUFFER)  # one buffer for every request: no 1 MiB allocation each
        view = memoryview(buffer)
        while not self.done:
            try:
                length = os.readv(self.fd, [buffer])
            except OSError as e:
                if e.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue
                if e.errno == errno.ENODEV:  # unmounted
                    return
                raise
            if length == 0:
                return
            reply = self.handle(view[:length])
            if reply is not None:
                try:
                    os.write(self.fd, reply)
                except OSError as e:
                    # ENOENT: the request was interrupted meanwhile; ENODEV: unmounted (the
                    # next read says so); anything else: refused (see the module docstring)
                    if e.errno not in (errno.ENOENT, errno.ENODEV):
                        self._refused(view, len(reply), e)

    def _refused(self, request: memoryview, size: int, exc: OSError) -> None:
        _, opcode, unique, nodeid = IN_START.unpack_from(request)
        what = fuse.NAMES.get(opcode, f"opcode {opcode}")
        answer_refused(self.fd, self.core, what, nodeid, unique, size, exc)

    def handle(self, request: memoryview) -> bytes | None:
        """The reply to one request (header included), or None when none is due -- or when
        it has gone to the device already (a spliced READ)."""
        _, opcode, unique, nodeid = IN_START.unpack_from(request)
        if opcode in NO_REPLY:
            return None
        body = request[IN_HEADER.size :]
        try:
            if opcode == fuse.READ:  # (the one request that may send its own reply)
                data = self._read(nodeid, body, unique)
                if data is None:
                    return None
                payload = data
            elif opcode == fuse.IOCTL:
                return self._ioctl(nodeid, unique)
            else:
                payload = self._handlers.get(opcode, self._refuse)(nodeid, body)
        except Exception as exc:
            what = fuse.NAMES.get(opcode, f"opcode {opcode}")
            return OUT_HEADER.pack(16, -self.core.errno_for(exc, what, nodeid), unique)
        return OUT_HEADER.pack(16 + len(payload), 0, unique) + payload

    def _finish(self, blocked: Blocked) -> Any:
        """The blocking rest of a core operation, whose result it returns; one at a time per
        key across workers."""
        if blocked.key is None or self.lock_fd is None:
            return blocked.work()
        stripe = blocked.key % LOCK_STRIPES
        try:
            fcntl.lockf(self.lock_fd, fcntl.LOCK_EX, 1, stripe)
        except OSError as e:  # a temporary directory without record locks
            log.warning("no record locks (%s): workers may resize a file twice", e)
            self.lock_fd = None
            return blocked.work()
        try:
            return blocked.work()
        finally:
            fcntl.lockf(self.lock_fd, fcntl.LOCK_UN, 1, stripe)

    # --- requests: unpack, call the core, pack -----------------------------------------------

    # (the four operations that may raise `Blocked`: a resize, in this process)

    def _read(self, ino: int, body: memoryview, unique: int) -> bytes | None:
        """The bytes of a READ; None when they have been spliced to the device (see the
        module docstring)."""
        started = _clock()
        offset, size = fuse.READ_IN.unpack_from(body)[1:3]
        splicer = self.splicer
        runs = None if splicer is None else self.core.locate_read(ino, offset, size)
        if self.ahead is not None:
            self._ahead(ino, offset, runs)
        sent = self.sent
        if sent is not None and offset == 0 and (ino >> 3) < len(sent):
            sent[ino >> 3] |= 1 << (ino & 7)
        cold = self.cold
        if runs and cold is not None and cold.take(ino, unique, runs, started):
            return None  # (answered and counted by the cold reads' thread)
        spliced: int | None = None  # bytes in the pipe, ready to go
        handed = False  # to a thread, which answers and counts its latency
        try:
            if splicer is not None and runs is not None:
                spliced = splicer.fill(unique, runs)
            if spliced is None:
                data: bytes = self.core.read(ino, offset, size)
            else:
                self.core.count_spliced(spliced)
        except Blocked as blocked:
            # (no key: a read of a file whose filesystem cannot say what it caches)
            if blocked.key is None and cold is not None:
                handed = cold.take_work(ino, unique, blocked.work, started)
                if handed:
                    return None
            data = self._finish(blocked)
        finally:
            if not handed:
                self.core.read_served(started)
        if splicer is None or spliced is None:
            return data
        try:
            splicer.send(spliced)
        except OSError as e:
            if e.errno != errno.ENODEV:  # (unmounted: the next request says so)
                self.splicer = None  # (no kernel has refused one yet: copy from now on)
                splicer.close()
                log.warning("a spliced reply was refused (%s): READs are copied from now on", e)
            raise
        return None

    def _ioctl(self, ino: int, unique: int) -> bytes | None:
        """No ioctls (`Core.ioctl`): the answer, once the file's bytes, maybe, have gone to the
        kernel (`_push`) -- or None when the push thread took them: it answers once they have.
        The answer is the same either way."""
        try:
            payload = self.core.ioctl(ino)
            reply = OUT_HEADER.pack(16 + len(payload), 0, unique) + payload
        except Exception as exc:
            reply = OUT_HEADER.pack(16, -self.core.errno_for(exc, "ioctl", ino), unique)
        sent = self.sent
        if sent is None or (ino >> 3) >= len(sent) or sent[ino >> 3] & (1 << (ino & 7)):
            return reply
        sent[ino >> 3] |= 1 << (ino & 7)
        try:
            return None if self._push(ino, reply) else reply
        except Exception:  # a bug: said; the IOCTL is answered as ever, the READs come
            log.exception("a push of inode %d failed", ino)
            return reply

    def _push(self, ino: int, reply: bytes) -> bool:
        """Send the bytes of file `ino`, at most `PUSH_MAX`, to the kernel's page cache for it
        (FUSE_NOTIFY_STORE): Python's `open()` asks `isatty()` of a file (this IOCTL) before
        it reads it, and the READs it would send next are then answered by the kernel at
        once. By the push thread (`Pushes`), which answers the IOCTL with `reply` once done:
        True then -- or, bytes at hand, from this loop when that is safe (`_push_here`): a
        store waits for the pages of another reader's READ of the file in flight, which this
        loop may be the one to answer. A file pushed is shown to the read-ahead (`_ahead`) as
        a READ from its start would be: a reader in image order whose files are pushed still
        has the image read ahead of it."""
        runs = None if self.splicer is None else self.core.locate_read(ino, 0, PUSH_MAX + 1)
        if runs:  # (stored as they are read)
            if sum(len(r) if isinstance(r, bytes) else r.length for r in runs) > PUSH_MAX:
                return False
            cached = self.cold is not None and self.cold.cold(runs) == CACHED
            job = _Push(ino, reply, runs, at_hand=cached)
        else:
            try:
                data = self.core.whole_file(ino, PUSH_MAX)
                job = _Push(ino, reply, None, data=data, at_hand=True)
            except Blocked as blocked:
                job = _Push(ino, reply, None, blocked.work)
            except Exception as e:  # (the READs that come say it, and count it)
                log.debug("a push of inode %d was given up: %s", ino, e)
                return False
            if job.data is None and job.work is None:
                return False
        here = self._push_here(job) if job.at_hand else None
        if here is not None:
            if here and self.ahead is not None:
                self._ahead(ino, 0, runs)
            return False  # (answered now)
        if self.pushes is None or not self.pushes.take(job):
            # (no room: the file's READs come, and a later open may push it)
            sent = self.sent
            assert sent is not None
            sent[ino >> 3] &= ~(1 << (ino & 7))
            return False
        if self.ahead is not None:  # (no READ of it will come: the read-ahead sees it now)
            self._ahead(ino, 0, runs)
        return True

    def _push_here(self, job: _Push) -> bool | None:
        """Store a push whose bytes are at hand from this loop, saving the push thread's hop
        (~10% of a first epoch of cached files): True when stored, False when refused, None
        when not made here -- no other worker, or one is storing already (`PUSH_TOKEN`, a
        record lock; one at a time), or the bytes could not be spliced. A store may wait for
        another reader's READ of the file in flight; with one worker at most storing, another
        worker's loop is free to answer it, as it never waits for a store."""
        lock_fd = self.lock_fd  # (None also once record locks failed: `_finish`)
        if not self.others or lock_fd is None:
            return None
        try:
            fcntl.lockf(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, PUSH_TOKEN)
        except OSError:  # (another worker holds it)
            return None
        try:
            if job.data is not None:
                return store(self.fd, job.ino, job.data, self.core.counters)
            assert job.runs is not None and self.splicer is not None
            return splice_store(self.splicer, job.ino, job.runs, self.core.counters)
        finally:
            fcntl.lockf(lock_fd, fcntl.LOCK_UN, 1, PUSH_TOKEN)

    def _ahead(self, ino: int, offset: int, runs: list[Piece] | None) -> None:
        """Tell the read-ahead (ahead.py) where a file read from its start lies. (Not a
        shard's: its runs come with bytes between them, and its view asks ahead itself.)"""
        if offset:
            return
        if runs:
            first, last = runs[0], runs[-1]
            if any(isinstance(run, bytes) for run in runs):
                return
            assert isinstance(first, Run) and isinstance(last, Run)
            if last.fd == first.fd:
                assert self.ahead is not None
                self.ahead.saw(first.fd, first.offset, last.offset + last.length)
                return
        span = self.core.span(ino)
        if span is not None:
            assert self.ahead is not None
            self.ahead.saw(span.fd, span.offset, span.offset + span.length)

    def _lookup(self, parent: int, body: memoryview) -> bytes:
        """The short way (the stored record) first; the long way for the dots, the views,
        missing names and errors."""
        name = bytes(body[:-1])  # (then a NUL)
        attrs = self._stored_lookup(parent, name)
        if attrs is None:
            try:
                attrs = self.core.lookup(parent, name)
            except Blocked as blocked:
                attrs = self._finish(blocked)
        ino, mode, nlink, uid, gid, size, blocks, mtime, valid = attrs  # (unpacked: hot path)
        return fuse.ENTRY_OUT.pack(
            ino, 0, valid, valid, 0, 0,
            ino, size, blocks, mtime, mtime, mtime, 0, 0, 0, mode, nlink, uid, gid,
            0, BLOCK_SIZE, 0,
        )  # fmt: skip

    def _getattr(self, ino: int, body: memoryview) -> bytes:
        try:
            attrs = self.core.getattr(ino)
        except Blocked as blocked:
            attrs = self._finish(blocked)
        ino, mode, nlink, uid, gid, size, blocks, mtime, valid = attrs
        return fuse.ATTR_OUT.pack(
            valid, 0, 0,
            ino, size, blocks, mtime, mtime, mtime, 0, 0, 0, mode, nlink, uid, gid,
            0, BLOCK_SIZE, 0,
        )  # fmt: skip

    def _open(self, ino: int, body: memoryview) -> bytes:
        try:
            self.core.open(ino, _u32(body))
        except Blocked as blocked:
            self._finish(blocked)
        # Checked: now said the kernel's way for "no open needed" (see the module docstring).
        raise NotImplemented_("no open needed")

    def _opendir(self, ino: int, body: memoryview) -> bytes:
        self.core.opendir(ino, _u32(body))
        return fuse.OPEN_OUT.pack(0, 0, 0)

    def _readdir(self, ino: int, body: memoryview, plus: bool = False) -> bytes:
        offset, size = fuse.READ_IN.unpack_from(body)[1:3]
        entries = self.core.readdir(ino, offset)
        out: list[bytes] = []
        if not plus:  # the dots, then the children as stored in the index, where they are
            dots = max(0, 2 - offset)
            size -= _pack(itertools.islice(entries, dots), out, size, b"")
            if len(out) < dots:  # (a buffer too small even for them)
                return b"".join(out)
            try:
                stored = self.core.stored_listing(ino, max(offset, 2), size)
            except InvalidRequest:  # no room left for a child: the dots go alone
                if not out:
                    raise
                return b"".join(out)
            if stored is not None:
                out.append(stored)
                return b"".join(out)
        # READDIRPLUS (not asked for, see above) gets the same records, each after an
        # entry_out with nodeid 0: "no attributes"
        _pack(entries, out, size, fuse.NO_ATTRIBUTES if plus else b"")
        return b"".join(out)

    def _readdirplus(self, ino: int, body: memoryview) -> bytes:
        return self._readdir(ino, body, plus=True)

    def _statfs(self, ino: int, body: memoryview) -> bytes:
        s = self.core.statfs()
        return fuse.STATFS_OUT.pack(
            s.blocks, 0, 0, s.files, 0, s.block_size, s.name_max, s.block_size, 0
        )

    def _access(self, ino: int, body: memoryview) -> bytes:
        self.core.access(ino, _u32(body))
        return b""

    def _getxattr(self, ino: int, body: memoryview) -> bytes:
        return self.core.getxattr(ino, bytes(body[fuse.GETXATTR_IN.size :]).split(b"\0", 1)[0])

    def _listxattr(self, ino: int, body: memoryview) -> bytes:
        names = b"".join(name + b"\0" for name in self.core.listxattr(ino))
        return fuse.GETXATTR_OUT.pack(len(names), 0) if _u32(body) == 0 else names

    def _destroy(self, ino: int, body: memoryview) -> bytes:
        self.done = True
        return b""

    def _nothing(self, ino: object, body: memoryview) -> bytes:
        return b""

    def _write(self, ino: int, body: memoryview) -> bytes:
        raise ReadOnly(ino)  # (a `ro` mount: the kernel refuses writes before they come here)

    def _refuse(self, ino: int, body: memoryview) -> bytes:
        raise NotImplemented_("not implemented")  # FLUSH and the rest: not sent again


_clock = time.perf_counter_ns


def _u32(body: memoryview) -> int:
    value: int = fuse.OPEN_IN.unpack_from(body)[0]
    return value


def _pack(entries: Iterable[Listed], out: list[bytes], size: int, prefix: bytes) -> int:
    """Append READDIR records of `entries` to `out` while they fit in `size` bytes; the bytes
    used."""
    used = 0
    for entry in entries:
        record = prefix + fuse.dirent(entry.ino, entry.cookie, DTYPE[entry.kind], entry.name)
        if used + len(record) > size:
            break
        out.append(record)
        used += len(record)
    return used


def push_wanted() -> bool:
    """Whether workers push small files' bytes with their IOCTL (`Worker._push`): unless
    `IMAGENETFS_PUSH=0`."""
    return os.environ.get(PUSH_ENV, "1").strip() != "0"
