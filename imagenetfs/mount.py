"""Mount lifecycle: checks, mount, daemonize, serve, signals, unmount; and the mount registry.

One function owns a mount's life (`mount`):

1. check the mount point (created if missing, when its parent exists): a stale FUSE mount
   left by a killed daemon (`os.statvfs` gives ENOTCONN) is cleared with `fusermount3 -uz`;
   a live mount, a non-directory or a non-empty directory is refused with one clear line;
2. `pyfuse3.init()` mounts, in the calling process, so mount errors reach the terminal;
3. without `-f`, fork: the child does `setsid`, sends its output to a log file and serves; the
   parent returns once the kernel's FUSE_INIT has been answered (the child writes to a pipe),
   i.e. once the tree answers requests;
4. by default the child answers FUSE_INIT itself (`wire.answer_init`: the protocol options
   are ours, not libfuse's) and supervises worker processes that serve every request
   (`_supervise`: restarts, signals, counters published every few seconds to the mount's
   state file); with `--workers 0`, `trio.run(pyfuse3.main)` serves instead, beside two small
   tasks: SIGTERM/SIGINT call `pyfuse3.terminate()`, and the counters are published;
5. `pyfuse3.close(unmount=True)` in a `finally`: whatever ends serving, nothing stays mounted.

The registry is one JSON state file per mount (mount point, source, index, pid, counters) in
`$XDG_RUNTIME_DIR/imagenetfs` (else the user's cache dir); `status` and `umount` read it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import pyfuse3
import trio

from imagenetfs import wire
from imagenetfs.errors import ImagenetfsError, UsageError
from imagenetfs.fs import Operations
from imagenetfs.index import Index
from imagenetfs.resize import DEFAULT_QUALITY, ResizeCache, ResizeSpec
from imagenetfs.views import Tree

log = logging.getLogger(__name__)

READY_TIMEOUT = 60.0
UNMOUNT_TIMEOUT = 30.0
PUBLISH_INTERVAL = 2.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def default_workers() -> int:
    """Worker processes of a mount: one per CPU this process may use (a job's cpuset), at least
    2 so that one slow request (a resize, a cold read) never holds up the rest, at most 8."""
    return max(2, min(8, len(os.sched_getaffinity(0))))


class MountError(ImagenetfsError):
    """Mounting or unmounting failed for a reason the user can act on."""


@dataclass(frozen=True)
class MountRequest:
    mountpoint: Path
    index_path: Path
    source: Path
    foreground: bool = False
    allow_other: bool = False
    read_threads: int = 8
    workers: int = 0  # wire-protocol worker processes after INIT; 0: pyfuse3 serves alone
    resize: tuple[ResizeSpec, ...] = ()
    resize_quality: int = DEFAULT_QUALITY
    cache_dir: Path | None = None  # None: no persistent resize cache
    cache_size: int = 10 << 30


# --- mount points -------------------------------------------------------------------------


def is_stale(mountpoint: Path) -> bool:
    """A FUSE mount whose daemon is gone: `statvfs` fails with ENOTCONN."""
    try:
        os.statvfs(mountpoint)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def _fusermount(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("fusermount3")
    if exe is None:
        raise MountError("fusermount3 not found: install fuse3 (scripts/setup.sh does)")
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


def _preflight() -> None:
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: this machine (or container) has no FUSE")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise MountError("/dev/fuse is not readable and writable for this user")
    if os.getuid() != 0 and shutil.which("fusermount3") is None:
        raise MountError("fusermount3 not found: install fuse3 (scripts/setup.sh does)")


# --- registry -----------------------------------------------------------------------------


def state_dir() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        return Path(runtime) / "imagenetfs"
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(cache) / "imagenetfs" / "mounts"


def state_file(mountpoint: Path) -> Path:
    key = hashlib.blake2b(str(mountpoint.resolve()).encode(), digest_size=8).hexdigest()
    return state_dir() / f"{key}.json"


def _write_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)


def read_states() -> Iterator[dict[str, Any]]:
    directory = state_dir()
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            state = json.loads(path.read_text())
            state["state_file"] = str(path)
            yield state


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
            return False
    return True


# --- mounting -----------------------------------------------------------------------------


def mount(request: MountRequest) -> int:
    """Mount and serve; returns the exit code (daemonized: once the tree is ready)."""
    mountpoint = request.mountpoint.absolute()
    check_mountpoint(mountpoint)
    _preflight()
    # Nothing may touch the mount point between pyfuse3.init() and serving: until the daemon
    # answers FUSE_INIT, any stat of it (even Path.resolve()) blocks forever.
    state_path = state_file(mountpoint)
    index = Index.open(request.index_path)
    tree = Tree(index, request.resize, quality=request.resize_quality)
    ops = Operations(tree, read_threads=request.read_threads)
    if request.resize and request.cache_dir is not None:
        ops.cache_settings = (request.cache_dir, request.cache_size)
    options = set(pyfuse3.default_options)
    options |= {"fsname=imagenetfs", "subtype=imagenetfs", "ro", "noatime"}
    if request.allow_other:
        options.add("allow_other")
    failure: RuntimeError | None = None
    with _stderr_captured() as said:
        try:
            pyfuse3.init(ops, str(mountpoint), options)
        except RuntimeError as e:
            failure = e
    if failure is not None:
        index.close()
        # libfuse and fusermount3 say why on stderr ("fusermount3: option allow_other only
        # allowed if 'user_allow_other' is set in /etc/fuse.conf"): that is the one line.
        lines = [line.strip() for line in "".join(said).splitlines() if line.strip()]
        reason = lines[-1].removeprefix("fusermount3: ").removeprefix("fuse: ") if lines else ""
        raise MountError(f"cannot mount {mountpoint}: {reason or failure}") from None
    sys.stderr.write("".join(said))
    state = {
        "mountpoint": str(mountpoint),
        "source": str(request.source.absolute()),
        "index": str(request.index_path.absolute()),
        "pid": os.getpid(),
        "started": time.time(),
    }
    if request.foreground:
        return _serve(ops, state, state_path, request.workers)
    return _daemonize(ops, state, state_path, request.workers)


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


def _daemonize(ops: Operations, state: dict[str, Any], state_path: Path, workers: int) -> int:
    ready_r, ready_w = os.pipe()
    log_path = state_path.with_suffix(".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
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

            ops.on_init = ready
            code = _serve(ops, {**state, "pid": os.getpid()}, state_path, workers)
        finally:
            os._exit(code)
    os.close(ready_w)
    try:
        readable, _, _ = select.select([ready_r], [], [], READY_TIMEOUT)
        ok = bool(readable) and os.read(ready_r, 1) == b"1"
    finally:
        os.close(ready_r)
    if not ok:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
        detail = _tail(log_path)
        raise MountError(
            f"the daemon did not start serving {state['mountpoint']}"
            + (f": {detail}" if detail else "")
        )
    return 0


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


def _serve(ops: Operations, state: dict[str, Any], path: Path, workers: int = 0) -> int:
    """Serve until unmounted: with worker processes (we answer FUSE_INIT ourselves, then they
    take every request), or, with `workers == 0`, in pyfuse3's trio loop."""
    code = 0
    try:
        _write_state(path, state)
        if workers:
            wire.answer_init(wire.session_fd())
            if ops.on_init is not None:
                ops.on_init()
            _supervise(ops, workers, state, path)
        else:
            if ops.cache_settings is not None:
                # opened here, in the serving process: an LMDB env must not cross a fork
                ops.tree.cache = _open_cache(*ops.cache_settings)
            trio.run(_main, ops, state, path)
    except BaseException:
        log.exception("the daemon failed")
        code = 1
    finally:
        pyfuse3.close(unmount=True)
        ops.index.close()
        if ops.tree.cache is not None:
            ops.tree.cache.close()
        with contextlib.suppress(OSError):
            path.unlink()
    log.info("unmounted %s", state["mountpoint"])
    return code


def _supervise(ops: Operations, count: int, state: dict[str, Any], path: Path) -> None:
    """Run `count` wire-protocol workers until unmount or a signal; restart one that dies;
    publish their summed counters every PUBLISH_INTERVAL."""
    board = wire.Board(count)
    if ops.cache_settings is not None:  # an unusable cache: say so once, not in each worker
        probe = _open_cache(*ops.cache_settings)
        if probe is None:
            ops.cache_settings = None
        else:
            probe.close()
    # the resize lock file: record locks on its bytes, never any data (see wire.py)
    with tempfile.TemporaryFile() as lock_file:
        _run_workers(ops, count, state, path, board, lock_file.fileno())


def _run_workers(
    ops: Operations,
    count: int,
    state: dict[str, Any],
    path: Path,
    board: wire.Board,
    lock_fd: int,
) -> None:
    """`_supervise`'s loop, given the counters' board and the resize lock file."""
    session = wire.session_fd()
    stopping = False
    workers: dict[int, tuple[int, int]] = {}  # pidfd -> (pid, slot)

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        log.info("%s: unmounting", signal.Signals(signum).name)
        stopping = True
        for pid, _ in workers.values():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)

    parent = os.getpid()

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid:
            workers[os.pidfd_open(pid)] = (pid, slot)
            return
        code = 1
        try:
            _die_with_parent(parent)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides on Ctrl-C
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            ops.index.close()  # the parent's LMDB env must not be used across fork
            index = Index.open(ops.index.path)  # LMDB env and image fds of our own
            tree = Tree(index, ops.tree.specs, quality=ops.tree.quality)
            if ops.cache_settings is not None:
                tree.cache = _open_cache(*ops.cache_settings)
            counters = board.slot(slot)
            wire.Worker(tree, session, ops.uid, ops.gid, counters=counters, lock_fd=lock_fd).run()
            code = 0
        except SystemExit:
            code = 0
        except BaseException:
            log.exception("worker %d failed", os.getpid())
        finally:
            os._exit(code)

    def publish() -> None:
        stats: dict[str, Any] = {**board.totals(), "index": vars(ops.index.stats).copy()}
        if ops.cache_settings is None:
            del stats["resize_cache"]
        with contextlib.suppress(OSError):
            _write_state(path, {**state, "updated": time.time(), "stats": stats})

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    for slot in range(count):
        spawn(slot)
    failures: list[float] = []  # recent unexpected worker exits: a crash loop stops the mount
    log.info("serving with %d worker processes", count)
    next_publish = time.monotonic()
    while workers:
        ended, _, _ = select.select(list(workers), [], [], PUBLISH_INTERVAL)
        if time.monotonic() >= next_publish:
            publish()
            next_publish = time.monotonic() + PUBLISH_INTERVAL
        for pidfd in ended:
            pid, slot = workers.pop(pidfd)
            os.close(pidfd)
            status = os.waitpid(pid, 0)[1]
            if stopping:
                continue
            if os.waitstatus_to_exitcode(status) == 0:  # the mount went away (ENODEV)
                stop(signal.SIGTERM, None)
            else:
                failures = [t for t in failures if t > time.monotonic() - 10] + [time.monotonic()]
                if len(failures) > 3:
                    log.error("workers keep failing: unmounting")
                    stop(signal.SIGTERM, None)
                    continue
                log.warning("worker %d ended (status %d): starting another", pid, status)
                spawn(slot)


def _die_with_parent(parent: int) -> None:
    """SIGKILL this worker when the supervising parent dies (even by SIGKILL): the mount then
    goes stale at once, as with a single daemon, instead of living on headless."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:  # it died before the prctl
        os._exit(1)


def _open_cache(directory: Path, size: int) -> ResizeCache | None:
    try:
        return ResizeCache(directory, size)
    except (OSError, lmdb.Error) as e:
        log.warning("resize cache %s unusable (%s): resizing without a cache", directory, e)
        return None


async def _main(ops: Operations, state: dict[str, Any], path: Path) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_on_signals)
        nursery.start_soon(_publish, ops, state, path)
        await pyfuse3.main(min_tasks=1, max_tasks=64)
        nursery.cancel_scope.cancel()


async def _on_signals() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("%s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()


async def _publish(ops: Operations, state: dict[str, Any], path: Path) -> None:
    while True:
        await trio.sleep(PUBLISH_INTERVAL)
        with contextlib.suppress(OSError):
            _write_state(path, {**state, "updated": time.time(), "stats": ops.statistics()})


# --- unmounting ---------------------------------------------------------------------------


def umount(mountpoint: Path, lazy: bool = False) -> str:
    """Unmount a live or stale mount and wait until its daemon has exited; returns a message."""
    mountpoint = mountpoint.absolute()
    state_path = state_file(mountpoint)
    pid = None
    with contextlib.suppress(OSError, ValueError, KeyError):
        pid = int(json.loads(state_path.read_text())["pid"])
    if is_stale(mountpoint):
        clear_stale(mountpoint)
        with contextlib.suppress(OSError):
            state_path.unlink()
        return f"cleared the stale mount at {mountpoint}"
    if not os.path.ismount(mountpoint):
        raise UsageError(f"{mountpoint} is not mounted")
    result = _fusermount("-u", *(["-z"] if lazy else []), str(mountpoint))
    if result.returncode != 0:
        message = result.stderr.strip().removeprefix("fusermount3: ")
        if "busy" in message.lower():
            raise MountError(f"{mountpoint} is busy (a process uses it); close it or use --lazy")
        raise MountError(f"cannot unmount {mountpoint}: {message}")
    if pid is not None:
        deadline = time.monotonic() + UNMOUNT_TIMEOUT
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            raise MountError(f"unmounted {mountpoint}, but its daemon (pid {pid}) still runs")
    return f"unmounted {mountpoint}"
