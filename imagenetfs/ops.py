"""The operation core: every FUSE operation, as plain Python over `views.Tree`.

Both ways of serving call it -- `fs.py` (pyfuse3, `--workers 0`) converts its results to
pyfuse3's types and hops to threads, `wire.py` (the worker processes) unpacks requests and
packs replies -- so what a request answers is decided here, once:

- lookup (with `.` and `..`), getattr, readlink, opendir and readdir (the dots, the cookies,
  the index's stored listings), open (write flags: EROFS; a directory: EISDIR), read, statfs,
  access, getxattr/listxattr and ioctl;
- one attribute record, `Attributes`, built in one place (`_attributes`) with one timeout
  policy: a year, for an immutable tree (shorter when the mount has an idle timeout: the
  core's `timeout`) -- except a resized file whose size is not known yet, which a listing
  hands out uncached;
- resized files: a view file's size is known once it has been resized or found in the resize
  cache. Until then, lookup, getattr, open and read resize it first; a listing resizes nothing.
  Two bounded memos keep what is known: sizes, and the bytes of the last few resized files;
- errors: operations raise the exceptions of errors.py, and `errno_for` is the one rule for
  the answer -- an `Answer` is a regular answer (not logged, not counted); anything else is a
  failure: counted in `errors`, answered EIO and logged, in one line when it is a failure we
  know (a corrupt block, an I/O error, an image that cannot be resized), with the traceback
  when it is a bug;
- counters (`Counters`), the same in both ways of serving, and the latency of each READ;
- where a READ's bytes lie (`locate_read`), for the worker adapter that splices them from the
  image file instead of reading them (wire.py): answered for file bytes stored as they are
  read, None for everything else -- and then, as for any error, `read` answers. A READ sent
  from its runs is counted by `count_spliced` as `read` counts one, and in `reads_spliced`;
  and a small file's whole bytes (`whole_file`), for a worker that pushes them to the kernel
  before their READs come (wire.py), counted by the worker as it sends them.

Read latency. Each adapter takes `time.perf_counter_ns()` as it enters its READ handler and
calls `read_served(started)` when the reply's bytes are ready (also when the read failed): what
is counted is the operation core plus the blocking rest it handed back (a cold read, a resize;
under pyfuse3 also the wait for a thread), not the kernel's queue, unpacking the request or
writing the reply. The time goes into one of `LATENCY_BUCKETS` power-of-two buckets, `(ns >>
10).bit_length()`: bucket 0 holds reads under 2**10 ns (~1 µs), bucket k those under
2**(k+10) ns, the last (k = 24) everything from 2**33 ns (8.6 s) up -- one clock pair, a shift,
`bit_length` and two counter increments per read. The buckets and the sum of nanoseconds are
counter slots like the others (shared memory for a worker), so the supervisor sums them across
workers; `latency_quantile` reads a percentile off the sums: the upper bound of the bucket that
holds it (within 2x of the truth, never below it).

The decompressed-block caches of the images (squashfs.py) count their own hits and misses;
`refresh` copies them into the counter slots, on the first read after each second
(`REFRESH_NS`), at the end of a worker and whenever `statistics()` is asked for.

Blocking. Three things may have to wait: a read of bytes that are not in the page cache (or
that need decompressing), a resize, and the shard views' layout (made once per mount by a
process of its own: views/layoutfile.py). An operation that would wait raises `Blocked`, which
carries the rest of the work as a callable; the adapter runs it where waiting harms no other
request and answers with its result. A resize's `Blocked` carries the file's inode as `key`:
concurrent requests for one file must resize it once, and the adapter brings the waiting --
record locks across worker processes (wire.py), a `trio.Event` under pyfuse3 (fs.py). A
request that has waited for another finds the work done: the size known, the bytes in the
resize cache. Worker processes have nothing else to do meanwhile, so their core reads blocking
(`blocking_reads=True`), makes the layout where it is, and only resizes raise. Under pyfuse3 a
lookup, getattr, readdir, open or read into the shard views before the layout is made raises
(no key: concurrent ones wait for the first in their threads, on the view's lock).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any, Generic, NamedTuple, TypeVar

from imagenetfs.errors import (
    Answer,
    CorruptImageError,
    ImagenetfsError,
    InvalidRequest,
    IsADirectory,
    NoAttribute,
    NotADirectory,
    NotATerminal,
    ReadOnly,
    errno_of,
)
from imagenetfs.index import DIR, FILE, MAX_NAME, ROOT_INO, SYMLINK, Node
from imagenetfs.squashfs import Piece, Run, SquashImage, WouldBlock
from imagenetfs.views.resize import ResizeCache, ResizeSpec
from imagenetfs.views.shards import SHARDS
from imagenetfs.views.tree import RESIZED, VIEW_SHIFT, Tree

log = logging.getLogger(__name__)

#: Seconds the kernel may keep an entry and its attributes: the tree never changes while mounted.
TIMEOUT = 365 * 86400
#: st_blksize, and statfs's block size.
BLOCK_SIZE = 4096
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
#: Bytes of the last resized files kept, per serving process (for concurrent readers).
RECENT_RESIZED = 64
#: Sizes of resized files kept, per serving process (the resize cache keeps them all).
KNOWN_SIZES = 100_000


class Attributes(NamedTuple):
    """What lookup and getattr answer about an entry."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    blocks: int  # of 512 bytes
    mtime: int  # seconds; also atime and ctime
    timeout: int  # seconds the kernel may keep the entry and these attributes; 0: ask again


#: `Attributes(...)` without the Python-level `__new__` of a NamedTuple: one frame less on
#: every lookup and getattr.
_new_attributes = tuple.__new__
_DOTS = frozenset((b".", b".."))
_ROOT_VIEWS = frozenset((RESIZED, SHARDS))


class Listed(NamedTuple):
    """One entry of a listing."""

    cookie: int  # where a listing resumes after this entry
    name: bytes
    ino: int
    kind: int  # index.DIR, FILE or SYMLINK


class FsStats(NamedTuple):
    """What statfs answers."""

    block_size: int
    blocks: int  # the files' total size, in blocks
    files: int  # entries
    name_max: int


class Blocked(Exception):
    """The operation must wait: run `work()` where waiting is harmless and answer with its
    result. With a `key`, concurrent requests of that key should run it once."""

    def __init__(self, work: Callable[[], Any], key: int | None = None) -> None:
        super().__init__(key)
        self.work = work
        self.key = key


# --- counters -----------------------------------------------------------------------------

FS_COUNTERS = ("lookups", "getattrs", "readdirs", "opens", "reads", "inline_reads",
               "bytes_read", "errors", "resizes", "reads_spliced", "ioctls",
               "reads_cold", "reads_ahead", "bytes_ahead", "files_pushed",
               "bytes_pushed")  # fmt: skip
CACHE_COUNTERS = ("hits", "misses", "stores", "evictions", "failures")
BLOCK_COUNTERS = ("hits", "misses")  # of the images' decompressed-block caches
LOOKUPS, GETATTRS, READDIRS, OPENS, READS, INLINE_READS, BYTES_READ, ERRORS, RESIZES = range(9)
READS_SPLICED = 9  # of READS: answered by splicing the bytes from the image file (wire.py)
IOCTLS = 10  # isatty()'s TCGETS, one per buffered open() before Python 3.14 (workers only:
#             under pyfuse3, libfuse refuses ioctls itself)
READS_COLD = 11  # of READS: bytes stored as they are read but not in the page cache, sent
#                 by a worker's second thread (wire.ColdReads)
READS_AHEAD, BYTES_AHEAD = 12, 13  # requests to read an image ahead of a reader in image
#                                   order, and their bytes (ahead.py; workers only)
FILES_PUSHED, BYTES_PUSHED = 14, 15  # files whose bytes a worker sent to the kernel's page
#                                     cache before their READs (wire.Worker._push)
CACHE_FIRST = len(FS_COUNTERS)
BLOCK_FIRST = CACHE_FIRST + len(CACHE_COUNTERS)
#: Read-latency buckets (see the module docstring): bucket k counts reads under 2**(k+10) ns,
#: the last one all the rest.
LATENCY_BUCKETS = 25
LATENCY_FIRST = BLOCK_FIRST + len(BLOCK_COUNTERS)
LATENCY_TOP = LATENCY_FIRST + LATENCY_BUCKETS - 1
LATENCY_SUM = LATENCY_FIRST + LATENCY_BUCKETS  # nanoseconds, all reads
#: How often (at most) a serving process copies its block caches' counts into its slots.
REFRESH_NS = 1_000_000_000
_clock = time.perf_counter_ns


def bucket_bound(k: int) -> float:
    """The upper bound of latency bucket `k`, in seconds (inf for the last)."""
    return float("inf") if k >= LATENCY_BUCKETS - 1 else (1 << (k + 10)) / 1e9


def latency_quantile(buckets: list[int], q: float) -> float | None:
    """The `q` quantile (0 < q <= 1) of the reads counted in `buckets`, in seconds: the upper
    bound of the bucket that holds it; the last bucket's lower bound when it is there; None
    without reads."""
    total = sum(buckets)
    if total == 0:
        return None
    rank, seen = q * total, 0
    for k, count in enumerate(buckets[:-1]):
        seen += count
        if seen >= rank:
            return bucket_bound(k)
    return bucket_bound(LATENCY_BUCKETS - 2)  # in the last bucket: its lower bound


class Counters:
    """The counters of one serving process: u64 slots in `memory` -- a slot of shared memory
    for a worker process (`wire.Board`), private memory otherwise. `FS_COUNTERS`, the resize
    cache's `CACHE_COUNTERS`, the block caches' `BLOCK_COUNTERS`, then the read-latency
    buckets and their sum of nanoseconds."""

    SLOTS = LATENCY_SUM + 1

    def __init__(self, memory: memoryview | None = None) -> None:
        self.values = memoryview(bytearray(8 * self.SLOTS)).cast("Q") if memory is None else memory
        # a worker started again goes on from its slot's counts; its caches count from 0
        self._cache_base = list(self.values[CACHE_FIRST:BLOCK_FIRST])
        self._block_base = list(self.values[BLOCK_FIRST:LATENCY_FIRST])

    def served(self, ns: int) -> None:
        """One READ into the latency histogram: `ns` from its adapter taking it up to its
        bytes being ready (see the module docstring)."""
        k = LATENCY_FIRST + (ns >> 10).bit_length()
        values = self.values
        values[k if k < LATENCY_TOP else LATENCY_TOP] += 1
        values[LATENCY_SUM] += ns

    def sent(self, size: int, *, spliced: bool = True, cold: bool = False) -> None:
        """A READ of bytes stored as they are read, answered with `size` of them: counted as
        `Core.read` counts one; in `reads_spliced` when they were spliced (`count_spliced`),
        in `reads_cold` when they were not in the page cache and a worker's second thread
        sent them (wire.py)."""
        values = self.values
        values[READS] += 1
        values[BYTES_READ] += size
        if spliced:
            values[READS_SPLICED] += 1
        if cold:
            values[READS_COLD] += 1

    def update_cache(self, counts: dict[str, int]) -> None:
        for i, name in enumerate(CACHE_COUNTERS):
            self.values[CACHE_FIRST + i] = self._cache_base[i] + counts[name]

    def update_blocks(self, hits: int, misses: int) -> None:
        self.values[BLOCK_FIRST] = self._block_base[0] + hits
        self.values[BLOCK_FIRST + 1] = self._block_base[1] + misses

    @staticmethod
    def report(values: list[int], cache: bool, blocks: bool = False) -> dict[str, Any]:
        """{"fs": counts, "resize_cache": counts (only when there is a cache), "block_cache":
        counts (only when an image has one), "read_latency": {"buckets": [count, ...],
        "sum_ns": n}} of `values`."""
        out: dict[str, Any] = {"fs": dict(zip(FS_COUNTERS, values, strict=False))}
        if cache:
            out["resize_cache"] = dict(
                zip(CACHE_COUNTERS, values[CACHE_FIRST:BLOCK_FIRST], strict=True)
            )
        if blocks:
            out["block_cache"] = dict(
                zip(BLOCK_COUNTERS, values[BLOCK_FIRST:LATENCY_FIRST], strict=True)
            )
        out["read_latency"] = {
            "buckets": list(values[LATENCY_FIRST:LATENCY_SUM]),
            "sum_ns": values[LATENCY_SUM],
        }
        return out


V = TypeVar("V")


class _Memo(Generic[V]):
    """A dict of at most `capacity` entries, the oldest out first; safe across threads."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: dict[int, V] = {}
        self._lock = threading.Lock()

    def get(self, key: int) -> V | None:
        return self._items.get(key)

    def put(self, key: int, value: V) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.capacity:
                del self._items[next(iter(self._items))]

    def __len__(self) -> int:
        return len(self._items)


# --- the core -----------------------------------------------------------------------------


class Core:
    """Every operation of one serving process over `tree`, answered for `uid`/`gid`."""

    def __init__(
        self,
        tree: Tree,
        *,
        uid: int,
        gid: int,
        cache: ResizeCache | None = None,
        counters: Counters | None = None,
        blocking_reads: bool = False,
        timeout: int = TIMEOUT,
    ) -> None:
        self.tree = tree
        self.timeout = timeout  # seconds the kernel may keep entries and attributes
        self.uid, self.gid = uid, gid
        self.cache = cache
        self.counters = counters or Counters()
        self.blocking_reads = blocking_reads
        # with blocking reads: hand back (`Blocked`, no key) the reads of files whose image's
        # filesystem cannot say what it caches, for the adapter to run beside its other work
        # (a worker's cold-read threads, wire.py)
        self.defer_unseen = False
        self._counts = self.counters.values
        self._views = bool(tree.specs)  # (without resized views, no file is ever resized)
        # Under pyfuse3 (reads not blocking), a request into the shard views before their
        # layout is made hands the making to a thread (`_after_layout`): it may take seconds.
        # A worker makes it where it is (it has nothing else to do: wire.py).
        self._layouts = not blocking_reads and tree.shards is not None
        self._recent: _Memo[bytes] = _Memo(RECENT_RESIZED)
        self._sizes: _Memo[int] = _Memo(KNOWN_SIZES)
        # the images with a block cache, and their counts when this core began
        self._block_images = [i for i in tree.index.images if isinstance(i, SquashImage)]
        self._block_start = self._block_counts()
        self._refresh_at = 0

    # --- errors and counters ---------------------------------------------------------------

    def errno_for(
        self, exc: BaseException, what: str, subject: object, counters: Counters | None = None
    ) -> int:
        """The errno answering a request (`what` on `subject`) that raised `exc`, said and
        counted by the one rule of the module docstring (counted in `counters` when another
        thread answers it: a worker's cold reads, wire.py)."""
        if isinstance(exc, Answer):
            return exc.errno
        (counters or self.counters).values[ERRORS] += 1
        if isinstance(exc, ImagenetfsError | OSError):
            log.error("%s(%r): %s", what, subject, exc)
        else:
            log.error("%s(%r) failed", what, subject, exc_info=exc)
        return errno_of(exc)

    def statistics(self) -> dict[str, Any]:
        """Counters and index figures, as `imagenetfs status` shows them."""
        self.refresh()
        stats = Counters.report(
            list(self._counts), self.cache is not None, blocks=bool(self._block_images)
        )
        stats["index"] = asdict(self.tree.index.stats)
        return stats

    def read_served(self, started: int) -> None:
        """Count one READ request into the latency histogram: answered now, taken up by its
        adapter at `started` (`time.perf_counter_ns()`; see the module docstring)."""
        now = _clock()
        self.counters.served(now - started)
        if now > self._refresh_at:
            self._refresh_at = now + REFRESH_NS
            self.refresh()

    def refresh(self) -> None:
        """Copy the block caches' counts into the counter slots."""
        if self._block_images:
            hits, misses = self._block_counts()
            self.counters.update_blocks(hits - self._block_start[0], misses - self._block_start[1])

    def _block_counts(self) -> tuple[int, int]:
        hits = misses = 0
        for image in self._block_images:
            stats = image.statistics()
            hits += stats.cache_hits
            misses += stats.cache_misses
        return hits, misses

    # --- attributes ------------------------------------------------------------------------

    def _attributes(self, node: Node, *, listed: bool = False) -> Attributes:
        """The one attribute builder: the mounting user's, read-only (the modes come from the
        index), the size as served, cached by the kernel for `timeout` -- except a view file
        whose resized size is not known yet: a listing (`listed`) shows its original size,
        uncached; anything else resizes it first (`Blocked`)."""
        size, timeout = node.size, self.timeout
        spec = self.tree.spec_of(node) if self._views else None
        if spec is not None:
            known = self.known_size(node, spec)
            if known is not None:
                size = known
            elif listed:
                timeout = 0
            else:
                raise Blocked(lambda: self._resized_attributes(node), node.ino)
        return _new_attributes(Attributes, (
            node.ino, node.mode, node.nlink, self.uid, self.gid, size, (size + 511) // 512,
            node.mtime, timeout,
        ))  # fmt: skip

    def _resized_attributes(self, node: Node) -> Attributes:
        self.resized_bytes(node)  # (blocking; then the size is known)
        return self._attributes(node)

    # --- metadata --------------------------------------------------------------------------

    def _after_layout(self, then: Callable[[], object]) -> object:
        """Under pyfuse3, the rest of a request into the shard views that came before their
        layout was made (`_layouts`): make it, then answer (in a thread: `Blocked`)."""
        self.tree.make_layout()
        return then()

    def lookup(self, parent: int, name: bytes) -> Attributes:
        if self._layouts and self.tree.layout_pending(parent):
            raise Blocked(lambda: self._after_layout(lambda: self.lookup(parent, name)))
        self._counts[LOOKUPS] += 1
        if name == b".":
            node = self.tree.getattr(parent)
        elif name == b"..":
            node = self.tree.getattr(self.tree.getattr(parent).parent)
        else:
            node = self.tree.lookup(parent, name)
        return self._attributes(node)

    def stored_lookup(self, parent: int, name: bytes) -> Attributes | None:
        """`lookup`'s answer read straight off the index record -- no `Node`, no view
        arithmetic -- where that is the whole answer: a child of a base-tree directory, not a
        dot, not `resized` or `shards`. None where `lookup` must answer (and then counts it)."""
        if parent >> VIEW_SHIFT or name in _DOTS or (parent == ROOT_INO and name in _ROOT_VIEWS):
            return None
        found = self.tree.index.entry(parent, name)
        if found is None:
            return None
        self._counts[LOOKUPS] += 1
        ino, mode, nlink, size, mtime = found
        return _new_attributes(Attributes, (
            ino, mode, nlink, self.uid, self.gid, size, (size + 511) // 512, mtime,
            self.timeout,
        ))  # fmt: skip

    def getattr(self, ino: int) -> Attributes:
        if self._layouts and self.tree.layout_pending(ino):
            raise Blocked(lambda: self._after_layout(lambda: self.getattr(ino)))
        self._counts[GETATTRS] += 1
        return self._attributes(self.tree.getattr(ino))

    def readlink(self, ino: int) -> bytes:
        node = self.tree.getattr(ino)
        if node.kind != SYMLINK:
            raise InvalidRequest(f"inode {ino} is not a symlink")
        return node.target

    def opendir(self, ino: int, flags: int = 0) -> None:
        if flags & WRITE_FLAGS:
            raise ReadOnly(ino)
        if self.tree.getattr(ino).kind != DIR:
            raise NotADirectory(ino)

    def readdir(self, ino: int, offset: int) -> Iterator[Listed]:
        """The entries of directory `ino` after cookie `offset`: `.` (cookie 1), `..` (2),
        then the children (3, 4, ...: a child's cookie is its position + 3). Checked now,
        listed lazily."""
        if self._layouts and self.tree.layout_pending(ino):
            raise Blocked(lambda: self._after_layout(lambda: self.readdir(ino, offset)))
        self._counts[READDIRS] += 1
        directory = self.tree.getattr(ino)
        if directory.kind != DIR:
            raise NotADirectory(ino)
        return self._listed(directory, offset)

    def _listed(self, directory: Node, offset: int) -> Iterator[Listed]:
        if offset < 1:
            yield Listed(1, b".", directory.ino, DIR)
        if offset < 2:
            yield Listed(2, b"..", directory.parent, DIR)
        cookie = max(offset, 2)
        for child, kind, name in self.tree.entries(directory.ino, cookie - 2):
            cookie += 1
            yield Listed(cookie, name, child, kind)

    def stored_listing(self, ino: int, offset: int, size: int) -> bytes | None:
        """The children of `ino` after cookie `offset` (>= 2) as the READDIR records stored in
        the index, as many as fit in `size` bytes; None where none are stored (resized views,
        a root that lists `resized/`): list them from `readdir` then."""
        return self.tree.listing(ino, offset - 2, size)

    def listed_attributes(self, entry: Listed) -> Attributes:
        """Attributes of a listed entry (READDIRPLUS); a listing resizes nothing."""
        return self._attributes(self.tree.getattr(entry.ino), listed=True)

    def statfs(self) -> FsStats:
        stats = self.tree.index.stats
        blocks = (stats.bytes + BLOCK_SIZE - 1) // BLOCK_SIZE
        return FsStats(BLOCK_SIZE, blocks, stats.entries, MAX_NAME)

    def access(self, ino: int, mode: int) -> None:
        self.tree.getattr(ino)
        if mode & os.W_OK:
            raise ReadOnly(ino)

    def getxattr(self, ino: int, name: bytes) -> bytes:
        """No extended attributes, as on squashfs, ext4 and squashfuse: ENODATA."""
        self.tree.getattr(ino)
        raise NoAttribute(name)

    def listxattr(self, ino: int) -> list[bytes]:
        """An empty list (ENOTSUP would make `tar --xattrs` warn on every file)."""
        self.tree.getattr(ino)
        return []

    def ioctl(self, ino: int) -> bytes:
        """No ioctls: `isatty()` (TCGETS) learns that a file is no terminal."""
        self._counts[IOCTLS] += 1
        raise NotATerminal(ino)

    # --- data ------------------------------------------------------------------------------

    def open(self, ino: int, flags: int) -> None:
        """Check an open for reading; a resized file is resized here if it has not been."""
        if self._layouts and self.tree.layout_pending(ino):
            raise Blocked(lambda: self._after_layout(lambda: self.open(ino, flags)))
        self._counts[OPENS] += 1
        if flags & WRITE_FLAGS:
            raise ReadOnly(ino)
        node = self.tree.getattr(ino)
        if node.kind != FILE:
            raise IsADirectory(ino) if node.kind == DIR else InvalidRequest(f"{ino}: not a file")
        if self._views and self.tree.spec_of(node) is not None and self._recent.get(ino) is None:
            raise Blocked(lambda: self.resized_bytes(node), ino)

    def read(self, ino: int, offset: int, size: int) -> bytes:
        if self._layouts and self.tree.layout_pending(ino):
            raise Blocked(lambda: self._after_layout(lambda: self.read(ino, offset, size)))
        self._counts[READS] += 1
        node = self.tree.getattr(ino)
        if node.kind != FILE:
            raise IsADirectory(ino) if node.kind == DIR else InvalidRequest(f"{ino}: not a file")
        if self._views and self.tree.spec_of(node) is not None:
            data = self._recent.get(ino)
            if data is None:
                raise Blocked(lambda: self._served(self.resized_bytes(node), offset, size), ino)
            return self._served(data, offset, size)
        if offset >= node.size or size <= 0:
            return b""
        self._counts[BYTES_READ] += min(size, node.size - offset)
        if self.blocking_reads:
            if self.defer_unseen and not self.tree.cache_visible(node):
                raise Blocked(lambda: self.tree.read(node, offset, size))
            return self.tree.read(node, offset, size)
        try:  # in the page cache and needing no decompression: read it now
            data = self.tree.read(node, offset, size, nowait=True)
        except WouldBlock:
            raise Blocked(lambda: self.tree.read(node, offset, size)) from None
        self._counts[INLINE_READS] += 1
        return data

    def locate_read(self, ino: int, offset: int, size: int) -> list[Piece] | None:
        """Where the bytes `read(ino, offset, size)` answers lie in the image files, as runs
        (descriptor, position, length) to send as they are, with the bytes a shard view
        makes between them; None where that is not the whole answer -- bytes to decompress
        that are not in memory, a resized or virtual file, an unpacked tree, nothing to read,
        an error -- and then `read` answers (and counts) the READ. Counts nothing: a READ
        answered from the runs is counted by `count_spliced`."""
        try:
            node = self.tree.getattr(ino)
        except ImagenetfsError:
            return None
        if node.kind != FILE or offset >= node.size or size <= 0:
            return None
        if self._views and self.tree.spec_of(node) is not None:
            return None
        return self.tree.locate(node, offset, size)

    def span(self, ino: int) -> Run | None:
        """Where the stored bytes of file `ino` lie in its image -- (descriptor, start,
        length): its data blocks as stored, or the fragment block holding it -- for reading
        ahead of a reader in image order (ahead.py); None for anything else. Counts nothing."""
        try:
            node = self.tree.getattr(ino)
        except ImagenetfsError:
            return None
        if node.kind != FILE or (self._views and self.tree.spec_of(node) is not None):
            return None
        return self.tree.span(node)

    def whole_file(self, ino: int, limit: int) -> bytes | None:
        """All the bytes of base-tree file `ino`, as `read` answers them, when it holds 1 to
        `limit` bytes -- for a worker's pushes (wire.py): read now when that waits for nothing
        (the page cache and the block caches have them, a virtual file); else `Blocked` (no
        key) with the read that waits (the disk, inflating), to run off the request loop. None
        for any other file: a view's (resized, shards), a directory, a larger file, an error
        finding it. Counts nothing; the read raises what `read`'s would (a corrupt block), and
        `CorruptImageError` when it comes back short (an image cut short since it was indexed:
        never less or more than the file, whose size the kernel holds)."""
        if ino >> VIEW_SHIFT:
            return None
        try:
            node = self.tree.getattr(ino)
        except ImagenetfsError:
            return None
        if node.kind != FILE or not 0 < node.size <= limit:
            return None
        try:
            return self._whole(node, nowait=True)
        except WouldBlock:
            raise Blocked(lambda: self._whole(node)) from None

    def _whole(self, node: Node, *, nowait: bool = False) -> bytes:
        data = self.tree.read(node, 0, node.size, nowait=nowait)
        if len(data) != node.size:
            raise CorruptImageError(f"inode {node.ino}: {len(data)} of {node.size} bytes read")
        return data

    def count_spliced(self, size: int) -> None:
        """Count a READ answered with the `size` bytes of `locate_read`'s runs: as `read`
        counts one, and in `reads_spliced`."""
        self.counters.sent(size)

    def _served(self, data: bytes, offset: int, size: int) -> bytes:
        piece = data[offset : offset + size]
        self._counts[BYTES_READ] += len(piece)
        return piece

    # --- resized files ---------------------------------------------------------------------

    def known_size(self, node: Node, spec: ResizeSpec) -> int | None:
        """A view file's resized size, if known without resizing (memo or resize cache)."""
        size = self._sizes.get(node.ino)
        if size is None and self.cache is not None:
            size = self.cache.size_of(self.tree.cache_key(node, spec))
            self.counters.update_cache(self.cache.statistics())
            if size is not None:
                self._sizes.put(node.ino, size)
        return size

    def resized_bytes(self, node: Node) -> bytes:
        """The bytes of a view file: from memory, the resize cache, or resized now (blocking:
        run it where waiting is harmless, once per file at a time -- see `Blocked`)."""
        data = self._recent.get(node.ino)
        if data is not None:
            return data
        spec = self.tree.spec_of(node)
        assert spec is not None
        key = self.tree.cache_key(node, spec)
        data = self.cache.get(key) if self.cache is not None else None
        if data is None:
            data = self.tree.resize(node)
            self._counts[RESIZES] += 1
            if self.cache is not None:
                self.cache.put(key, data)
        if self.cache is not None:
            self.counters.update_cache(self.cache.statistics())
        self._recent.put(node.ino, data)
        self._sizes.put(node.ino, len(data))
        return data
