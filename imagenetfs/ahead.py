"""Read-ahead across files, for a reader that goes through an image in order.

`cp -r`, `tar`, `md5sum` or a loop over sorted paths read one file after another in the order
an image stores them. The kernel reads ahead within a file; across files only a filesystem that
knows the layout can: the kernel's SquashFS mount does (its reads of the image go through the
loop device, whose readahead runs past the file asked for), a FUSE daemon sees one READ at a
time and, without help, waits for the disk on each.

`Ahead` is that help, one per worker (and so per process: it holds no lock). The worker tells
it where each file it starts reading lies in its image (`saw(fd, start, end)`, for a READ at
offset 0, or a file pushed with its IOCTL: wire.Worker._push). When `STREAK` files in a row
begin near where the files before them ended -- at most `NEAR` bytes before or after: the files
of one reader in image order, even when the workers take turns at them, and the tails that a
gzip image keeps in fragment blocks a little further on -- it asks the kernel to read the next
`WINDOW` bytes of that image into the page cache (`posix_fadvise(POSIX_FADV_WILLNEED)`: the
kernel starts the reads and returns), and tops the window up by at least `STEP` as the reader
moves on. A file that begins anywhere else ends the streak: random access reads nothing ahead.

Bounds: page cache only (no buffer of ours), at most `WINDOW` bytes past the furthest file
seen, per image descriptor, per worker -- bytes the reader is about to ask for. Each request to
read ahead is counted (`ops.READS_AHEAD`, and its bytes in `ops.BYTES_AHEAD`), in the worker's
counter slot. `IMAGENETFS_READ_AHEAD=0` turns it off (for A/B runs).
"""

from __future__ import annotations

import os

from imagenetfs.ops import BYTES_AHEAD, READS_AHEAD, Counters

#: Files in a row, each beginning near the last one's end, before reading ahead.
STREAK = 3
#: How far before or after the furthest end seen a file may begin and still be "in order".
NEAR = 1 << 20
#: Bytes read ahead past the furthest end seen, and the least top-up worth a call.
WINDOW = 4 << 20
STEP = 1 << 20
#: Turns read-ahead off when "0".
AHEAD_ENV = "IMAGENETFS_READ_AHEAD"


def wanted() -> bool:
    """Whether workers read ahead: unless `IMAGENETFS_READ_AHEAD=0`."""
    return os.environ.get(AHEAD_ENV, "1").strip() != "0"


class _Stream:
    """Where one image is being read in order: the furthest end seen, the files in a row
    that began near it, and how far the kernel has been asked to read."""

    __slots__ = ("ahead", "frontier", "streak")

    def __init__(self, end: int) -> None:
        self.frontier = end
        self.streak = 0
        self.ahead = end


class Ahead:
    """One worker's read-ahead across files (see the module docstring)."""

    def __init__(self, counters: Counters) -> None:
        self._counts = counters.values
        self._streams: dict[int, _Stream] = {}  # by image descriptor

    def saw(self, fd: int, start: int, end: int) -> None:
        """A file whose stored bytes lie at [start, end) of image `fd` is being read from its
        beginning: read ahead if it continues a streak."""
        stream = self._streams.get(fd)
        if stream is None:
            self._streams[fd] = _Stream(end)
            return
        if not stream.frontier - NEAR <= start <= stream.frontier + NEAR:
            stream.frontier = stream.ahead = end
            stream.streak = 0
            return
        stream.streak += 1
        if end > stream.frontier:
            stream.frontier = end
        if stream.streak < STREAK:
            return
        target = stream.frontier + WINDOW
        begin = max(stream.ahead, stream.frontier)
        if target - begin < STEP:
            return
        try:
            os.posix_fadvise(fd, begin, target - begin, os.POSIX_FADV_WILLNEED)
        except OSError:  # (a descriptor closed by a switch to a staged copy): no harm
            del self._streams[fd]
            return
        stream.ahead = target
        counts = self._counts
        counts[READS_AHEAD] += 1
        counts[BYTES_AHEAD] += target - begin
