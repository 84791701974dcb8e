"""Staging: copy a mount's images to node-local disk while serving, then serve the copies.

`imagenetfs mount --stage DIR` answers at once from the images where they are (a shared
filesystem, typically) while a `Stager` copies them, one after the other, into DIR; each copy
that proves identical to the image indexed is switched in, and from then on that image's reads
are local. Nothing waits for a copy, and nothing is served from one that is not whole.

Design
------
- Where: `DIR/imagenetfs-<uid>/<key>-<image name>`, the directory private to the user (0700,
  refused if it is anything else), `key` a digest of the image's name and fingerprint in the
  index: another dataset, or the same name rebuilt, never finds this copy.
- A copy is written to `<file>.part-<pid>`, read from the image with large sequential reads
  (`sendfile` of 8 MiB, capped at `--stage-rate` bytes/s), synced, opened as an image and its
  fingerprint (size, superblock, sampled blocks) compared with the index's, and only then
  renamed to its final name. So a name without `.part` is a whole, checked copy: a later mount
  (of any job of the user on the node) checks it the same way and reuses it. A killed copy
  leaves a `.part` file, which no mount trusts and the next copier removes.
- Several mounts staging into one DIR: each image has a lock file (a POSIX record lock,
  `lockf`); the holder copies, the others wait (serving meanwhile) and then reuse its copy.
  The kernel drops the lock with its process, so a killed copier blocks no one; and, unlike
  `flock`, a worker forked while the copy runs does not inherit it.
- The source is read through a second open file of the image the index holds (opened by
  `/proc/self/fd`), not by its path: the copy is of what is served.
- Switching: an image file's `switch` (SquashFS, tar or zip) swaps the descriptor reads use
  (a read under way finishes on the old one, which stays open); the daemon switches its own
  image, then tells each worker process (SIGUSR1), which switches its own (`adopt`). A worker
  started later inherits the switched image.
- A full disk, a failed read or a copy that does not match leaves that image served from where
  it is, with one line in the log and in `imagenetfs status`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from imagenetfs import places
from imagenetfs.dirtree import DirImage, open_image
from imagenetfs.errors import ImagenetfsError, UsageError
from imagenetfs.index import Index

log = logging.getLogger(__name__)

#: Bytes per `sendfile` of a copy: large sequential reads, and the granularity of stopping;
#: with a rate, at most a tenth of a second's worth, so that the rate holds smoothly.
CHUNK = 8 << 20
#: How often a mount waiting for another's copy of an image tries the lock again, s.
LOCK_POLL = 0.2
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}


def default_dir() -> Path:
    """`--stage` without DIR: the job's local scratch, `$SLURM_TMPDIR`, else `$TMPDIR` inside
    a Slurm job."""
    scratch = places.job_scratch()
    if scratch is not None:
        return scratch
    raise UsageError(
        "--stage: give a DIR (node-local disk); $SLURM_TMPDIR is not set and this is not a "
        "Slurm job with $TMPDIR"
    )


def check_dir(directory: Path) -> Path:
    """The staging directory as given, if it can be used (refused in one line otherwise)."""
    directory = directory.absolute()
    if not directory.is_dir():
        raise UsageError(f"--stage {directory}: no such directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"--stage {directory}: not writable")
    return directory


def parse_rate(text: str) -> int:
    """`--stage-rate`: bytes per second, with an optional K, M or G (powers of 1000)."""
    value = text.strip().upper().removesuffix("B/S").removesuffix("B")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    number = value[: len(value) - len(unit)]
    try:
        rate = float(number) * _UNITS[unit]
    except ValueError:
        raise UsageError(f"--stage-rate {text!r}: give bytes per second, e.g. 200M") from None
    if not 1e5 <= rate <= 1e12:
        raise UsageError(f"--stage-rate {text!r}: give 100K to 1000G bytes per second")
    return int(rate)


class Stopped(Exception):
    """The mount is going away: the copy under way is abandoned."""


@dataclass
class Progress:
    """One image's staging, as `imagenetfs status` shows it."""

    name: str
    size: int
    state: str = "waiting"  # waiting, copying, done, reused, failed, skipped
    bytes: int = 0  # copied (or found) so far
    error: str | None = None


class Stager:
    """Copies the images of an open `Index` into a staging directory and switches them."""

    def __init__(self, directory: Path, index: Index, rate: int = 0) -> None:
        self.base = directory
        self.dir = directory / f"imagenetfs-{os.getuid()}"
        self.index = index
        self.rate = rate
        self.images = [
            Progress(record["name"], int(record.get("file_size", 0)))
            for record in index.image_records
        ]
        self._paths = [self._path(record) for record in index.image_records]
        self._stop = threading.Event()
        self._started = self._finished = 0.0
        self._copied = 0  # bytes copied by this mount
        self._copy_seconds = 0.0  # spent in finished copies
        self._copy_started = 0.0  # of the copy under way, if any

    def _path(self, record: dict[str, Any]) -> Path | None:
        if "file_size" not in record:  # an unpacked tree: nothing to copy
            return None
        key = hashlib.blake2b(json.dumps(record, sort_keys=True).encode(), digest_size=6)
        return self.dir / f"{key.hexdigest()}-{os.path.basename(record['name'])}"

    def staged_path(self, number: int) -> Path | None:
        """Where image `number`'s checked copy is, once there is one (None: never staged)."""
        return self._paths[number]

    def stop(self) -> None:
        self._stop.set()

    # --- the copying thread ------------------------------------------------------------------

    def run(self, switched: Callable[[int, Path], None]) -> None:
        """Stage every image, one after the other; `switched(number, path)` once image
        `number` is served from its copy. Blocking: run it in a thread; `stop` ends it."""
        self._started = time.monotonic()
        try:
            self._open_dir()
        except OSError as e:
            for progress in self.images:
                self._fail(progress, f"staging directory {self.dir}: {e.strerror or e}")
            self._finished = time.monotonic()
            return
        for number, progress in enumerate(self.images):
            path = self._paths[number]
            if path is None:
                progress.state = "skipped"
                progress.error = "an unpacked tree is served where it is"
                continue
            try:
                self._stage(number, progress, path)
            except Stopped:
                return
            except OSError as e:
                self._fail(progress, e.strerror or str(e))
            except ImagenetfsError as e:
                self._fail(progress, str(e))
            else:
                switched(number, path)
        self._finished = time.monotonic()
        log.info("staging done: %s", self.summary())

    def _fail(self, progress: Progress, problem: str) -> None:
        progress.state, progress.error = "failed", problem
        log.warning("staging %s failed: %s; serving it from %s", progress.name, problem,
                    self.index.source)  # fmt: skip

    def _open_dir(self) -> None:
        """Our private directory in the staging directory: made 0700, or refused unless it
        is a directory of ours that no one else may write."""
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.dir, 0o700)
        st = os.lstat(self.dir)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise OSError(errno.EPERM, "not a directory of this user's that only they can write")

    def _stage(self, number: int, progress: Progress, path: Path) -> None:
        with self._locked(path, progress):
            if path.exists():
                problem = self._check(path, number)
                if problem is None:
                    progress.state, progress.bytes = "reused", progress.size
                    log.info("staging %s: reusing %s", progress.name, path)
                    return
                log.warning("staging %s: %s is no good (%s): copying again",
                            progress.name, path, problem)  # fmt: skip
                path.unlink()
            for stale in path.parent.glob(f"{path.name}.part-*"):  # from a killed copier
                stale.unlink(missing_ok=True)
            self._copy(number, progress, path)

    @contextlib.contextmanager
    def _locked(self, path: Path, progress: Progress) -> Any:
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            while True:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    progress.state = "waiting"
                    progress.error = "another mount is copying it"
                    if self._stop.wait(LOCK_POLL):
                        raise Stopped from None
            progress.error = None
            yield
        finally:
            os.close(fd)  # (releases the lock)

    def _check(self, path: Path, number: int) -> str | None:
        """None if `path` is a whole copy of image `number` as indexed, else what is wrong."""
        record = self.index.image_records[number]
        try:
            with open_image(path) as copy:
                now = asdict(copy.fingerprint())
        except ImagenetfsError as e:
            return str(e)
        changed = [k for k, v in now.items() if record.get(k) != v]
        return f"{', '.join(changed)} differ" if changed else None

    def _copy(self, number: int, progress: Progress, path: Path) -> None:
        size = progress.size
        free = os.statvfs(path.parent)
        if free.f_bavail * free.f_frsize < size:
            raise OSError(
                errno.ENOSPC,
                f"not enough space in {self.base}: {_size(size)} needed, "
                f"{_size(free.f_bavail * free.f_frsize)} free",
            )
        image = self.index.images[number]
        assert not isinstance(image, DirImage)  # (an unpacked tree has no staged path)
        part = Path(f"{path}.part-{os.getpid()}")
        source = os.open(f"/proc/self/fd/{image.fileno()}", os.O_RDONLY | os.O_CLOEXEC)
        progress.state, progress.bytes = "copying", 0
        log.info("staging %s: copying %s to %s", progress.name, _size(size), path)
        chunk = min(CHUNK, max(self.rate // 10, 1 << 16)) if self.rate else CHUNK
        started = self._copy_started = time.monotonic()
        try:
            os.posix_fadvise(source, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            with open(part, "xb") as out:
                while progress.bytes < size:
                    if self._stop.is_set():
                        raise Stopped
                    n = _send(
                        out.fileno(), source, progress.bytes, min(chunk, size - progress.bytes)
                    )
                    progress.bytes += n
                    self._copied += n
                    if self.rate:  # sleep until this many bytes are due at the rate
                        due = started + progress.bytes / self.rate - time.monotonic()
                        if due > 0 and self._stop.wait(due):
                            raise Stopped
                out.flush()
                os.fsync(out.fileno())
            problem = self._check(part, number)
            if problem is not None:
                raise ImagenetfsError(f"the copy is not the image indexed ({problem})")
            os.rename(part, path)
            sync_dir(path.parent)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        finally:
            os.close(source)
            self._copy_seconds += time.monotonic() - started
            self._copy_started = 0.0
        progress.state = "done"
        elapsed = time.monotonic() - started
        log.info("staging %s: copied in %.1f s (%.0f MB/s)", progress.name, elapsed,
                 size / 1e6 / max(elapsed, 1e-9))  # fmt: skip

    # --- what status shows ---------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._finished > 0

    def report(self) -> dict[str, Any]:
        """The staging state for the registry (`imagenetfs status`)."""
        return {
            "dir": str(self.dir),
            "done": self.done,
            "bytes": sum(p.bytes for p in self.images),
            "total": sum(p.size for p in self.images),
            "rate": self._copied / seconds if (seconds := self._copying_seconds()) else 0.0,
            "seconds": (self._finished or time.monotonic()) - self._started
            if self._started
            else 0.0,
            "images": [asdict(p) for p in self.images],
        }

    def _copying_seconds(self) -> float:
        current = time.monotonic() - self._copy_started if self._copy_started else 0.0
        return self._copy_seconds + current

    def summary(self) -> str:
        return describe(self.report())


def describe(report: dict[str, Any]) -> str:
    """One line of staging progress, from a `Stager.report()`."""
    images = report["images"]
    ready = sum(p["state"] in ("done", "reused") for p in images)
    failed = [p for p in images if p["state"] == "failed"]
    line = (
        f"{ready}/{len(images)} images on local disk, {_size(report['bytes'])} of "
        f"{_size(report['total'])}"
    )
    if report["rate"]:
        line += f", copying at {report['rate'] / 1e6:.0f} MB/s"
    line += " (done)" if report["done"] else ""
    for p in failed:
        line += f"; {p['name']} failed: {p['error']}"
    return line


def _size(n: float) -> str:
    for unit in ("bytes", "kB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _send(out: int, source: int, offset: int, count: int) -> int:
    """Copy up to `count` bytes at `offset` of `source` to `out`'s position, in the kernel."""
    try:
        sent = os.sendfile(out, source, offset, count)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS):
            raise
        data = os.pread(source, count, offset)
        sent = os.write(out, data) if data else 0
    if sent == 0:
        raise OSError(errno.EIO, f"the image ended at {offset} bytes, before its size")
    return sent


def sync_dir(directory: Path) -> None:
    """Make the renames and creations in `directory` durable (its own fsync)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def adopt(index: Index, stager: Stager) -> None:
    """In a worker process: switch to every checked copy there is (`SIGUSR1` from the daemon
    says one more is)."""
    for number, image in enumerate(index.images):
        path = stager.staged_path(number)
        if isinstance(image, DirImage) or path is None or image.path == str(path):
            continue
        if not path.exists():
            continue
        try:
            image.switch(str(path))
        except ImagenetfsError as e:
            log.warning("staged copy not used: %s", e)
