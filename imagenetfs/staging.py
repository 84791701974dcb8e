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

Room. A copy starts only if, after it, `KeepFree` stays free on its filesystem: 10 GiB or 5 %
of the filesystem, whichever is more (`--stage-keep-free`), counted in the blocks an
unprivileged user may still take (`f_bavail`, after the root-reserved ones). The job that
stages keeps that much for its checkpoints, logs and caches. Each copy reserves its full size
when it starts (`fallocate(2)` on its `.part` file): the space is taken at once, so every
later check -- another mount's, another user's, `df` -- sees a copy in progress at its final
size, not at what it has written so far; ENOSPC there is "not enough space", like the check
before it. Not `posix_fallocate(3)`: on a filesystem without `fallocate` (ext2/ext3 files,
some FUSE and network filesystems) glibc emulates it by writing a byte per block -- 8,192
writes for 8 MiB on ext2 here, tens of millions for ImageNet -- so there the copy falls back to
checking the free space before it starts (copies in progress then count only as far as they
have been written), said once in the log.

Housekeeping. The staging directory is the user's, on a node disk that outlives jobs. A
staging mount, before it copies, removes from it what no index in use needs (`Stager.tidy`):
copies of an image name it stages under another key (superseded: the image changed, or
another version of the dataset under the same names), copies of other names not used for
`UNUSED_FOR` (7 days: a mount touches a copy when it starts and when it stops serving it),
and what killed copiers left (a `.part` whose lock is free, a lone lock file). `umount
--drop-stage` removes the copies of the mount it unmounts (`drop`). Neither removes a copy
that a live mount of the user on this node serves or will stage (its record in the node's
registry lists them: the images it serves, the copies it stages), nor one whose lock another
process holds (being copied or checked; a mount holds the lock until its record says it
serves the copy). Deleting a copy that some process still has open would be safe -- POSIX
keeps an unlinked file's blocks until its last descriptor closes, so that daemon goes on
reading the same bytes, and the space comes back when it closes them -- and that is what
`umount --lazy --drop-stage` relies on. A mount whose record is elsewhere (another
`$IMAGENETFS_STATE_DIR`) is not seen. A mount whose own mount point went (`umount --lazy`)
stages nothing more: the copy under way is abandoned.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from imagenetfs import mountinfo, places, registry
from imagenetfs.dirtree import DirImage, open_image
from imagenetfs.errors import ImagenetfsError, UsageError
from imagenetfs.index import Index

log = logging.getLogger(__name__)

#: Bytes per `sendfile` of a copy: large sequential reads, and the granularity of stopping;
#: with a rate, at most a tenth of a second's worth, so that the rate holds smoothly.
CHUNK = 8 << 20
#: How often a mount waiting for another's copy of an image tries the lock again, s.
LOCK_POLL = 0.2
#: How often a copy under way looks whether its mount is still there, s.
DETACH_POLL = 1.0
#: A copy that no live mount uses and none has used for this long goes, s.
UNUSED_FOR = 7 * 86400.0
#: How long `drop` waits for a copy's lock (a detached daemon abandoning its copy), s.
DROP_WAIT = 3.0
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}
#: A name in the staging directory: `<key>-<image name>`, its lock, or a copy being written.
_NAME = re.compile(r"^[0-9a-f]{12}-(?P<image>.+?)(?P<suffix>\.lock|\.part-[0-9]+)?$")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


@dataclass(frozen=True)
class KeepFree:
    """The free-space margin: what must stay free on the staging filesystem after a copy --
    `size` bytes or `share` of the filesystem, whichever is more."""

    size: int = 10 << 30
    share: float = 0.05

    def of(self, fs: os.statvfs_result) -> int:
        return max(self.size, int(self.share * fs.f_blocks * fs.f_frsize))

    def __str__(self) -> str:
        parts = [f"{_size(self.size)}"] if self.size or not self.share else []
        parts += [f"{self.share:.0%} of the filesystem"] if self.share else []
        return " or ".join(parts) + (", whichever is more" if len(parts) == 2 else "")


#: 10 GiB or 5 % of the filesystem, whichever is more: room for a job's checkpoints and logs
#: on a small node disk, and on a large one what ext4 reserves for root by default.
DEFAULT_KEEP_FREE = KeepFree()


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


def parse_keep_free(text: str) -> KeepFree:
    """`--stage-keep-free`: a size (K, M, G, T: powers of 1024, as --cache-size) or a share
    of the filesystem (`10%`)."""
    value = text.strip().upper()
    try:
        if value.endswith("%"):
            share = float(value[:-1]) / 100
            if 0 <= share <= 0.9:
                return KeepFree(0, share)
        else:
            value = value.removesuffix("B").removesuffix("I")
            unit = value[-1:] if value[-1:] in "KMGT" else ""
            number = float(value[: len(value) - len(unit)])
            if number >= 0:
                return KeepFree(int(number * 1024 ** " KMGT".index(unit or " ")), 0.0)
    except (ValueError, OverflowError):
        pass
    raise UsageError(
        f"--stage-keep-free {text!r}: give a size (20G, 500M, 0) or a share of the "
        "filesystem (10%, at most 90%)"
    )


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

    def __init__(
        self,
        directory: Path,
        index: Index,
        rate: int = 0,
        keep_free: KeepFree = DEFAULT_KEEP_FREE,
        mountpoint: Path | None = None,
    ) -> None:
        self.base = directory
        self.dir = directory / f"imagenetfs-{os.getuid()}"
        self.index = index
        self.rate = rate
        self.keep_free = keep_free
        self.mountpoint = mountpoint  # (its mount gone, staging stops)
        self._reserves: bool | None = None  # whether the filesystem takes fallocate
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
        """End staging (the mount is going away); the copies it served count as used now."""
        self._stop.set()
        for number, image in enumerate(self.index.images):
            path = self._paths[number]
            if path is not None and not isinstance(image, DirImage) and image.path == str(path):
                with contextlib.suppress(OSError):
                    os.utime(path)

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
        try:
            self.tidy()
        except OSError as e:  # (housekeeping never stands in the way of staging)
            log.warning("staging: could not tidy %s: %s", self.dir, e)
        for number, progress in enumerate(self.images):
            path = self._paths[number]
            if path is None:
                progress.state = "skipped"
                progress.error = "an unpacked tree is served where it is"
                continue
            try:
                self._stage(number, progress, path, switched)
            except Stopped:
                if self._detached():
                    log.info("staging stopped: %s is no longer mounted", self.mountpoint)
                return
            except OSError as e:
                self._fail(progress, e.strerror or str(e))
            except ImagenetfsError as e:
                self._fail(progress, str(e))
        self._finished = time.monotonic()
        log.info("staging done: %s", self.summary())

    def _detached(self) -> bool:
        """Our mount point holds nothing any more (`umount --lazy`): stage nothing more."""
        if self.mountpoint is None:
            return False
        try:
            return mountinfo.at(self.mountpoint) is None
        except OSError:
            return False

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

    def _stage(
        self, number: int, progress: Progress, path: Path, switched: Callable[[int, Path], None]
    ) -> None:
        """Reuse or copy image `number`, then switch to the copy -- all under its lock, so that
        no one removes the copy before our record says we serve it."""
        if self._detached():
            raise Stopped
        with self._locked(path, progress):
            if path.exists():
                problem = self._check(path, number)
                if problem is None:
                    progress.state, progress.bytes = "reused", progress.size
                    log.info("staging %s: reusing %s", progress.name, path)
                    with contextlib.suppress(OSError):
                        os.utime(path)  # (used now: see UNUSED_FOR)
                    switched(number, path)
                    return
                log.warning("staging %s: %s is no good (%s): copying again",
                            progress.name, path, problem)  # fmt: skip
                path.unlink()
            for stale in path.parent.glob(f"{path.name}.part-*"):  # from a killed copier
                stale.unlink(missing_ok=True)
            self._copy(number, progress, path)
            switched(number, path)

    @contextlib.contextmanager
    def _locked(self, path: Path, progress: Progress) -> Any:
        """Hold `path`'s lock file (waiting, and serving meanwhile, while another mount
        copies it)."""
        while True:
            with registry.locked(Path(f"{path}.lock"), blocking=False) as lock:
                if lock.acquired:
                    progress.error = None
                    yield
                    return
            progress.state = "waiting"
            progress.error = "another mount is copying it"
            if self._stop.wait(LOCK_POLL):
                raise Stopped from None

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

    def _room(self, size: int, *, reserved: bool) -> None:
        """Refuse the copy unless the margin stays free after it (`reserved`: its `size` is
        already taken from what is free)."""
        fs = os.statvfs(self.dir)
        free, margin = fs.f_bavail * fs.f_frsize, self.keep_free.of(fs)
        if free - (0 if reserved else size) < margin:
            raise OSError(
                errno.ENOSPC,
                f"not enough space in {self.base}: {_size(size)} for the copy and "
                f"{_size(margin)} kept free (--stage-keep-free), "
                f"{_size(free + (size if reserved else 0))} free",
            )

    def _reserve(self, fd: int, size: int) -> None:
        """Take the copy's whole size now (then check the margin again: other copies may
        have taken theirs meanwhile); without fallocate, the check before the copy stands."""
        try:
            reserved = reserve(fd, size)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            self._room(size, reserved=False)  # (says how much there is)
            raise
        if not reserved and self._reserves is None:
            log.warning("staging: %s cannot reserve space (no fallocate): the free space "
                        "is checked before each copy, without copies in progress",
                        self.base)  # fmt: skip
        self._reserves = reserved
        if reserved:
            self._room(size, reserved=True)

    def _copy(self, number: int, progress: Progress, path: Path) -> None:
        size = progress.size
        self._room(size, reserved=False)
        image = self.index.images[number]
        assert not isinstance(image, DirImage)  # (an unpacked tree has no staged path)
        part = Path(f"{path}.part-{os.getpid()}")
        source = os.open(f"/proc/self/fd/{image.fileno()}", os.O_RDONLY | os.O_CLOEXEC)
        progress.state, progress.bytes = "copying", 0
        log.info("staging %s: copying %s to %s", progress.name, _size(size), path)
        chunk = min(CHUNK, max(self.rate // 10, 1 << 16)) if self.rate else CHUNK
        started = self._copy_started = time.monotonic()
        looked = started  # when we last looked for our mount point
        try:
            os.posix_fadvise(source, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            with open(part, "xb") as out:
                self._reserve(out.fileno(), size)
                while progress.bytes < size:
                    if self._stop.is_set():
                        raise Stopped
                    if time.monotonic() - looked > DETACH_POLL:
                        looked = time.monotonic()
                        if self._detached():
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

    # --- housekeeping ------------------------------------------------------------------------

    def tidy(self) -> None:
        """Remove from our staging directory what no mount needs: copies of the image names we
        stage under another key, copies of other names unused for `UNUSED_FOR`, what killed
        copiers left -- never what a live mount serves or will stage, nor what is locked."""
        ours = {path.name for path in self._paths if path is not None}
        names = {os.path.basename(r["name"]) for r in self.index.image_records}
        now = time.time()
        removed, freed = [], 0
        for copy, files in sorted(_copies(self.dir).items()):
            if copy in ours:  # (ours to reuse; a killed copier's part: `_stage` removes it)
                continue
            path = self.dir / copy
            if copy in files:  # a whole copy
                image = _NAME.match(copy)
                superseded = image is not None and image["image"] in names
                with contextlib.suppress(FileNotFoundError):
                    if not superseded and now - path.stat().st_mtime < UNUSED_FOR:
                        continue
            with registry.locked(Path(f"{path}.lock"), blocking=False) as lock:
                if not lock.acquired or _in_use(path):
                    continue
                freed += _remove(path)
                lock.discard = True
            if copy in files:
                removed.append(copy)
        if removed:
            log.info("staging: removed %d copies no mount uses (%s) from %s: %s", len(removed),
                     _size(freed), self.dir, ", ".join(removed))  # fmt: skip

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
            # where this mount stages (the others' housekeeping leaves these alone)
            "copies": [str(path) for path in self._paths if path is not None],
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


def reserve(fd: int, size: int) -> bool:
    """Allocate `size` bytes to `fd`'s file now (`fallocate(2)`, mode 0): True; False when its
    filesystem cannot (EOPNOTSUPP). Raises OSError (ENOSPC: no room)."""
    while size > 0 and _libc.fallocate(fd, 0, 0, size) != 0:
        err = ctypes.get_errno()
        if err in (errno.EOPNOTSUPP, errno.ENOSYS):
            return False
        if err != errno.EINTR:
            raise OSError(err, os.strerror(err))
    return True


# --- housekeeping: what a staging directory holds, and what goes ------------------------------


def _copies(directory: Path) -> dict[str, set[str]]:
    """The copies in a staging directory: `<key>-<image name>` -> the names there of it (the
    copy itself, its lock, parts being written)."""
    found: dict[str, set[str]] = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            match = _NAME.match(entry.name)
            if match is not None and entry.is_file(follow_symlinks=False):
                copy = entry.name.removesuffix(match["suffix"] or "")
                found.setdefault(copy, set()).add(entry.name)
    return found


def _in_use(path: Path, ending: int | None = None) -> bool:
    """A live mount of this user on this node serves the copy at `path`, or stages to it (its
    record says so); the daemon `ending` (pid) aside. Paths are compared as files (a DIR
    given through a symlink is the same DIR), stat-ing only paths named like `path`."""
    try:
        wanted = os.stat(path)
    except FileNotFoundError:
        wanted = None
    for state in registry.read_states():
        if state.get("pid") == ending or not registry.is_alive(state):
            continue
        report = state.get("staging")
        report = report if isinstance(report, dict) else {}
        for used in [*state.get("images", []), *report.get("copies", [])]:
            if not isinstance(used, str) or os.path.basename(used) != path.name:
                continue
            if used == str(path):
                return True
            with contextlib.suppress(OSError):
                st = os.stat(used)
                if wanted is not None and (st.st_dev, st.st_ino) == (wanted.st_dev, wanted.st_ino):
                    return True
    return False


def _remove(path: Path) -> int:
    """Remove the copy at `path` and its parts (not its lock file: its holder does); returns
    the bytes freed."""
    freed = 0
    parts = [name for name in os.listdir(path.parent) if name.startswith(f"{path.name}.part-")]
    for name in [path.name, *parts]:
        with contextlib.suppress(FileNotFoundError):
            freed += (path.parent / name).stat().st_blocks * 512
            (path.parent / name).unlink()
    return freed


def drop(state: dict[str, Any]) -> str:
    """After `umount --drop-stage` unmounted the mount `state` records: remove the copies it
    staged (its record's `copies`), except those another live mount serves or stages, or
    whose lock stays held (being checked or copied). Returns what was done, for umount's
    message."""
    report = state.get("staging")
    if not isinstance(report, dict):
        return "; it staged nothing"
    own = f"imagenetfs-{os.getuid()}"  # (only ever a file of ours, named as a copy)
    copies = [
        Path(p)
        for p in report.get("copies", [])
        if isinstance(p, str) and Path(p).parent.name == own and _NAME.match(Path(p).name)
    ]
    ending = state.get("pid") if isinstance(state.get("pid"), int) else None
    there: dict[str, set[str]] = {}
    for directory in {path.parent for path in copies if path.parent.is_dir()}:
        there.update(_copies(directory))
    removed, kept, freed = 0, 0, 0
    for path in copies:
        if path.name not in there:  # (never made: no room, say)
            continue
        whole = path.name in there[path.name]  # (else a part, or a lock alone)
        outcome = _drop_one(path, ending)
        if outcome is None:
            kept += whole
        else:
            removed, freed = removed + whole, freed + outcome
    message = ""
    if removed:
        message += f"; removed {removed} staged copies ({_size(freed)}) from {copies[0].parent}"
    if kept:
        message += f"; kept {kept} that another mount of yours uses"
    return message or "; no staged copies to remove"


def _drop_one(path: Path, ending: int | None) -> int | None:
    """Remove one copy for `drop`: the bytes freed, or None when it is kept. A lock held by
    another process is waited for a moment (a daemon detached by `umount --lazy` abandons its
    copy under way within `DETACH_POLL`)."""
    deadline = time.monotonic() + DROP_WAIT
    while not _in_use(path, ending):
        with registry.locked(Path(f"{path}.lock"), blocking=False) as lock:
            if lock.acquired:
                if _in_use(path, ending):
                    return None
                lock.discard = True
                return _remove(path)
        if time.monotonic() > deadline:
            return None
        time.sleep(LOCK_POLL / 2)
    return None


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
