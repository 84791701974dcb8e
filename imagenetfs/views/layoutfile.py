"""The shard views' layout, made once per mount: a file in the mount's own directory, written
by a short-lived process and mapped by every serving process.

Why. Every shard's size must be known at `getattr`, so the first request into `shards/` needs
the layout (shards.py): a walk of the index's train and val directories, the shuffle and the
sizes (numpy) -- at ImageNet's count 3.5 s, 6.7 s with the TFRecord view's record lengths. Made
in each serving process, a first `ls` that meets both workers waited for two of them, one
after the other, and each worker kept numpy, the layout and the heap pages the walk's
allocations copied from the supervisor's (~22 MiB a worker). Here the first serving process
that needs it starts a process of its own to make it, and every serving process maps the file:

- `Shared.__call__` (a `WdsView`'s `make_layout`) maps the file when it is there and checks;
  else it takes an exclusive `flock` on the mount's layout directory (a second worker that
  needs the layout meanwhile waits there, then finds the file made), looks again, and runs
  `python -m imagenetfs.views.layoutfile` (`main`): the index through the serving process's
  own descriptor (an index renamed over meanwhile is not seen), `Layout.compute`, the file
  written under a temporary name and renamed. Its walk's temporaries, numpy and its heap go
  when it exits. A serving process then holds the file's pages (page cache, shared by all of
  them: ~5 MB at ImageNet's count, mostly the train order) and a `Layout` of a few thousand
  small objects (the directory's children, `_info.json`, the wids indexes); it never imports
  numpy. The process is started from the thread that needs the layout -- a worker's (which
  has nothing else to do: wire.py), or under pyfuse3 a thread of its own (`ops.Blocked`), never
  trio's loop.
- Failure: a process that fails (an unreadable index, a full disk, killed, past
  `BUILD_TIMEOUT`) fails the request with EIO and one line in the log naming why (its last
  line on stderr); nothing is kept, and the next request into the view tries again.
- Staleness: the file's name and its header carry a key -- this format's version, the index
  file (device, inode, size, mtime, its counts), the seed, order, samples per shard, whether
  the TFRecord companion rides along, the byte order -- and a file is used only when its
  BLAKE2b digest is right (a torn or changed file), its header's key is the one wanted (a
  file of another index or other settings) and its orders lie within it. A file that fails a
  check is said in the log, removed and made again.

Where (`directory`): `<state dir>/<mount key>.shards/` (registry.py), mode 0700, made by the
daemon before it serves (emptied first: a killed daemon's leftovers), removed when it ends,
by `registry.remove` and by the registry's sweep.

Format (native byte order, one node's): `PREFIX` (magic, version, header length), the
header (JSON: the key, and per split its name, digits, sample count, the offset of its order in
the file, `first`, `sizes`, `index_sizes`, the companion's summary), zeros to a multiple of 8,
each split's order (uint32 inode numbers), then the BLAKE2b-256 digest of everything before.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import dataclasses
import fcntl
import hashlib
import json
import logging
import mmap
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from imagenetfs.errors import ImagenetfsError
from imagenetfs.index import Index
from imagenetfs.views.shards import Layout, Split, labels_of
from imagenetfs.views.tfrecord import TfSplit, companion_of

log = logging.getLogger(__name__)

VERSION = 1
#: magic, version, 0, header length
PREFIX = struct.Struct("<16sIIQ")
MAGIC = b"imagenetfs-shard"
DIGEST = 32
#: Seconds the process that makes the layout may take before it is killed (ImageNet on this
#: machine: 3.5 s, 7 s with the TFRecord companion).
BUILD_TIMEOUT = 600.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class LayoutError(ImagenetfsError):
    """The layout could not be made (the request fails with EIO; the next one tries again)."""


class Refused(Exception):
    """A layout file that is not the one wanted (why: the message)."""


def key(index: Index, seed: int, per_shard: int | None, order: str) -> dict[str, Any]:
    """What a layout depends on (see the module docstring)."""
    st = os.fstat(index.fileno())
    return {
        "version": VERSION,
        "index": {
            "dev": st.st_dev,
            "ino": st.st_ino,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "stats": dataclasses.asdict(index.stats),
            "image_sizes": index.image_sizes,
            "crc32c": index.file_crcs,
        },
        "seed": seed,
        "per_shard": per_shard,
        "order": order,
        "companion": companion_of(index, per_shard) is not None,
        "byteorder": sys.byteorder,
    }


def file_name(wanted: dict[str, Any]) -> str:
    digest = hashlib.blake2b(json.dumps(wanted, sort_keys=True).encode(), digest_size=8)
    return f"layout-{digest.hexdigest()}.bin"


# --- the file -------------------------------------------------------------------------------


def write(path: Path, wanted: dict[str, Any], splits: Sequence[Split]) -> None:
    """Write the layout file `path` (under a temporary name, then renamed)."""
    orders = [array.array("I", split.inos).tobytes() for split in splits]
    entries, offset = [], 0
    for split, order in zip(splits, orders, strict=True):
        summary = split.companion
        entries.append({
            "name": split.name,
            "digits": split.digits,
            "count": len(split.inos),
            "offset": offset,  # (of its order, from the end of the header)
            "first": split.first,
            "sizes": split.sizes,
            "index_sizes": split.index_sizes,
            "companion": None if summary is None else dataclasses.asdict(summary),
        })  # fmt: skip
        offset += len(order)
    head = json.dumps({"key": wanted, "splits": entries}).encode()
    head += b" " * (_aligned(PREFIX.size + len(head)) - PREFIX.size - len(head))
    digest = hashlib.blake2b(digest_size=DIGEST)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with open(fd, "wb") as f:
            for part in (PREFIX.pack(MAGIC, VERSION, 0, len(head)), head, *orders):
                digest.update(part)
                f.write(part)
            f.write(digest.digest())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _aligned(n: int) -> int:
    return -(-n // 8) * 8


def read(path: Path, wanted: dict[str, Any]) -> list[Split]:
    """The splits of the layout file `path`, their orders mapped from it (read-only); `Refused`
    when it is not the file of `wanted` or does not check (see the module docstring),
    FileNotFoundError when there is none."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        size = os.fstat(fd).st_size
        if size < PREFIX.size + DIGEST:
            raise Refused(f"{size} bytes: too short")
        mapped = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    view = memoryview(mapped)
    magic, version, _, head_len = PREFIX.unpack_from(view)
    if magic != MAGIC or version != VERSION:
        raise Refused("not a layout file of this version")
    if PREFIX.size + head_len + DIGEST > size:
        raise Refused("cut short")
    if hashlib.blake2b(view[:-DIGEST], digest_size=DIGEST).digest() != view[-DIGEST:]:
        raise Refused("its digest does not match (torn or changed)")
    try:
        head = json.loads(bytes(view[PREFIX.size : PREFIX.size + head_len]))
        if head["key"] != wanted:
            raise Refused("made for another index or other settings")
        splits = []
        for entry in head["splits"]:
            start = PREFIX.size + head_len + int(entry["offset"])
            count = int(entry["count"])
            if start % 4 or not 0 <= count or start + 4 * count > size - DIGEST:
                raise Refused(f"split {entry['name']!r} lies outside the file")
            first = [int(n) for n in entry["first"]]
            if first[0] != 0 or first[-1] != count:
                raise Refused(f"split {entry['name']!r}: shards do not cover its samples")
            summary = entry["companion"]
            splits.append(
                Split(
                    str(entry["name"]),
                    int(entry["digits"]),
                    view[start : start + 4 * count].cast("I"),
                    first,
                    [int(n) for n in entry["sizes"]],
                    [int(n) for n in entry["index_sizes"]],
                    None if summary is None else TfSplit(**summary),
                )
            )
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise Refused(f"malformed header ({e!r})") from None
    return splits


# --- once per mount -------------------------------------------------------------------------


class Shared:
    """A serving process's `make_layout` for `WdsView`: the mount's layout file in
    `directory`, made once (see the module docstring)."""

    def __init__(
        self, directory: Path, index: Index, seed: int, per_shard: int | None, order: str
    ) -> None:
        self.directory = directory
        self.index = index
        self.seed = seed
        self.per_shard = per_shard
        self.order = order

    def __call__(self) -> Layout:
        wanted = key(self.index, self.seed, self.per_shard, self.order)
        path = self.directory / file_name(wanted)
        splits = self._mapped(path, wanted, quiet=True)
        if splits is None:
            with self._locked():
                splits = self._mapped(path, wanted, quiet=False)
                if splits is None:
                    self._make(path, wanted)
                    try:
                        splits = read(path, wanted)
                    except (OSError, Refused) as e:
                        raise LayoutError(f"the shard layout just made, {path}: {e}") from None
        return Layout(labels_of(self.index), splits)

    def _mapped(self, path: Path, wanted: dict[str, Any], *, quiet: bool) -> list[Split] | None:
        """The file's splits, or None: not there, or refused -- then (not `quiet`: under the
        lock) said and removed."""
        try:
            return read(path, wanted)
        except FileNotFoundError:
            return None
        except (OSError, Refused) as e:
            if not quiet:
                log.warning("shard layout %s refused (%s): making it again", path, e)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            return None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise LayoutError(
                f"the shard layout's directory {self.directory}: {e.strerror}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # (and the lock with it)

    def _make(self, path: Path, wanted: dict[str, Any]) -> None:
        """Run the process that writes `path` (see the module docstring)."""
        fd = self.index.fileno()
        command = [
            sys.executable, "-P", "-m", __name__, str(fd), str(path), json.dumps(wanted),
            str(self.seed), str(self.per_shard or 0), self.order, str(os.getpid()),
        ]  # fmt: skip
        started = time.monotonic()
        try:
            done = subprocess.run(
                command, pass_fds=(fd,), stdin=subprocess.DEVNULL, capture_output=True,
                text=True, timeout=BUILD_TIMEOUT,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise LayoutError(
                f"the shard layout was not made within {BUILD_TIMEOUT:.0f} s (killed); the "
                "next request into shards/ tries again"
            ) from None
        except OSError as e:
            raise LayoutError(f"the shard layout could not be made: {e}") from None
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            how = (
                f"killed by {signal.Signals(-done.returncode).name}"
                if done.returncode < 0
                else f"exit status {done.returncode}"
            )
            why = f"{lines[-1].strip()}; {how}" if lines else how
            raise LayoutError(
                f"the shard layout could not be made ({why}); the next request into "
                "shards/ tries again"
            )
        log.info(
            "made the shard layout %s in %.1f s: %s",
            path.name, time.monotonic() - started, done.stdout.strip(),
        )  # fmt: skip


# --- the process that makes it --------------------------------------------------------------


def make(fd: int, path: Path, wanted: dict[str, Any], seed: int, per_shard: int | None,
         order: str) -> str:  # fmt: skip
    """Compute the layout of the index open as `fd` and write it to `path`; a line saying
    what was made."""
    index = Index.open(Path(f"/proc/self/fd/{fd}"), verify=False)
    try:
        companion = companion_of(index, per_shard)
        layout = Layout.compute(index, seed, per_shard, index.image_size, companion, order)
        write(path, wanted, layout.splits)
    finally:
        index.close()
    return ", ".join(f"{len(s.inos)} {s.name} samples in {s.shards} shards" for s in layout.splits)


def main(argv: Sequence[str]) -> int:
    fd, path, wanted, seed, per_shard, order, parent = argv
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # (dies with the serving process)
    if os.getppid() != int(parent):
        return 1
    try:
        said = make(int(fd), Path(path), json.loads(wanted), int(seed), int(per_shard) or None,
                    order)  # fmt: skip
    except (ImagenetfsError, OSError) as e:
        print(f"imagenetfs: {e}", file=sys.stderr)
        return 1
    print(said)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
