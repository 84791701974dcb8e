"""A mount's life on real mounts: signals while mounting, a daemon that cannot start, workers
started again, the registry.

- SIGTERM at a random moment of a mount's first 500 ms, 30 times, foreground and background
  (to the `imagenetfs mount` process, or to the daemon once it exists): every time, within
  10 s, nothing is mounted and no process of that mount is left;
- a daemon that fails after the mount (its state file cannot be written) leaves nothing
  mounted, and the refusal is one line;
- a worker started again after an image was renamed over serves the old image's bytes, from
  the descriptors the supervisor holds;
- a state file without a pid is not a live mount.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import (
    CLI,
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


@pytest.mark.timeout(600)
def test_sigterm_while_mounting_leaves_nothing(
    mounter: Mounter, data: Path, tmp_path: Path
) -> None:
    rng = random.Random(20261129)
    index = tmp_path / "index.lmdb"
    assert mounter.cli("index", "--source", data, "--index", index, "-q").returncode == 0
    seen: Counter[str] = Counter()
    for attempt in range(30):
        foreground = attempt % 2 == 0
        mp = tmp_path / f"mp{attempt}"
        mp.mkdir()
        mounter.points.append(mp)
        args = [CLI, "mount", *(["-f"] if foreground else []), "--source", str(data)]
        log = open(tmp_path / f"mount{attempt}.err", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [*args, "--index", str(index), str(mp)],
            env=mounter.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        mounter.pids.add(proc.pid)
        try:
            time.sleep(rng.uniform(0, 0.5))
            state = mounter.state(mp)
            daemon = int(state["pid"]) if state else None
            targets = [p for p in (proc.pid, daemon) if p is not None and alive(p)]
            target = rng.choice(targets) if targets else proc.pid
            seen["mounted" if is_mounted(mp) else "not mounted yet"] += 1
            seen["to the daemon" if target == daemon and daemon != proc.pid else "to mount"] += 1
            os.kill(target, signal.SIGTERM)
            assert wait_until(lambda mp=mp: settled(mp), 10), (
                attempt, foreground, is_mounted(mp), processes_of(mp),
                (tmp_path / f"mount{attempt}.err").read_text(errors="replace"),
            )  # fmt: skip
            assert proc.wait(timeout=5) is not None
        finally:
            proc.kill()
            proc.wait()
            log.close()
    print(f"\nSIGTERM while mounting, 30 times: {dict(seen)}")


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
