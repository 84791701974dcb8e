"""A mount's life on real mounts: signals while mounting, a daemon that cannot start, workers
started again, the registry.

- SIGTERM, SIGINT and SIGHUP at each moment of mounting, foreground and background (to the
  `imagenetfs mount` process, or to the daemon once it exists), the process stopped there
  and the moment checked before the signal: every time, within 10 s, nothing is mounted and
  no process of that mount is left;
- SIGTERM, SIGINT or SIGHUP to a daemon whose workers are about to block in their first read
  of the device (a SIGTERM that comes then is handled only once the read returns): the
  daemon sends SIGTERM again, and within 10 s nothing is left;
- a daemon that fails after the mount (its state file cannot be written) leaves nothing
  mounted, and the refusal is one line;
- a worker started again after an image was renamed over serves the old image's bytes, from
  the descriptors the supervisor holds;
- a state file without a pid is not a live mount.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import (
    Mounter,
    alive,
    children,
    fuse_unusable,
    is_mounted,
    one_error_line,
    wait_until,
)

from imagenetfs import generate, registry
from imagenetfs.generate import Spec

SPEC = Spec(classes=3, train_per_class=8, val_per_class=2, test=2, jobs=2, progress=False)

pytestmark = pytest.mark.skipif(
    fuse_unusable(("fusermount3", "mksquashfs"), "mounts as root") is not None,
    reason=str(fuse_unusable(("fusermount3", "mksquashfs"), "mounts as root")),
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    generate.generate(root, SPEC)
    return root


def processes_of(mp: Path) -> list[int]:
    """Processes whose command line names `mp`: the CLI, its daemon, the daemon's workers
    (forks keep the command line), fusermount3."""
    wanted = os.fsencode(mp)
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if wanted in argv and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def settled(mp: Path) -> bool:
    return not is_mounted(mp) and not processes_of(mp)


#: `imagenetfs mount` run with a pause: the process that reaches the named point of mounting
#: stops itself (SIGSTOP) there, once, for the test to look at it and signal it.
PAUSED_MOUNT = """
import os, signal, sys
from imagenetfs import cli, mount, supervisor, wire

pause, done = sys.argv[1], []
# SIGINT as a terminal's command has it: a shell's background job (`pytest ... &`) starts with
# it ignored, and an ignored SIGINT would not stop the mount
signal.signal(signal.SIGINT, signal.default_int_handler)


def stop() -> None:
    if not done:
        done.append(pause)
        os.kill(os.getpid(), signal.SIGSTOP)


def before(name, owner, wanted):
    real = getattr(owner, name)
    def hooked(*args, **kwargs):
        if pause == wanted:
            stop()
        return real(*args, **kwargs)
    setattr(owner, name, hooked)


def after(name, owner, wanted):
    real = getattr(owner, name)
    def hooked(*args, **kwargs):
        result = real(*args, **kwargs)
        if pause == wanted:
            stop()
        return result
    setattr(owner, name, hooked)


before("block_signals", supervisor, "checked")  # the mount point and index checked
after("block_signals", supervisor, "held")  # signals held, nothing mounted yet
after("_init", mount, "mounted")  # mounted, not forked, not serving
before("main", supervisor.Daemon, "daemon")  # the daemon's trio program, signals still held
after("answer_init", wire, "init")  # FUSE_INIT answered, the receiver in place, no worker
before("publish", supervisor.Daemon, "workers")  # workers started, not yet said ready
sys.argv = ["imagenetfs", *sys.argv[2:]]
sys.exit(cli.main())
"""

HELD = {signal.SIGHUP, signal.SIGINT, signal.SIGTERM}


def status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split()[1]
    raise AssertionError(f"no {name} for {pid}")


def state_of(pid: int) -> str:
    return status_field(pid, "State")


def stopped_in(pid: int) -> list[int]:
    """`pid` and its children that are stopped (state T)."""
    found = []
    for p in [pid, *children(pid)]:
        with contextlib.suppress(OSError):
            if state_of(p) == "T":
                found.append(p)
    return found


def holds_stop_signals(pid: int) -> bool:
    """Whether SIGTERM, SIGINT and SIGHUP are all blocked in `pid` (or none is)."""
    blocked = {s for s in HELD if int(status_field(pid, "SigBlk"), 16) >> (s - 1) & 1}
    assert blocked in (set(), HELD), (pid, blocked)
    return blocked == HELD


#: (pause, signal target, daemonized?) -- every moment of mounting at which a signal can come
MOMENTS = [
    *[(pause, "mount", fg) for fg in (False, True) for pause in ("checked", "held", "mounted")],
    *[(p, t, False) for p in ("daemon", "init", "workers") for t in ("mount", "daemon")],
    *[(pause, "mount", True) for pause in ("daemon", "init", "workers")],
]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("signum", sorted(HELD), ids=lambda s: signal.Signals(s).name)
def test_a_signal_while_mounting_leaves_nothing(
    mounter: Mounter, data: Path, tmp_path: Path, signum: signal.Signals
) -> None:
    """`imagenetfs mount`, foreground and daemonized, stopped at each moment of mounting --
    before the signals are held; held, nothing mounted; mounted, not forked; the daemon's
    program started, signals still held; FUSE_INIT answered; workers started, not said ready
    -- each moment checked from outside (the mount table, the processes, their blocked
    signals), then `signum` to the mount command or to its daemon: within 10 s nothing is
    mounted and no process of that mount is left; a daemonized mount that a signal stopped
    after it held them says so in one line."""
    index = tmp_path / "index.lmdb"
    assert mounter.cli("index", "--source", data, "--index", index, "-q").returncode == 0
    for n, (pause, target, foreground) in enumerate(MOMENTS):
        moment = (pause, target, "foreground" if foreground else "daemonized")
        mp = tmp_path / f"mp{n}"
        mp.mkdir()
        mounter.points.append(mp)
        argv = ["mount", *(["-f"] if foreground else []), "--source", str(data),
                "--index", str(index), "--workers", "2", str(mp)]  # fmt: skip
        proc = subprocess.Popen(
            [sys.executable, "-c", PAUSED_MOUNT, pause, *argv],
            env=mounter.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        mounter.pids.add(proc.pid)
        try:
            assert wait_until(
                lambda proc=proc: bool(stopped_in(proc.pid)) or proc.poll() is not None, 60
            ), moment
            [where] = stopped_in(proc.pid) or [proc.poll()]
            daemon = proc.pid if foreground else where
            # the moment, from outside
            if pause in ("checked", "held", "mounted"):
                assert where == proc.pid and children(where) == [], moment
                assert holds_stop_signals(where) == (pause != "checked"), moment
                assert is_mounted(mp) == (pause == "mounted"), moment
            else:
                assert (where == proc.pid) == foreground, moment
                assert is_mounted(mp), moment
                assert holds_stop_signals(where) == (pause == "daemon"), moment
                workers = children(where)
                assert len(workers) == (2 if pause == "workers" else 0), (moment, workers)
                if not foreground:
                    assert proc.poll() is None, "the mount command waits for the daemon"
            os.kill(proc.pid if target == "mount" else daemon, signum)
            os.kill(where, signal.SIGCONT)
            assert wait_until(lambda mp=mp: settled(mp), 10), (
                moment, is_mounted(mp), processes_of(mp),
            )  # fmt: skip
            code = proc.wait(timeout=10)
            assert proc.stderr is not None
            said = proc.stderr.read().decode(errors="replace")
        finally:
            proc.kill()
            proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()
        assert mounter.state(mp) is None, moment
        if pause == "checked":  # nothing held yet: the signal's own way (KeyboardInterrupt)
            assert code == (130 if signum == signal.SIGINT else -signum), (moment, code, said)
        elif foreground:  # the daemon itself: it unmounts and exits 0
            assert code == 0, (moment, code, said)
        elif target == "mount":
            errors = [ln for ln in said.splitlines() if ln.startswith("imagenetfs: error: ")]
            name = signal.Signals(signum).name
            assert code == 1 and errors == [
                f"imagenetfs: error: {name} while mounting {mp}: nothing is mounted"
            ], (moment, said)
        else:  # the daemon, stopped before it said ready: it never says so
            errors = [ln for ln in said.splitlines() if ln.startswith("imagenetfs: error: ")]
            assert code == 1 and len(errors) == 1, (moment, code, said)
            assert f"the daemon did not start serving {mp}" in errors[0], (moment, said)
        assert "Traceback" not in said, said


#: A library to preload: a process's first readv of /dev/fuse sleeps `SLOW_READ_SECONDS` before
#: it reads, going on through signals -- each handled, at C level, by Python's handler, which
#: only marks it for the interpreter: a signal then is one that came just before the read.
SLOW_FIRST_READ = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <time.h>

static int done;

ssize_t readv(int fd, const struct iovec *iov, int count)
{
    ssize_t (*real)(int, const struct iovec *, int) = dlsym(RTLD_NEXT, "readv");
    struct stat st;
    if (!done && fstat(fd, &st) == 0 && S_ISCHR(st.st_mode) && major(st.st_rdev) == 10
        && minor(st.st_rdev) == 229) {
        struct timespec left = {SLOW_READ_SECONDS, 0};
        done = 1;
        while (nanosleep(&left, &left) != 0 && errno == EINTR)
            ;
    }
    return real(fd, iov, count);
}
"""


@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc (to build a preloaded library)")
@pytest.mark.parametrize("signum", sorted(HELD), ids=lambda s: signal.Signals(s).name)
def test_a_signal_as_the_workers_start_to_read_leaves_nothing(
    mounter: Mounter,
    data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    signum: signal.Signals,
) -> None:
    """`signum` to the daemon while each worker is about to block in its first read of the
    device (held there 2 s, by a preloaded readv): the SIGTERM each worker gets is handled
    only once its read returns, and nothing will come to read on a mount being stopped. The
    daemon sends SIGTERM again: within 10 s nothing is mounted and no process is left."""
    library = tmp_path / "slow_first_read.so"
    (tmp_path / "slow_first_read.c").write_text(SLOW_FIRST_READ)
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-DSLOW_READ_SECONDS=2", "-o", library,
         tmp_path / "slow_first_read.c", "-ldl"],
        check=True,
    )  # fmt: skip
    monkeypatch.setenv("LD_PRELOAD", str(library))
    mounted = mounter.mount(mounter.mkdir("mp"), data, "--workers", "2", index=tmp_path / "i")
    workers = children(mounted.pid)
    assert len(workers) == 2

    def about_to_read(pid: int) -> bool:
        return Path(f"/proc/{pid}/wchan").read_text() == "hrtimer_nanosleep"

    assert wait_until(lambda: all(about_to_read(w) for w in workers), 10), workers
    os.kill(mounted.pid, signum)
    assert wait_until(lambda: settled(mounted.mp), 10), (
        is_mounted(mounted.mp), processes_of(mounted.mp), mounted.log,
    )  # fmt: skip
    assert "SIGTERM again" in mounted.log and "Traceback" not in mounted.log, mounted.log


@pytest.mark.timeout(120)
@pytest.mark.parametrize("foreground", [False, True], ids=["daemonized", "foreground"])
def test_a_daemon_that_cannot_start_leaves_nothing_mounted(
    mounter: Mounter, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, foreground: bool
) -> None:
    """The daemon fails after the mount is made -- its state file is a directory, so it
    cannot write it -- and the mount goes away with it: one error line, nothing mounted, no
    process left."""
    mp = tmp_path / "mp"
    mp.mkdir()
    for name, value in mounter.env().items():
        if name.startswith(("XDG_", "IMAGENETFS_")):
            monkeypatch.setenv(name, value)
    registry.state_file(mp).mkdir(parents=True)  # where the daemon writes its state
    index = tmp_path / "index.lmdb"
    result = mounter.cli(
        "mount", *(["-f"] if foreground else []), "--source", data, "--index", index, mp
    )
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert not is_mounted(mp) and processes_of(mp) == []
    if not foreground:  # the foreground daemon's own failure is in its log, on stderr
        one_error_line(result, "did not start serving", notes=True)  # (after "indexing ...")
    assert os.listdir(mp) == []


@pytest.mark.timeout(120)
def test_a_restarted_worker_serves_the_images_it_was_started_with(
    mounter: Mounter, data: Path, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    shutil.copytree(data, source)
    other = tmp_path / "other"
    generate.generate(other, Spec(**{**SPEC.__dict__, "seed": 5}))
    mounted = mounter.mount(tmp_path / "mp", source, "--workers", "2", index=tmp_path / "i")
    files = sorted(p for p in (mounted.mp / "train").rglob("*.JPEG"))
    old = {p: p.read_bytes() for p in files}
    shutil.copyfile(other / "train.squashfs", source / "train.squashfs.new")
    os.replace(source / "train.squashfs.new", source / "train.squashfs")
    first = children(mounted.pid)
    for _ in range(2):  # every worker killed, one after the other, and started again
        workers = children(mounted.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        assert wait_until(
            lambda w=workers: len(children(mounted.pid)) == 2 and w[0] not in children(mounted.pid),
            20,
        )  # fmt: skip
    assert not set(first) & set(children(mounted.pid)), "none of the first workers is left"
    for path, content in old.items():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the daemon must read again
        finally:
            os.close(fd)
        assert path.read_bytes() == content, path
    assert alive(mounted.pid) and is_mounted(mounted.mp)
    assert "Traceback" not in mounted.log, mounted.log[-2000:]


@pytest.mark.timeout(60)
def test_a_state_file_without_a_pid_is_not_alive(mounter: Mounter) -> None:
    """Not even for a mount point that is mounted (here /proc): `status` does not say it
    serves, and `umount` does not touch what is mounted there."""
    assert not registry.pid_alive(0) and not registry.pid_alive(-1)
    assert not registry.is_alive({"mountpoint": "/proc"})
    assert not registry.is_alive({"mountpoint": "/proc", "pid": "1"}), "a pid is a number"
    assert registry.is_alive({"mountpoint": "/proc", "pid": os.getpid()})
    mounter.state_dir.mkdir(mode=0o700, parents=True)
    record = {"mountpoint": "/proc", "node": registry.node()}
    (mounter.state_dir / "0000000000000000.json").write_text(json.dumps(record))
    result = mounter.cli("status")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "/proc: gone", result.stdout
    refused = mounter.cli("umount", "/proc")
    assert refused.returncode == 1 and "not an imagenetfs mount of yours (proc)" in refused.stderr
