"""Mount lifecycle: checks, mount, daemonize, serve, unmount -- one function owns a mount's life.

`mount(config)`:

1. checks the mount point (created if missing, when its parent exists): a stale imagenetfs
   mount of this user -- mounted (the mount table says), but its daemon gone (the registry
   says) -- is cleared with `fusermount3 -uz`; anything else mounted there, a non-directory or
   a non-empty directory is refused with one clear line (the command has already refused a
   registry directory, registry.py, that cannot be used);
2. opens the index (checked against the images) and records the mount in the registry, then
   blocks SIGTERM, SIGINT and SIGHUP: from here on a signal waits until the daemon can act on
   it -- by unmounting;
3. mounts with `pyfuse3.init()`, in the calling process, so mount errors reach the terminal;
4. without `-f`, forks: the child, the daemon, does `setsid`, sends its output to the log
   beside its state file and serves. The parent closes its copy of the session (only the
   daemon holds the mount) and exits once the daemon says it serves -- FUSE_INIT answered,
   workers started (a pipe). A signal to the parent meanwhile is passed on to the daemon; a
   daemon that stops or dies before it is ready leaves nothing mounted: the parent clears it;
5. the daemon serves (supervisor.py) and, whatever ends it, unmounts (`pyfuse3.close`) and
   removes its record.

`umount(mountpoint)` unmounts a live or stale mount and waits (a bounded time) for its daemon
to exit; `--lazy` detaches at once, `--force` also ends the daemon. Like `mount`, it decides
from the mount table and the registry, never by touching the mount point: a daemon that does
not answer cannot make it wait.

Sharing: the tasks of one job (`srun -n 4`) each run `imagenetfs mount` of the same source at
the same point on their node. A mount command takes the mount point's lock (`claimed`: a record
lock on a file of the node's registry, so one command at a time checks and mounts); finding its
own live mount of that source there, it succeeds without mounting (`join`) and adds one user
(its Slurm job) to the mount's users file. `umount` takes one user away and unmounts when none
is left -- so the mount goes once, after the node's last task is done (`--force` unmounts at
once).
"""

from __future__ import annotations

import contextlib
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

from imagenetfs import fs, mountinfo, registry, staging, supervisor, wire
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


def _fusermount(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("fusermount3")
    if exe is None:
        raise MountError(NO_FUSERMOUNT)
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=UNMOUNT_TIMEOUT)


def clear_stale(mountpoint: Path) -> None:
    """Detach the mount at `mountpoint`, whose daemon is gone (`fusermount3 -u -z`: it does
    not ask the daemon, so it returns at once even when one is there and not answering)."""
    result = _fusermount("-u", "-z", "-q", str(mountpoint))
    if mountinfo.at(mountpoint) is not None:
        raise MountError(
            f"{mountpoint}: stale mount left by a killed daemon and it could not be "
            f"cleared: {result.stderr.strip() or 'fusermount3 failed'}"
        )


def check_mountpoint(mountpoint: Path) -> None:
    """`mountpoint` (canonical) can take a new mount: an empty directory with nothing mounted
    -- a stale imagenetfs mount of this user (its daemon gone) is cleared first. Decided from
    the mount table and the registry: a mount there is never touched."""
    mounted = mountinfo.at(mountpoint)
    if mounted is not None:
        state = registry.find_state(mountpoint)
        ours = mounted.is_imagenetfs_of(os.getuid())
        if ours and state is not None and not registry.is_alive(state):
            log.info("clearing the stale mount at %s left by a killed daemon", mountpoint)
            clear_stale(mountpoint)
            registry.remove(mountpoint)
        elif ours and state is None:
            raise UsageError(
                f"mount point {mountpoint} is busy: an imagenetfs mount of yours that this "
                f"node has no record of (made by an earlier version?) -- "
                f"imagenetfs umount {mountpoint} unmounts it"
            )
        else:
            raise UsageError(
                f"mount point {mountpoint} is busy: something is mounted there; unmount it, or "
                "give another MOUNTPOINT"
            )
    if not mountpoint.exists() and not mountpoint.is_symlink():
        if not mountpoint.parent.is_dir():
            raise UsageError(
                f"mount point {mountpoint}: {mountpoint.parent} does not exist; create it, or "
                "give another MOUNTPOINT"
            )
        try:
            mountpoint.mkdir()  # `imagenetfs mount /tmp/inet` works on a fresh machine
        except OSError as e:
            raise UsageError(
                f"mount point {mountpoint}: cannot create it ({e.strerror}); give an empty "
                "directory you own"
            ) from None
    if not mountpoint.is_dir():
        raise UsageError(f"mount point {mountpoint} is not a directory; give an empty directory")
    try:
        empty = next(os.scandir(mountpoint), None) is None
    except PermissionError:
        raise UsageError(
            f"mount point {mountpoint}: permission denied; give an empty directory you own"
        ) from None
    if not empty:
        raise UsageError(f"mount point {mountpoint} is not empty; give an empty directory")
    if os.getuid() != 0 and not os.access(mountpoint, os.W_OK):  # (what fusermount3 demands)
        raise UsageError(
            f"mount point {mountpoint}: you cannot write to it, and fusermount3 mounts only "
            "there; give an empty directory you own"
        )


def _preflight() -> None:
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: this machine (or container) has no FUSE")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise MountError("/dev/fuse is not readable and writable for this user")
    if os.getuid() != 0 and shutil.which("fusermount3") is None:
        raise MountError(NO_FUSERMOUNT)


# --- mounting -----------------------------------------------------------------------------


def mount(config: ServeConfig) -> int:
    """Mount and serve: returns the exit code when the daemon ends (`-f`); daemonized, the
    calling process exits 0 as soon as the tree is ready."""
    mountpoint = config.mountpoint
    check_mountpoint(mountpoint)
    _preflight()
    state_path = registry.state_file(mountpoint)
    index = Index.open(config.index, source=config.source, names=config.images)
    fuse_ops = fs.Operations(read_threads=config.read_threads) if config.workers == 0 else None
    state = {
        "mountpoint": str(mountpoint),
        "source": str(config.source.absolute()),
        "index": str(config.index.absolute()),
        "started": time.time(),
        **registry.stamp(),
        **config.settings(),
    }
    try:
        registry.set_users(mountpoint, [registry.job_id() or "-"])
    except OSError:
        index.close()
        raise
    # Nothing may touch the mount point between pyfuse3.init() and the FUSE_INIT answer: any
    # stat of it (even Path.resolve()) blocks until then.
    supervisor.block_signals()
    try:
        _init(fuse_ops or pyfuse3.Operations(), config)
    except BaseException:
        index.close()
        supervisor.unblock_signals()
        registry.remove(mountpoint)
        raise
    daemon = supervisor.Daemon(config, index, fuse_ops, state, state_path)
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
        _forget(daemon)
    log.info("unmounted %s", daemon.config.mountpoint)
    return code


def _forget(daemon: supervisor.Daemon) -> None:
    """Remove the daemon's record, if it is still its own (a new mount at the point, made
    once this one was unmounted, has a record of its own)."""
    own = registry.find_state(daemon.config.mountpoint)
    if own is not None and own.get("pid") == os.getpid():
        registry.remove(daemon.config.mountpoint)


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
            daemon.state.update(registry.stamp())
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
    if mountinfo.at(mountpoint) is not None:  # it died before it could unmount: stale now
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
def claimed(mountpoint: Path) -> Iterator[registry.Lock]:
    """Hold the mount point's lock: one `mount`/`umount` command of this user at a time
    decides what to do there (the lock goes with the process, also when it is killed). The
    caller has checked the registry's directory (`registry.ensure_dir`)."""
    with registry.locked(registry.lock_file(mountpoint)) as lock:
        yield lock


def serving(mountpoint: Path) -> registry.State | None:
    """This user's imagenetfs mount at `mountpoint`, if one serves there."""
    state = registry.find_state(mountpoint)
    mounted = mountinfo.at(mountpoint)
    if state is None or mounted is None or not mounted.is_imagenetfs_of(os.getuid()):
        return None
    return state if registry.is_alive(state) else None


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
    users = [*registry.users(mountpoint), registry.job_id() or "-"]
    registry.set_users(mountpoint, users)
    return (
        f"{mountpoint}: already mounted (source {state['source']}, pid {state['pid']}); "
        f"{len(users)} users"
    )


# --- unmounting ---------------------------------------------------------------------------


def umount(
    mountpoint: Path, lazy: bool = False, force: bool = False, drop_stage: bool = False
) -> str:
    """Count one user of the mount less; unmount it (live or stale) when none is left, or with
    `force`; returns a message. Decided from the mount table and the registry, so it never
    waits on a daemon that does not answer: `lazy` and `force` detach at once, `force` also
    ends the daemon; a plain unmount waits (a bounded time) for the daemon to exit.
    `drop_stage`: once it is unmounted, remove the copies it staged (staging.drop)."""
    mountpoint = mountinfo.canonical(mountpoint)
    registry.ensure_dir()
    with claimed(mountpoint) as lock:
        state = registry.find_state(mountpoint) if drop_stage else None
        try:
            message = _umount(mountpoint, lazy, force)
            if state is not None and mountinfo.at(mountpoint) is None:  # gone, not joined
                message += staging.drop(state)
        finally:  # no record left: nothing for the lock to guard
            lock.discard = not registry.state_file(mountpoint).exists()
    registry.sweep()
    return message


def _umount(mountpoint: Path, lazy: bool, force: bool) -> str:
    """What `umount` does, decided from the mount table and the registry; returns what
    happened."""
    state = registry.find_state(mountpoint)
    mounted = mountinfo.at(mountpoint)
    alive = state is not None and registry.is_alive(state)
    pid = state.get("pid") if state is not None else None
    if mounted is None:
        if state is None:
            raise UsageError(f"{mountpoint} is not mounted")
        if alive and force:
            assert isinstance(pid, int)
            _end(pid)
            registry.remove(mountpoint)
            return f"ended its daemon (pid {pid}): {mountpoint} was no longer mounted here"
        if alive:
            raise UsageError(
                f"{mountpoint} is not mounted here, but its daemon (pid {pid}) still runs "
                "(detached and still in use, or mounted in another mount namespace): "
                f"imagenetfs umount --force {mountpoint} ends it"
            )
        registry.remove(mountpoint)
        return (
            f"{mountpoint} was not mounted any more: removed the record of its daemon "
            f"(pid {pid}), which had ended without unmounting"
        )
    if not mounted.is_imagenetfs_of(os.getuid()):
        raise UsageError(f"{mountpoint} is not an imagenetfs mount of yours ({mounted.fstype})")
    if state is None:  # an earlier version's mount, or its record was removed
        _detach(mountpoint, lazy or force)
        return f"unmounted {mountpoint} (this node had no record of it)"
    if not alive:
        clear_stale(mountpoint)
        registry.remove(mountpoint)
        return f"cleared the stale mount at {mountpoint} (its daemon, pid {pid}, had died)"
    users = registry.users(mountpoint)
    if len(users) > 1 and not force:
        mine = registry.job_id() or "-"
        users.remove(mine if mine in users else users[-1])
        registry.set_users(mountpoint, users)
        return (
            f"{mountpoint}: still used by {len(users)} more (imagenetfs mount there "
            "counted them); left mounted -- imagenetfs umount --force unmounts now"
        )
    assert isinstance(pid, int)
    _detach(mountpoint, lazy or force)
    if force:
        _end(pid)
    elif lazy:  # its daemon ends (and removes its record) once no file there is open
        return f"detached {mountpoint}; its daemon (pid {pid}) ends when nothing uses it"
    else:
        _await_exit(mountpoint, pid)
    registry.remove(mountpoint)
    return f"unmounted {mountpoint}"


def _detach(mountpoint: Path, lazy: bool) -> None:
    result = _fusermount("-u", *(["-z"] if lazy else []), str(mountpoint))
    if result.returncode != 0:
        message = result.stderr.strip().removeprefix("fusermount3: ")
        if "busy" in message.lower():
            raise MountError(f"{mountpoint} is busy (a process uses it); close it or use --lazy")
        if "/etc/mtab" in message:  # (a minimal root or container; installed systems have it)
            raise MountError(
                f"cannot unmount {mountpoint}: fusermount3 needs /etc/mtab, which this machine "
                "lacks (an admin: ln -s ../proc/self/mounts /etc/mtab)"
            )
        raise MountError(f"cannot unmount {mountpoint}: {message}")


def _await_exit(mountpoint: Path, pid: int) -> None:
    """Wait for the daemon of a mount just unmounted to exit (it sees the mount gone)."""
    deadline = time.monotonic() + UNMOUNT_TIMEOUT
    while registry.pid_alive(pid):
        if registry.process_state(pid) == "T":
            raise MountError(
                f"unmounted {mountpoint}, but its daemon (pid {pid}) is stopped (SIGSTOP, a "
                f"debugger) and exits only when continued (kill -CONT {pid}); "
                f"imagenetfs umount --force ends it"
            )
        if time.monotonic() > deadline:
            raise MountError(f"unmounted {mountpoint}, but its daemon (pid {pid}) still runs")
        time.sleep(0.05)


def _end(pid: int) -> None:
    """End a daemon (`umount --force`): SIGTERM (and SIGCONT to it and its workers, should
    they be stopped), then SIGKILL if it has not exited within `STOP_TIMEOUT` seconds; its
    workers die with it."""
    for target, signum in [(pid, signal.SIGTERM), (pid, signal.SIGCONT)] + [
        (worker, signal.SIGCONT) for worker in registry.children(pid)
    ]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signum)
    deadline = time.monotonic() + STOP_TIMEOUT
    while registry.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if registry.pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
