"""Mount lifecycle: checks, mount, daemonize, serve, unmount -- one function owns a mount's life.

`mount(config)`:

1. checks the mount point (created if missing, when its parent exists): a stale FUSE mount
   left by a killed daemon (`os.statvfs` gives ENOTCONN) is cleared with `fusermount3 -uz`; a
   live mount, a non-directory or a non-empty directory is refused with one clear line; so is
   a registry directory (registry.py) that cannot be written;
2. opens the index (checked against the images), then blocks SIGTERM, SIGINT and SIGHUP: from
   here on a signal waits until the daemon can act on it -- by unmounting;
3. mounts with `pyfuse3.init()`, in the calling process, so mount errors reach the terminal;
4. without `-f`, forks: the child, the daemon, does `setsid`, sends its output to the log
   beside its state file and serves. The parent closes its copy of the session (only the
   daemon holds the mount) and exits once the daemon says it serves -- FUSE_INIT answered,
   workers started (a pipe). A signal to the parent meanwhile is passed on to the daemon; a
   daemon that stops or dies before it is ready leaves nothing mounted: the parent clears it;
5. the daemon serves (supervisor.py) and, whatever ends it, unmounts (`pyfuse3.close`) and
   removes its state file.

`umount(mountpoint)` unmounts a live or stale mount and waits for its daemon to exit.

Sharing: the tasks of one job (`srun -n 4`) each run `imagenetfs mount` of the same source at
the same point. A mount command takes the mount point's lock (`claimed`: a record lock on a
file beside the state file, so one command at a time checks and mounts); finding its own live
mount of that source there, it succeeds without mounting (`join`) and counts one more user in
`<state>.refs`. `umount` counts one user less and unmounts when none is left -- so the mount
goes once, after the last task is done (`--force` unmounts at once).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyfuse3
import trio

from imagenetfs import fs, registry, supervisor, wire
from imagenetfs.config import ServeConfig
from imagenetfs.errors import ImagenetfsError, UsageError
from imagenetfs.index import Index

log = logging.getLogger(__name__)

READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
UNMOUNT_TIMEOUT = 30.0


class MountError(ImagenetfsError):
    """Mounting or unmounting failed for a reason the user can act on."""


# --- mount points -------------------------------------------------------------------------


NO_FUSERMOUNT = (
    "fusermount3 not found: install fuse3 (scripts/setup.sh does; without root, an admin: "
    "apt-get install fuse3, or dnf install fuse3)"
)


def is_stale(mountpoint: Path) -> bool:
    """A FUSE mount whose daemon is gone: `statvfs` fails with ENOTCONN."""
    try:
        os.statvfs(mountpoint)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def is_mounted(mountpoint: Path) -> bool:
    """Something is mounted at `mountpoint` (absolute), learnt without touching it -- a mount
    whose daemon has not answered FUSE_INIT yet would block whoever does."""
    wanted = os.fsencode(mountpoint)
    with open("/proc/self/mounts", "rb") as f:
        for line in f:
            point = line.split(b" ")[1]
            if point.replace(b"\\040", b" ").replace(b"\\134", b"\\") == wanted:
                return True
    return False


def _fusermount(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("fusermount3")
    if exe is None:
        raise MountError(NO_FUSERMOUNT)
    return subprocess.run([exe, *args], capture_output=True, text=True)


def clear_stale(mountpoint: Path) -> None:
    result = _fusermount("-u", "-z", "-q", str(mountpoint))
    if is_stale(mountpoint):
        raise MountError(
            f"{mountpoint}: stale mount left by a killed daemon and it could not be "
            f"cleared: {result.stderr.strip() or 'fusermount3 failed'}"
        )


def check_mountpoint(mountpoint: Path) -> None:
    if is_stale(mountpoint):
        log.info("clearing the stale mount at %s left by a killed daemon", mountpoint)
        clear_stale(mountpoint)
    if not mountpoint.exists() and not mountpoint.is_symlink():
        if not mountpoint.parent.is_dir():
            raise UsageError(f"mount point {mountpoint}: {mountpoint.parent} does not exist")
        mountpoint.mkdir()  # `imagenetfs mount /tmp/inet` works on a fresh machine
    if not mountpoint.is_dir():
        raise UsageError(f"mount point {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise UsageError(f"mount point {mountpoint} is busy: something is mounted there")
    try:
        empty = next(os.scandir(mountpoint), None) is None
    except PermissionError:
        raise UsageError(f"mount point {mountpoint}: permission denied") from None
    if not empty:
        raise UsageError(f"mount point {mountpoint} is not empty")


def _preflight(state_path: Path) -> None:
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: this machine (or container) has no FUSE")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise MountError("/dev/fuse is not readable and writable for this user")
    if os.getuid() != 0 and shutil.which("fusermount3") is None:
        raise MountError(NO_FUSERMOUNT)
    directory = state_path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise MountError(
            f"cannot write the mount registry {directory}: {e.strerror} "
            "(set XDG_RUNTIME_DIR or XDG_CACHE_HOME to a writable directory)"
        ) from None


# --- mounting -----------------------------------------------------------------------------


def mount(config: ServeConfig) -> int:
    """Mount and serve: returns the exit code when the daemon ends (`-f`); daemonized, the
    calling process exits 0 as soon as the tree is ready."""
    mountpoint = config.mountpoint
    check_mountpoint(mountpoint)
    state_path = registry.state_file(mountpoint)
    _preflight(state_path)
    # Nothing may touch the mount point between pyfuse3.init() and the FUSE_INIT answer: any
    # stat of it (even Path.resolve()) blocks until then.
    index = Index.open(config.index, source=config.source, names=config.images)
    listed = Path(os.path.realpath(mountpoint))  # as the kernel will list it (--idle-timeout)
    fuse_ops = fs.Operations(read_threads=config.read_threads) if config.workers == 0 else None
    supervisor.block_signals()
    try:
        _init(fuse_ops or pyfuse3.Operations(), config)
    except BaseException:
        index.close()
        supervisor.unblock_signals()
        raise
    state = {
        "mountpoint": str(mountpoint),
        "source": str(config.source.absolute()),
        "index": str(config.index.absolute()),
        "pid": os.getpid(),
        "started": time.time(),
        **config.settings(),
    }
    daemon = supervisor.Daemon(config, index, fuse_ops, state, state_path, listed)
    return _serve(daemon) if config.foreground else _daemonize(daemon)


def _init(ops: pyfuse3.Operations, config: ServeConfig) -> None:
    options = set(pyfuse3.default_options)
    options |= {"fsname=imagenetfs", "subtype=imagenetfs", "ro", "noatime"}
    if config.allow_other:
        options.add("allow_other")
    failure: RuntimeError | None = None
    with _stderr_captured() as said:
        try:
            pyfuse3.init(ops, str(config.mountpoint), options)
        except RuntimeError as e:
            failure = e
    if failure is not None:
        # libfuse and fusermount3 say why on stderr ("fusermount3: option allow_other only
        # allowed if 'user_allow_other' is set in /etc/fuse.conf"): that is the one line.
        lines = [line.strip() for line in "".join(said).splitlines() if line.strip()]
        reason = lines[-1].removeprefix("fusermount3: ").removeprefix("fuse: ") if lines else ""
        raise MountError(f"cannot mount {config.mountpoint}: {reason or failure}") from None
    sys.stderr.write("".join(said))


@contextlib.contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """Send fd 2 (this process's and its children's, e.g. fusermount3) to a temporary file
    meanwhile; the yielded list holds what was written once the block has ended."""
    said: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            said.append(tmp.read().decode(errors="replace"))


def _serve(daemon: supervisor.Daemon) -> int:
    """Serve until unmounted or stopped, then unmount: the daemon's life after the mount."""
    code = 1
    try:
        registry.write_state(daemon.state_path, daemon.state)
        trio.run(daemon.main)
        code = 0
    except BaseException:
        log.exception("the daemon failed")
    finally:
        pyfuse3.close(unmount=True)
        daemon.index.close()
        with contextlib.suppress(OSError):
            daemon.state_path.unlink()
    log.info("unmounted %s", daemon.config.mountpoint)
    return code


def _daemonize(daemon: supervisor.Daemon) -> int:
    mountpoint, log_path = daemon.config.mountpoint, daemon.state_path.with_suffix(".log")
    ready_r, ready_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the daemon
        code = 1
        try:
            os.close(ready_r)
            os.setsid()
            _redirect_stdio(log_path)

            def ready() -> None:
                with contextlib.suppress(OSError):
                    os.write(ready_w, b"1")
                    os.close(ready_w)

            daemon.ready = ready
            daemon.state["pid"] = os.getpid()
            code = _serve(daemon)
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(wire.session_fd())  # only the daemon holds the mount: if it dies, the mount does
    daemon.index.close()
    forwarded: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        forwarded.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in supervisor.STOP_SIGNALS:
        signal.signal(signum, forward)
    supervisor.unblock_signals()
    try:
        readable, _, _ = select.select([ready_r], [], [], READY_TIMEOUT)
        ok = bool(readable) and os.read(ready_r, 1) == b"1"
    finally:
        os.close(ready_r)
    supervisor.block_signals()  # one arriving from now on waits here: see below
    pending = [int(s) for s in supervisor.STOP_SIGNALS if s in signal.sigpending()]
    for sent in pending:
        forward(sent, None)
    if ok and not forwarded:
        # Done: leave at once. A signal that came later would find no process to stop (a
        # Python exiting normally runs no handler), so the time for one to come is kept
        # to the few instructions left.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    _stop(pid, mountpoint)
    if forwarded:
        name = signal.Signals(forwarded[0]).name
        raise MountError(f"{name} while mounting {mountpoint}: nothing is mounted")
    detail = _tail(log_path)
    raise MountError(
        f"the daemon did not start serving {mountpoint}" + (f": {detail}" if detail else "")
    )


def _stop(pid: int, mountpoint: Path) -> None:
    """Make sure a daemon that did not become ready is gone, and so is its mount."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        time.sleep(0.02)
    if is_mounted(mountpoint):  # it died before it could unmount: the mount is stale now
        with contextlib.suppress(MountError):
            clear_stale(mountpoint)


def _redirect_stdio(log_path: Path) -> None:
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(null)
    os.close(out)


def _tail(path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        return lines[-1] if lines else ""
    return ""


# --- sharing a mount: the tasks of a job ----------------------------------------------------


@contextlib.contextmanager
def claimed(mountpoint: Path) -> Iterator[None]:
    """Hold the mount point's lock: one `mount`/`umount` command of this user at a time
    decides what to do there (the lock goes with the process, also when it is killed)."""
    path = registry.state_file(mountpoint).with_suffix(".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise MountError(
            f"cannot write the mount registry {path.parent}: {e.strerror} "
            "(set XDG_RUNTIME_DIR or XDG_CACHE_HOME to a writable directory)"
        ) from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def serving(mountpoint: Path) -> registry.State | None:
    """This user's imagenetfs mount at `mountpoint`, if one serves there."""
    state = registry.find_state(mountpoint)
    if state is None or not registry.is_alive(state) or not os.path.ismount(mountpoint):
        return None
    return state


def join(mountpoint: Path, state: registry.State, source: Path, index: Path | None) -> str:
    """Use the mount already serving `source` at `mountpoint` (one user more); refused when
    it serves something else."""
    if state.get("source") != str(source.absolute()) or (
        index is not None and state.get("index") != str(index.absolute())
    ):
        raise UsageError(
            f"{mountpoint} is busy: imagenetfs serves {state.get('source')} there (index "
            f"{state.get('index')}, pid {state.get('pid')}); unmount it or use another point"
        )
    users = _users(mountpoint) + 1
    _set_users(mountpoint, users)
    return (
        f"{mountpoint}: already mounted (source {state['source']}, pid {state['pid']}); "
        f"{users} users"
    )


def _users(mountpoint: Path) -> int:
    with contextlib.suppress(OSError, ValueError):
        return max(1, int(registry.state_file(mountpoint).with_suffix(".refs").read_text()))
    return 1


def _set_users(mountpoint: Path, users: int) -> None:
    path = registry.state_file(mountpoint).with_suffix(".refs")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(f"{users}\n")
    os.replace(tmp, path)


def first_user(mountpoint: Path) -> None:
    """A new mount at `mountpoint`: one user."""
    _set_users(mountpoint, 1)


# --- unmounting ---------------------------------------------------------------------------


def umount(mountpoint: Path, lazy: bool = False, force: bool = False) -> str:
    """Count one user of the mount less; unmount it (live or stale) when none is left, or with
    `force`, and wait until its daemon has exited; returns a message."""
    mountpoint = mountpoint.absolute()
    with claimed(mountpoint):
        return _umount(mountpoint, lazy, force)


def _umount(mountpoint: Path, lazy: bool, force: bool) -> str:
    state_path = registry.state_file(mountpoint)
    state = registry.find_state(mountpoint)
    pid = state.get("pid") if state is not None else None
    if is_stale(mountpoint):
        clear_stale(mountpoint)
        with contextlib.suppress(OSError):
            state_path.unlink()
        state_path.with_suffix(".refs").unlink(missing_ok=True)
        return f"cleared the stale mount at {mountpoint}"
    if not os.path.ismount(mountpoint):
        raise UsageError(f"{mountpoint} is not mounted")
    users = _users(mountpoint) if state is not None else 1
    if users > 1 and not force:
        _set_users(mountpoint, users - 1)
        return (
            f"{mountpoint}: still used by {users - 1} more (imagenetfs mount there "
            "counted them); left mounted -- imagenetfs umount --force unmounts now"
        )
    result = _fusermount("-u", *(["-z"] if lazy else []), str(mountpoint))
    if result.returncode != 0:
        message = result.stderr.strip().removeprefix("fusermount3: ")
        if "busy" in message.lower():
            raise MountError(f"{mountpoint} is busy (a process uses it); close it or use --lazy")
        raise MountError(f"cannot unmount {mountpoint}: {message}")
    if isinstance(pid, int):
        deadline = time.monotonic() + UNMOUNT_TIMEOUT
        while registry.pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if registry.pid_alive(pid):
            raise MountError(f"unmounted {mountpoint}, but its daemon (pid {pid}) still runs")
    state_path.with_suffix(".refs").unlink(missing_ok=True)
    return f"unmounted {mountpoint}"
