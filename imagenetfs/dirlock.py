"""A lock file that holds across the nodes of a shared filesystem (NFS, Lustre).

Why a file and not a lock call: flock(2) and fcntl(2) locks both depend on mount options a user
can neither see nor change. Lustre mounted without `-o flock` refuses both (ENOSYS); with
`-o localflock` -- and NFS mounted `nolock` or `local_lock=all` -- both are silently local to
one node, which is the very failure a lock on a shared directory is for. Creating a file with
O_EXCL is atomic on NFS (v3 and later) and on Lustre whatever their options, and the file can
say who holds the lock: the holder's pid and start time, and its node (nodeid.py: host and
boot id).

The cost: a lock is not released by the kernel when its holder dies. One whose holder is gone
is cleared by the next taker -- but only on the holder's own node, the one place a pid means
something (`nodeid.running_here`; the start time guards against a pid used again). A lock of
another node, or of this host before it rebooted, is refused with a line naming the holder and
the file to remove once nothing runs there.

Clearing is safe against two takers of one node finding the same stale lock: the file is
renamed aside (one rename wins), and given back if what was renamed is no longer the stale
holder's (another taker had cleared it and taken the lock meanwhile).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from imagenetfs import nodeid
from imagenetfs.errors import ImagenetfsError, UsageError

#: Attempts to take a lock that keeps changing hands (each clears or finds a fresh holder).
_ATTEMPTS = 3


@dataclass(frozen=True)
class Holder:
    """Who holds a lock: what its file says."""

    pid: int
    start: int | None  # the process's start time on its node (clock ticks since boot)
    host: str
    boot: str
    since: float  # time.time() when taken

    @classmethod
    def me(cls) -> Holder:
        here, pid = nodeid.here(), os.getpid()
        return cls(pid, nodeid.start_time(pid), here.host, here.boot, time.time())

    @classmethod
    def parse(cls, data: bytes) -> Holder | None:
        """None when the file does not say (being written this very moment, or damaged)."""
        try:
            record = json.loads(data)
            start = record["start"]
            return cls(
                int(record["pid"]),
                None if start is None else int(start),
                str(record["host"]),
                str(record["boot"]),
                float(record["since"]),
            )
        except (ValueError, KeyError, TypeError):
            return None

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode() + b"\n"

    @property
    def gone(self) -> bool:
        """Its process has ended -- known only on its own node."""
        return not nodeid.running_here(self.pid, nodeid.Node(self.host, self.boot), self.start)

    def __str__(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.since))
        return f"pid {self.pid} on {self.host}, since {when}"


@dataclass
class Lock:
    """A lock taken (`take`); `release` removes its file, if it is still ours."""

    path: Path
    content: bytes

    def release(self) -> None:
        with contextlib.suppress(OSError):
            if self.path.read_bytes() == self.content:  # (never another's)
                self.path.unlink()


def take(path: Path, busy: str) -> Lock:
    """Create the lock file `path` for this process, clearing one whose holder is gone from
    this node. Held by another: `UsageError` of one line, `busy` followed by the holder and
    the file to remove should no holder run any more. Never waits."""
    me = Holder.me().encode()
    for _ in range(_ATTEMPTS):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            try:
                held = path.read_bytes()
            except FileNotFoundError:
                continue  # released meanwhile
            holder = Holder.parse(held)
            if holder is not None and holder.gone:
                _clear(path, held)
                continue
            who = "its lock file does not say who" if holder is None else str(holder)
            raise UsageError(
                f"{busy} ({who}); let it finish -- or, if none runs there any more, remove "
                f"{path} and try again"
            ) from None
        try:
            os.write(fd, me)
            os.fsync(fd)
        except OSError as e:  # (a full disk: the file was made, its content could not be)
            path.unlink(missing_ok=True)
            raise ImagenetfsError(f"cannot write the lock {path}: {e.strerror}") from None
        finally:
            os.close(fd)
        return Lock(path, me)
    raise UsageError(f"{busy}: its lock {path} keeps changing hands; try again")


def _clear(path: Path, held: bytes) -> None:
    """Remove the lock file holding `held` (a holder gone from this node), and no other."""
    aside = path.with_name(f"{path.name}.stale-{nodeid.suffix()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # another taker cleared it
    try:
        if aside.read_bytes() != held:  # a fresh lock, taken meanwhile: give it back
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)  # (never over a lock taken since)
    finally:
        aside.unlink(missing_ok=True)
