"""The mount registry: what this node keeps about this user's mounts.

Where. One directory per node and user, the same for every command whatever its environment:
`$IMAGENETFS_STATE_DIR` if set, else `/tmp/imagenetfs-<uid>/mounts`. Not in the home directory:
every node of a multi-node job shares it, and mounts at the same path on two nodes would be one
record. Not in `$XDG_RUNTIME_DIR` either: batch jobs have none, an ssh session on the same node has
one, and logind removes it when the user's last session ends -- while the mount lives on -- so two
commands would disagree about where to look. The directory (and, by default, its parent in /tmp)
must be this user's own: a directory (not a symlink), owned by this uid, mode 0700 -- made so when
missing, refused otherwise (in /tmp another user could have made it first) -- and on a node-local
filesystem.

What. Per mount point (`<key>` = a hash of its absolute path):

- `<key>.json`: the state -- mount point, source, index, the daemon's pid and start time, the
  node (hostname, boot id), the Slurm job, the settings, and, refreshed every few seconds by the
  daemon, its counters. Written atomically (a temporary file renamed over it);
- `<key>.users`: one line per command that mounted or joined the mount and has not unmounted:
  its Slurm job id, or `-`;
- `<key>.lock`: the lock one `mount`/`umount` command at a time holds (mount.py);
- `<key>.log`: the daemon's log.

Whose, alive, mounted. A record is this node's when its node is this one; another node's (a
state directory on storage that nodes share) is never read as ours. Its daemon is alive when
its pid runs with the recorded start time (a pid reused after a reboot or a wrap is not it).
Whether something is mounted comes from /proc/self/mountinfo (mountinfo.py): nothing here
touches a mount point, so nothing waits on a daemon that stopped answering.

Housekeeping (`sweep`). A record whose daemon is gone and whose mount point holds nothing is
dead: its files are removed (`status`, `mount` and `umount` sweep). Lone `.users` and `.lock`
files go with it; a lone log is kept for `LOG_KEEP` seconds (why the daemon ended).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import os
import shutil
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imagenetfs import mountinfo, nodeid, places
from imagenetfs.errors import ImagenetfsError

State = dict[str, Any]

LOG_KEEP = 24 * 3600.0
MIN_FREE = 1 << 20  # a state file is a few KB; this much free space, or the command stops


class StateDirError(ImagenetfsError):
    """The state directory cannot be used."""


def state_dir() -> Path:
    """Where this node keeps this user's mounts (not checked: `ensure_dir` checks)."""
    return places.state_dir()


def is_default() -> bool:
    """The node's registry of this user (not one of `$IMAGENETFS_STATE_DIR`'s): `status`
    lists the user's imagenetfs mounts it has no record of (an earlier version's) only here."""
    return "IMAGENETFS_STATE_DIR" not in os.environ


def ensure_dir(*, for_writing: bool = True) -> Path:
    """The state directory, made if missing, after checking that it is ours alone, node-local
    and -- `for_writing` -- that a state file fits."""
    directory = state_dir()
    for level in [directory.parent, directory] if is_default() else [directory]:
        _own(level, directory)
    shared = mountinfo.filesystem_of(directory)
    if shared is not None and shared.fstype in mountinfo.NETWORK_FILESYSTEMS:
        raise StateDirError(
            _cannot(directory, f"it is on {shared.fstype}, which other nodes share")
        )
    if for_writing:
        try:
            free = os.statvfs(directory)
        except OSError as e:
            raise StateDirError(_cannot(directory, e.strerror or str(e))) from None
        if free.f_bavail * free.f_frsize < MIN_FREE:
            raise StateDirError(_cannot(directory, "its filesystem is full"))
    return directory


def _own(level: Path, directory: Path) -> None:
    """`level` (`directory` or its parent) is a directory of this user's alone: made so if
    missing, refused if not."""
    with contextlib.suppress(FileExistsError):
        level.mkdir(mode=0o700)
    try:
        st = os.lstat(level)
    except OSError as e:
        raise StateDirError(_cannot(directory, f"{level}: {e.strerror or e}")) from None
    where = "" if level == directory else f"{level}: "
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        why = "not a directory (a symlink or a file is there)"
        raise StateDirError(_cannot(directory, where + why))
    if st.st_uid != os.getuid():
        why = f"it belongs to uid {st.st_uid}, not to you"
        raise StateDirError(_cannot(directory, where + why))
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(level, 0o700)  # ours: a umask may have widened a directory we made


def _cannot(directory: Path, why: str) -> str:
    how = (
        "set IMAGENETFS_STATE_DIR to a directory of yours on this node"
        if "IMAGENETFS_STATE_DIR" not in os.environ
        else "point IMAGENETFS_STATE_DIR elsewhere"
    )
    return f"cannot keep mount state in {directory}: {why} ({how})"


def state_file(mountpoint: Path) -> Path:
    """The state file of the mount at `mountpoint` (as given: absolute, not resolved -- that
    would stat a mount point that may not answer)."""
    point = os.path.normpath(mountpoint.absolute())
    key = hashlib.blake2b(point.encode(errors="surrogateescape"), digest_size=8).hexdigest()
    return state_dir() / f"{key}.json"


def layout_dir(state_path: Path) -> Path:
    """The directory of a mount's shard layout file (views/layoutfile.py), beside its state."""
    return state_path.with_suffix(".shards")


def log_file(mountpoint: Path) -> Path:
    return state_file(mountpoint).with_suffix(".log")


def users_file(mountpoint: Path) -> Path:
    return state_file(mountpoint).with_suffix(".users")


def lock_file(mountpoint: Path) -> Path:
    return state_file(mountpoint).with_suffix(".lock")


# --- the node and its processes -------------------------------------------------------------


@functools.cache
def node() -> dict[str, str]:
    """This node's identity: its hostname and this boot's id (asked once: every record read
    is compared with it)."""
    boot = ""
    with contextlib.suppress(OSError):
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return {"host": socket.gethostname(), "boot_id": boot}


def process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks after boot), or None if it is not running."""
    return nodeid.start_time(pid)


def process_state(pid: int) -> str:
    """The one-letter state of `pid` (R, S, D, T for stopped...), or "" when gone."""
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0]
    return ""


def children(pid: int) -> list[int]:
    """The child processes of `pid` (a daemon's workers)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def pid_alive(pid: int) -> bool:
    """A running process of this node (not a zombie); `pid` must be positive."""
    return nodeid.running_here(pid, nodeid.here())


def stamp() -> State:
    """What a state records about the process writing it: its pid, when it started, where."""
    pid = os.getpid()
    return {"pid": pid, "pid_start": process_start(pid), "node": dict(node()), "job": job_id()}


def job_id() -> str | None:
    return os.environ.get("SLURM_JOB_ID") or None


def is_alive(state: State) -> bool:
    """Its daemon runs: the state names a pid that runs, and (when recorded) started when the
    daemon did."""
    pid, started = state.get("pid"), state.get("pid_start")
    if not isinstance(pid, int) or not (started is None or isinstance(started, int)):
        return False
    return nodeid.running_here(pid, nodeid.here(), started)


def is_this_node(state: State) -> bool:
    recorded = state.get("node")
    return isinstance(recorded, dict) and recorded == node()


# --- state files ----------------------------------------------------------------------------


def write_state(path: Path, state: State) -> None:
    """Write `state` to `path` atomically; on failure nothing is left and the error names the
    file."""
    _write(path, json.dumps(state, indent=1))


def _write(path: Path, text: str) -> None:
    """A temporary file renamed over `path`; nothing left behind on failure."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OSError(e.errno, f"cannot write mount state: {e.strerror}", str(path)) from None


def _read(path: Path) -> State | None:
    with contextlib.suppress(OSError, ValueError):
        state = json.loads(path.read_text())
        if isinstance(state, dict):
            state["state_file"] = str(path)
            return state
    return None


def read_states() -> Iterator[State]:
    """This node's records, live or dead."""
    directory = state_dir()
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("*.json")):
        state = _read(path)
        if state is not None and is_this_node(state):
            yield state


def find_state(mountpoint: Path) -> State | None:
    """This node's record of the mount at `mountpoint` (as given: absolute), if there is one."""
    state = _read(state_file(mountpoint))
    if state is None or not is_this_node(state):
        return None
    return state if state.get("mountpoint") == os.path.normpath(mountpoint.absolute()) else None


def users(mountpoint: Path) -> list[str]:
    """The users of a mount: one job id (or "-") per `mount` command that has not unmounted.
    A record with no such file (an older record) counts one."""
    with contextlib.suppress(OSError):
        lines = users_file(mountpoint).read_text().split()
        if lines:
            return lines
    return ["-"]


def set_users(mountpoint: Path, users: list[str]) -> None:
    _write(users_file(mountpoint), "".join(f"{user}\n" for user in users))


def remove(mountpoint: Path, *, log: bool = False) -> None:
    """Remove a mount's record: its state and users files (and its log, with `log`). Its lock
    file goes with the lock (mount.claimed)."""
    suffixes = [".json", ".users"] + ([".log"] if log else [])
    for suffix in suffixes:
        with contextlib.suppress(FileNotFoundError):
            state_file(mountpoint).with_suffix(suffix).unlink()
    shutil.rmtree(layout_dir(state_file(mountpoint)), ignore_errors=True)


# --- locks ----------------------------------------------------------------------------------


class Lock:
    """A held (or, non-blocking, maybe not held) lock on a file of the registry."""

    def __init__(self, path: Path, acquired: bool) -> None:
        self.path = path
        self.acquired = acquired
        self.discard = False  # set: the lock file is removed before the lock is let go


@contextlib.contextmanager
def locked(path: Path, *, blocking: bool = True) -> Iterator[Lock]:
    """Hold a record lock (`lockf`) on `path`, made if missing. The lock goes with the process,
    also when it is killed. Lock files are removed (`Lock.discard`, `sweep`) only by their
    holder; whoever then acquired the removed file sees that its path names another file now
    (or none) and locks again."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            yield Lock(path, acquired=False)
            return
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    lock = Lock(path, acquired=True)
    try:
        yield lock
    finally:
        if lock.discard:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        os.close(fd)


# --- housekeeping ---------------------------------------------------------------------------


def dead(state: State) -> bool:
    """A record whose daemon is gone and whose mount point holds nothing (on this node)."""
    if is_alive(state):
        return False
    point = state.get("mountpoint")
    return not isinstance(point, str) or mountinfo.at(point) is None


def sweep(now: float | None = None) -> list[State]:
    """Remove dead records, and lone files no record explains (each under its lock, when no
    command holds it); returns the dead records removed."""
    directory = state_dir()
    if not directory.is_dir():
        return []
    now = time.time() if now is None else now
    removed = []
    for state in list(read_states()):
        if not dead(state):
            continue
        mountpoint = Path(state["mountpoint"])
        with locked(lock_file(mountpoint), blocking=False) as lock:
            if lock.acquired and dead(state):
                remove(mountpoint)
                lock.discard = True
                removed.append(state)
    for path in sorted(directory.iterdir()):
        key = path.name.split(".")[0]
        if (directory / f"{key}.json").exists():
            continue
        try:
            age = now - path.lstat().st_mtime
        except FileNotFoundError:
            continue
        if path.suffix == ".log":
            if age > LOG_KEEP:
                path.unlink(missing_ok=True)
            continue
        with locked(directory / f"{key}.lock", blocking=False) as lock:
            if not lock.acquired:  # a command is mounting or unmounting there
                continue
            if path.suffix == ".shards" and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            elif path.suffix == ".users" or (".tmp" in path.name and age > 60):
                path.unlink(missing_ok=True)
            lock.discard = True
    return removed
