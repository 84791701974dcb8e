"""The daemon's trio program: serve one mount until it is unmounted or told to stop.

`Daemon.main` runs in the daemon process once pyfuse3 has mounted (mount.py), in `trio.run`:
one nursery holds

- the signal receiver: SIGTERM, SIGINT or SIGHUP stop serving;
- the publisher: every `PUBLISH_INTERVAL` seconds the counters, the images served and the
  staging progress go to the mount's state file -- and with `--metrics FILE` to FILE, in the
  Prometheus text format (metrics.py), once more when serving has ended;
- with `--stage`, the stager (staging.py) in a thread: each image copied and checked is
  switched here, then in each worker (SIGUSR1, see `staging.adopt`);
- with `--idle-timeout T`, the idle watch: once the counters have not moved for T seconds,
  it looks in /proc, in a thread, for a process that uses the mount (holders.py: by the
  mount's device, in every mount namespace) and unmounts when there is none. A program the
  kernel serves from its caches alone sends no request and may hold nothing open between two
  reads; so with an idle timeout the kernel keeps entries and attributes for a third of it
  (`cache_timeout`), not a year, and such a program comes back with a LOOKUP or a GETATTR in
  time;
- the server. With `--workers 0`, `pyfuse3.main` over `fs.Operations`. Otherwise the
  supervisor of the worker processes: it answers FUSE_INIT itself (`wire.answer_init`), forks
  `config.workers` workers, each watched by a task awaiting its pidfd, and only then tells the
  mount command that the tree is ready. A worker that
  exits 0 has seen the mount go away (ENODEV): stop. One that fails is started again -- unless
  more than `MAX_FAILURES` failed within `FAILURE_WINDOW` seconds: a crash loop, and the mount
  goes away rather than fail every request.

Stopping sends SIGTERM to every worker and waits for them -- sending it again every
`STOP_AGAIN` seconds to one still there; the caller then unmounts. A worker's SIGTERM handler is
Python's, run between two bytecodes: a SIGTERM that comes in the few instructions before the
worker blocks in its read of the device is taken, and its handler runs only once the read
returns -- which, with the mount being stopped, may be never. Another SIGTERM interrupts that
read.

Signals and forks. SIGTERM, SIGINT and SIGHUP are blocked from before the mount (mount.py)
until the receiver is in place, and again around each fork: a signal that arrives meanwhile
waits, and is then handled with the new worker already among those to stop. The child resets
the handlers (and drops trio's wakeup descriptor) before it unblocks them, so it never runs the
parent's handler.

A worker dies with its supervisor (PR_SET_PDEATHSIG: a SIGKILLed daemon leaves a stale mount, as
a single process would, and no headless workers). It serves from what the supervisor holds: a
descriptor cloned from the session, the index through its open descriptor and the images
through theirs (`Index.reopen`) -- so a worker started again after an image was renamed over
serves the same bytes as the one before it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

import lmdb
import pyfuse3
import trio

from imagenetfs import ahead, archive, fs, holders, metrics, ops, registry, staging, wire
from imagenetfs.config import ServeConfig
from imagenetfs.errors import ImagenetfsError
from imagenetfs.index import Index
from imagenetfs.ops import Core, Counters
from imagenetfs.squashfs import SquashImage
from imagenetfs.views.resize import ResizeCache
from imagenetfs.views.tree import Tree

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
PUBLISH_INTERVAL = 2.0
MAX_FAILURES = 3
FAILURE_WINDOW = 10.0
STOP_AGAIN = 1.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def cache_timeout(idle_timeout: float) -> int:
    """Seconds the kernel may keep entries and attributes: a year (`ops.TIMEOUT`); with an
    idle timeout, a third of it (at least 1 s), so that a reader served from the kernel's
    caches sends a request within the idle timeout (see the module docstring)."""
    return max(1, int(idle_timeout / 3)) if idle_timeout else ops.TIMEOUT


def block_signals() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def unblock_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class Daemon:
    """One mount's serving: `main` is the trio program (see the module docstring)."""

    def __init__(
        self,
        config: ServeConfig,
        index: Index,
        fuse_ops: fs.Operations | None,
        state: registry.State,
        state_path: Path,
    ) -> None:
        self.config = config
        self.index = index
        self.fuse_ops = fuse_ops  # what pyfuse3 was given, with --workers 0
        self.state = state
        self.state_path = state_path
        #: Tells the mount command that the tree is served (a daemonized mount's pipe).
        self.ready: Callable[[], None] = lambda: None
        self.stopping = False
        self.cache = config.cache  # None from the moment the resize cache proves unusable
        self._workers: dict[int, int] = {}  # pid -> counters slot
        self._waits: dict[int, trio.CancelScope] = {}  # pid -> its `_watch`'s wait
        self._failures: list[float] = []
        self._statistics: Callable[[], dict[str, Any]] | None = None
        self._metrics_problem: str | None = None  # why --metrics FILE was not written, if so
        #: The shard views' layout file's directory (layoutfile.py): made in `main`.
        self.layout_dir: Path | None = None
        self.stager = None
        if config.stage_dir is not None:
            self.stager = staging.Stager(
                config.stage_dir,
                index,
                config.stage_rate,
                config.stage_keep_free,
                config.mountpoint,
            )
            self.state["staging"] = self.stager.report()  # (its copies: in the first record)

    async def main(self) -> None:
        if self.config.shards is not None:
            self.layout_dir = layout_dir(self.state_path)
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            unblock_signals()
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._on_signals, signals)
                    nursery.start_soon(self._publish)
                    if self.stager is not None:
                        nursery.start_soon(self._stage, self.stager)
                    if self.config.idle_timeout:
                        nursery.start_soon(self._idle, self.config.idle_timeout)
                    try:
                        if self.fuse_ops is not None:
                            await self._serve_pyfuse3(self.fuse_ops)
                        else:
                            await self._serve_workers()
                    finally:
                        if self.stager is not None:
                            self.stager.stop()  # before the cancel waits for its thread
                    nursery.cancel_scope.cancel()
            finally:
                try:
                    self.publish(final=True)
                except Exception:  # (never in the way of unmounting)
                    log.exception("the last publish failed")
                if self.layout_dir is not None:
                    shutil.rmtree(self.layout_dir, ignore_errors=True)
                block_signals()  # until the caller has unmounted

    async def _idle(self, timeout: float) -> None:
        """Stop once no request came for `timeout` seconds and no process uses the mount
        (see the module docstring)."""
        # (the mount point is canonical, as /proc/self/mountinfo lists it: cli, mountinfo.py)
        device = await trio.to_thread.run_sync(holders.device_of, self.config.mountpoint)
        if device is None:
            log.warning(
                "%s is not in /proc/self/mountinfo: --idle-timeout cannot tell who uses the "
                "mount, so it will not unmount by itself", self.config.mountpoint,
            )  # fmt: skip
            return
        step = min(max(timeout / 4, 0.25), 30.0)
        last: Any = None
        quiet_since = time.monotonic()
        while True:
            await trio.sleep(step)
            now = self._statistics().get("fs") if self._statistics is not None else None
            if now != last:
                last, quiet_since = now, time.monotonic()
            elif time.monotonic() - quiet_since >= timeout:
                # in a thread (thousands of processes), which a stop does not wait for
                user = await trio.to_thread.run_sync(self._holder, device, abandon_on_cancel=True)
                if user is None:
                    log.info("no request for %.0f s: unmounting", timeout)
                    self.stop()
                    return
                log.info("idle for %.0f s, but process %d uses the mount: staying", timeout, user)
                quiet_since = time.monotonic()

    def _holder(self, device: str) -> int | None:
        """A process that uses the mount (holders.py), or None; the look's cost goes to the
        log. Without --allow-other only this user's processes can reach the mount."""
        started = time.monotonic()
        scan = holders.Scan(
            device,
            uid=None if self.config.allow_other else os.getuid(),
            skip=frozenset((os.getpid(), *self._workers)),
        )
        user = scan.holder()
        log.info(
            "looked for users of the mount (device %s) in %d processes: %.3f s",
            device, scan.processes, time.monotonic() - started,
        )  # fmt: skip
        return user

    async def _stage(self, stager: staging.Stager) -> None:
        def switched(number: int, path: Path) -> None:  # in the stager's thread
            trio.from_thread.run_sync(self._switch, number, path)

        await trio.to_thread.run_sync(stager.run, switched)
        self.publish()

    def _switch(self, number: int, path: Path) -> None:
        """Serve image `number` from its checked copy at `path`, here and in every worker."""
        image = self.index.images[number]
        try:
            image.switch(str(path))  # type: ignore[union-attr]  # (staged: a SquashImage)
        except ImagenetfsError as e:
            log.warning("staged copy not used: %s", e)
            return
        for pid in self._workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)
        log.info("serving %s from %s", self.index.image_records[number]["name"], path)
        self.publish()

    def stop_asked(self) -> bool:
        """Whether `stop` was called (asked again after an await: a signal's task may have)."""
        return self.stopping

    def stop(self) -> None:
        self.stopping = True
        if self.fuse_ops is not None:
            pyfuse3.terminate()
        for pid in self._workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if pid in self._waits:  # (its `_watch` sends it again: see the module docstring)
                self._waits[pid].deadline = trio.current_time() + STOP_AGAIN

    async def _on_signals(self, signals: Any) -> None:
        async for signum in signals:
            log.info("%s: unmounting", signal.Signals(signum).name)
            self.stop()

    async def _publish(self) -> None:
        while True:
            await trio.sleep(PUBLISH_INTERVAL)
            self.publish()

    def publish(self, final: bool = False) -> None:
        """The state file, and the metrics file if any; `final`: serving has ended."""
        if self._statistics is None:
            return
        state = {
            **self.state,
            "updated": time.time(),
            "images": [image.path for image in self.index.images],
            "workers_running": len(self._workers),
            "stats": self._statistics(),
        }
        if self.stager is not None:
            state["staging"] = self.stager.report()
        with contextlib.suppress(OSError):
            registry.write_state(self.state_path, state)
        if self.config.metrics is not None:
            self._write_metrics(self.config.metrics, state, final)

    def _write_metrics(self, path: Path, state: registry.State, final: bool) -> None:
        """Write `--metrics FILE`; a failure is said once in the log (again only once it has
        changed), and serving goes on."""
        try:
            metrics.write(path, metrics.prometheus(state, serving=not final))
        except OSError as e:
            problem = e.strerror or str(e)
            if problem != self._metrics_problem:
                log.warning("metrics %s not written (%s)", path, problem)
            self._metrics_problem = problem
            return
        if self._metrics_problem is not None:
            log.info("metrics %s written again", path)
            self._metrics_problem = None

    def _core(self, counters: Counters, *, blocking_reads: bool) -> Core:
        """The operation core of this process (a worker's, or pyfuse3's)."""
        cache = None
        if self.cache is not None:
            cache = open_cache(*self.cache)
            if cache is None:
                self.cache = None
        self.index.reopen()  # an LMDB environment of this process's own
        # one budget of inflated zip members per mount, shared by its serving processes
        archive.share_caches(self.index.images, self.config.workers)
        tree = Tree(
            self.index,
            self.config.resize,
            quality=self.config.resize_quality,
            shards=self.config.shards,
            layout_dir=self.layout_dir,
        )
        return Core(
            tree, uid=os.getuid(), gid=os.getgid(), cache=cache, counters=counters,
            blocking_reads=blocking_reads, timeout=cache_timeout(self.config.idle_timeout),
        )  # fmt: skip

    # --- pyfuse3 alone ---------------------------------------------------------------------

    async def _serve_pyfuse3(self, ops: fs.Operations) -> None:
        ops.core = self._core(Counters(), blocking_reads=False)
        ops.on_init = self.ready
        self._statistics = ops.core.statistics
        await pyfuse3.main(min_tasks=1, max_tasks=64)

    # --- worker processes ------------------------------------------------------------------

    async def _serve_workers(self) -> None:
        session = wire.session_fd()
        # A plain read: the kernel queued FUSE_INIT when it mounted, so this does not wait --
        # and the session never joins trio's epoll set, where every request would touch it
        # (measured: 4% slower LOOKUPs).
        wire.answer_init(session)
        await trio.lowlevel.checkpoint()  # a signal that came meanwhile is handled first
        if self.stopping:
            return
        if self.cache is not None:  # an unusable cache: said once here, not in each worker
            probe = open_cache(*self.cache)
            if probe is None:
                self.cache = None
            else:
                probe.close()
        board = wire.Board(
            self.config.workers, self.index.stats.entries + 2 if wire.push_wanted() else 0
        )
        # a worker switches to staged copies on SIGUSR1; until its handler is in place (and
        # here, in the supervisor) the signal is ignored, not fatal
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)

        blocks = any(isinstance(image, SquashImage) for image in self.index.images)

        def statistics() -> dict[str, Any]:
            stats = Counters.report(board.totals(), self.cache is not None, blocks=blocks)
            stats["index"] = asdict(self.index.stats)
            return stats

        self._statistics = statistics
        # the resize lock file: record locks on its bytes, never any data (see wire.py)
        with tempfile.TemporaryFile() as lock_file:
            async with trio.open_nursery() as nursery:
                for slot in range(self.config.workers):
                    self._start(nursery, slot, session, board, lock_file.fileno())
                log.info("serving with %d worker processes", self.config.workers)
                self.publish()  # first: `status` right after the mount command shows it all
                # A stop signal that came while starting is acted on first, not after `mount`
                # has said "ready": its handler only queues it, and the receiving task runs
                # once every other task waits.
                from trio.testing import wait_all_tasks_blocked  # (imports pytest, if there)

                await wait_all_tasks_blocked()
                if self.stop_asked():
                    return
                self.ready()  # (requests that came meanwhile wait in the kernel's queue)

    def _start(
        self, nursery: trio.Nursery, slot: int, session: int, board: wire.Board, lock_fd: int
    ) -> None:
        parent = os.getpid()
        with signals_blocked():
            pid = os.fork()
            if pid == 0:
                self._worker(slot, session, board, lock_fd, parent)
            self._workers[pid] = slot
        nursery.start_soon(self._watch, nursery, pid, slot, session, board, lock_fd)

    async def _watch(
        self,
        nursery: trio.Nursery,
        pid: int,
        slot: int,
        session: int,
        board: wire.Board,
        lock_fd: int,
    ) -> None:
        pidfd = os.pidfd_open(pid)
        try:
            while True:
                with trio.CancelScope() as self._waits[pid]:  # (`stop` gives it a deadline)
                    if self.stopping:
                        self._waits[pid].deadline = trio.current_time() + STOP_AGAIN
                    await trio.lowlevel.wait_readable(pidfd)
                    break
                log.info("worker %d has not ended: SIGTERM again", pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        finally:
            self._waits.pop(pid, None)
            os.close(pidfd)
        status = os.waitpid(pid, 0)[1]
        del self._workers[pid]
        if self.stopping:
            return
        code = os.waitstatus_to_exitcode(status)
        if code == 0:  # the mount went away (ENODEV)
            self.stop()
            return
        now = time.monotonic()
        self._failures = [t for t in self._failures if t > now - FAILURE_WINDOW] + [now]
        if len(self._failures) > MAX_FAILURES:
            log.error("workers keep failing: unmounting")
            self.stop()
            return
        how = f"signal {-code}" if code < 0 else f"status {code}"
        log.warning("worker %d ended (%s): starting another", pid, how)
        self._start(nursery, slot, session, board, lock_fd)

    def _worker(
        self, slot: int, session: int, board: wire.Board, lock_fd: int, parent: int
    ) -> NoReturn:
        """A forked worker's whole life; it never returns to trio."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGTERM, _stopped)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides on Ctrl-C
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            _die_with_parent(parent)
            unblock_signals()
            fd = wire.clone_session(session)
            core = self._core(Counters(board.slot(slot)), blocking_reads=True)
            if self.stager is not None:
                stager = self.stager
                signal.signal(signal.SIGUSR1, lambda *_: staging.adopt(self.index, stager))
                staging.adopt(self.index, stager)  # what was switched while it started
            cold = None
            if wire.cold_thread_wanted():
                cold = [Counters(board.slot(slot, t)) for t in range(1, 1 + wire.UNSEEN_THREADS)]
            wire.Worker(
                core, fd, lock_fd=lock_fd, splice=wire.splice_wanted(), cold=cold,
                ahead=ahead.wanted(), sent=board.sent,
                push=Counters(board.slot(slot, wire.PUSH_THREAD)), others=board.workers - 1,
            ).run()  # fmt: skip
            code = 0
        except SystemExit as e:  # SIGTERM (`_stopped`), once Worker.run has published its last
            code = 0 if e.code is None else int(e.code)
        except BaseException:
            log.exception("worker %d failed", os.getpid())
        finally:
            os._exit(code)


def _stopped(_signum: int, _frame: object) -> NoReturn:
    """A worker's SIGTERM: leave by the way out of `Worker.run`, whose `finally` copies the
    block caches' last counts to the board -- a worker stopped while the mount goes must not
    take its last second of counts with it (they are copied once a second while serving)."""
    raise SystemExit(0)


def _die_with_parent(parent: int) -> None:
    """SIGKILL this worker when the supervisor dies (even by SIGKILL)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:  # it died before the prctl
        os._exit(1)


def layout_dir(state_path: Path) -> Path | None:
    """The mount's directory for the shard views' layout file (layoutfile.py) beside its
    state file, made empty (a killed daemon's may be left) and private; None, said in the
    log, when it cannot be made: each serving process then makes its own layout."""
    directory = registry.layout_dir(state_path)
    shutil.rmtree(directory, ignore_errors=True)
    try:
        directory.mkdir(mode=0o700)
    except OSError as e:
        log.warning(
            "no directory for the shard layout (%s: %s): each serving process makes its own",
            directory, e.strerror or e,
        )  # fmt: skip
        return None
    return directory


def open_cache(directory: Path, size: int) -> ResizeCache | None:
    """The resize cache, or None (said once in the log) when it cannot be used."""
    try:
        return ResizeCache(directory, size)
    except (OSError, lmdb.Error) as e:
        log.warning("resize cache %s unusable (%s): resizing without a cache", directory, e)
        return None
