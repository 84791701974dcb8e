"""Fixtures shared by every test module."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import (
    CLI,
    RUN_MARK,
    EnvMounter,
    Leftovers,
    Mounter,
    force_unmount,
    mount_points,
    reference_tree,
    search_bits_needed,
    suite_dirs,
    wait_until,
)

import imagenetfs
from imagenetfs import generate

PY = sys.executable
USER, OTHER = "imagenetfs-test", "imagenetfs-other"
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the last test: no imagenetfs process the suite started still runs (a command, a
    daemon, a worker), no FUSE mount remains in the suite's directories, no record of one of
    its mounts is in a default registry (a test must mount with a state directory of its own:
    `Mounter`) -- else the run fails here, naming each; they are then undone all the same."""
    os.environ[RUN_MARK] = f"{os.getpid()}-{time.time_ns()}"
    mark, dirs = f"{RUN_MARK}={os.environ[RUN_MARK]}", suite_dirs(tmp_path_factory.getbasetemp())
    before = Leftovers.now(dirs, mark)
    yield
    # (a daemon whose mount went away ends within moments: ENODEV on its next read)
    wait_until(lambda: not Leftovers.now(dirs, mark).since(before), 15, interval=0.2)
    left = Leftovers.now(dirs, mark).since(before)
    left.clear()
    assert not left, f"the suite left behind:\n{left}"


@pytest.fixture
def mounter(tmp_path: Path) -> Iterator[Mounter]:
    """Mounts as root, with a state directory of its own; undone after the test."""
    harness = Mounter(tmp_path)
    try:
        yield harness
    finally:
        harness.cleanup()


@pytest.fixture
def env_mounter(tmp_path: Path) -> Iterator[EnvMounter]:
    """A `mounter` whose commands see its `extra` in their environment."""
    harness = EnvMounter(tmp_path)
    try:
        yield harness
    finally:
        harness.cleanup()


@pytest.fixture(scope="module")
def base(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A world-searchable directory: other users need search permission on every parent of
    their sources and mount points (pytest's tmp dirs are 0700). In /tmp, or where the test
    module's `BASE_PARENT` says (a directory every node of test_slurm's cluster shares)."""
    parent = getattr(request.module, "BASE_PARENT", "/tmp")
    path = Path(tempfile.mkdtemp(prefix="imagenetfs-test-", dir=parent))
    path.chmod(0o755)
    yield path
    for mp in mount_points():
        if mp.startswith(f"{path}/"):
            force_unmount(Path(mp))
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class Users:
    user: Mounter
    other: Mounter
    uid: int


@pytest.fixture(scope="module")
def users(base: Path) -> Iterator[Users]:
    """Two unprivileged users, /dev/fuse 0666 and a CLI they can run; all undone afterwards."""
    fusermount = Path(shutil.which("fusermount3") or "fusermount3")
    if not fusermount.stat().st_mode & stat.S_ISUID:
        pytest.fail(f"{fusermount} is not setuid root: unprivileged mounts cannot work")
    undo: list[Callable[[], None]] = []
    try:
        for name in (USER, OTHER):
            try:
                pwd.getpwnam(name)
            except KeyError:
                subprocess.run(["useradd", "--no-create-home", name], check=True, timeout=30)
                undo.append(lambda name=name: subprocess.run(["userdel", name], timeout=30))
        fuse_mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
        undo.append(lambda: os.chmod("/dev/fuse", fuse_mode))
        os.chmod("/dev/fuse", 0o666)
        code = Path(imagenetfs.__file__).resolve().parent
        for d in search_bits_needed([Path(PY).resolve().parent, Path(os.__file__), code]):
            mode = stat.S_IMODE(d.stat().st_mode)
            undo.append(lambda d=d, mode=mode: d.chmod(mode))
            d.chmod(mode | stat.S_IXOTH)
        runners = []
        for name in (USER, OTHER):
            work = base / name
            work.mkdir(mode=0o755)
            shutil.chown(work, name, grp.getgrgid(pwd.getpwnam(name).pw_gid).gr_name)
            runners.append(Mounter(work, name))
        version = runners[0].cli("--version")
        assert version.returncode == 0, f"the CLI does not run as {USER}: {version.stderr}"
        yield Users(runners[0], runners[1], pwd.getpwnam(USER).pw_uid)
        for runner in runners:
            runner.cleanup()
    finally:
        for step in reversed(undo):
            with contextlib.suppress(Exception):
                step()


@pytest.fixture
def user(users: Users) -> Iterator[Mounter]:
    yield users.user
    users.user.cleanup()


@pytest.fixture(scope="module")
def admin(base: Path) -> Path:
    """The admin's data: the sample's images, listings and labels, and the index beside them,
    all read-only to users."""
    data = base / "data"
    generate.sample(data, progress=False)
    result = subprocess.run(
        [CLI, "index", "--source", data, "--index", data / "imagenetfs.lmdb"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for path in [data, *data.iterdir()]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    return data


@pytest.fixture(scope="module")
def expected(admin: Path, base: Path) -> dict[str, bytes]:
    """The admin's images as `unsquashfs` extracts them: served path -> bytes."""
    return reference_tree(admin, base / "reference").files
