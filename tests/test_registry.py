"""The mount registry on one node (registry.py, mountinfo.py): where a mount's state lives and
whose it is, how a dead record is forgotten, and that `umount` and `status` decide from the
mount table and the registry -- so neither waits on a daemon that has stopped answering.

The multi-node behaviour (each node its own mounts, under a real two-node Slurm) is in
test_slurm.py; these tests are what one node must get right for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Users
from helpers import CLI, Mounter, alive, children, is_mounted, one_error_line, wait_until

from imagenetfs import mountinfo, registry


def record_files(state_dir: Path) -> list[str]:
    return sorted(p.suffix for p in state_dir.iterdir()) if state_dir.is_dir() else []


# --- where and whose --------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_state_lives_on_the_node_not_in_the_shared_home(users: Users, admin: Path) -> None:
    """An unprivileged user with no settings: the mount's record is in /tmp/imagenetfs-UID/mounts
    (theirs, 0700, as is its parent), records this node, and nothing of it is under the home
    directory that the nodes of a cluster share."""
    user = Mounter(users.user.work, users.user.user, own_state=False)
    state_dir = user.state_dir
    shutil.rmtree(state_dir.parent, ignore_errors=True)
    try:
        mounted = user.mount(user.mkdir(f"mp-{time.monotonic_ns()}"), admin)
        for level in (state_dir.parent, state_dir):
            st = level.lstat()
            assert (st.st_uid, st.st_mode & 0o777) == (users.uid, 0o700)
        state = json.loads(mounted.state_path.read_text())
        assert mounted.state_path.parent == state_dir
        assert state["node"] == registry.node()
        assert state["node"]["host"] == socket.gethostname() and state["node"]["boot_id"]
        home_files = [str(p) for p in user.work.rglob("*") if "imagenetfs" in p.name]
        assert not [p for p in home_files if "mounts" in p], home_files
        status = user.cli("status")
        assert f"{mounted.mp}: serving" in status.stdout, status
        assert user.cli("umount", mounted.mp).returncode == 0
        assert not is_mounted(mounted.mp)
        assert record_files(state_dir) == [".log"]  # (kept a day: why the daemon ended)
    finally:
        user.cleanup()
        shutil.rmtree(state_dir.parent, ignore_errors=True)


@pytest.mark.timeout(120)
def test_a_state_dir_that_is_not_ours_is_refused(users: Users, admin: Path) -> None:
    """/tmp/imagenetfs-UID made first by someone else, or a symlink there: one line naming
    it and what to do; nothing mounted, nothing written through it."""
    user = Mounter(users.user.work, users.user.user, own_state=False)
    private = user.state_dir.parent
    shutil.rmtree(private, ignore_errors=True)
    elsewhere = users.other.mkdir(f"theirs-{time.monotonic_ns()}")
    try:
        private.mkdir()  # root's, world-writable: as another user could leave it in /tmp
        private.chmod(0o777)
        mp = user.mkdir(f"mp-{time.monotonic_ns()}")
        for command in (["mount", "--source", admin, mp], ["status"], ["umount", mp]):
            line = one_error_line(user.cli(*command), "IMAGENETFS_STATE_DIR")
            assert line.startswith(
                f"imagenetfs: error: cannot keep mount state in {user.state_dir}: {private}: "
                "it belongs to uid 0, not to you"
            ), (command, line)
        assert not is_mounted(mp) and os.listdir(private) == []
        private.rmdir()
        private.symlink_to(elsewhere)
        one_error_line(user.cli("mount", "--source", admin, mp), "not a directory (a symlink")
        assert not is_mounted(mp) and os.listdir(elsewhere) == []
    finally:
        user.cleanup()
        if private.is_symlink():
            private.unlink()
        shutil.rmtree(private, ignore_errors=True)


@pytest.mark.timeout(120)
def test_another_nodes_record_is_never_taken_for_ours(mounter: Mounter, admin: Path) -> None:
    """A state directory that two nodes share (as a home directory would be): the other node's
    mount at the same path is neither joined, nor shown, nor unmounted, nor swept."""
    mp = mounter.mkdir("mp")
    theirs = {
        "mountpoint": str(mp),
        "source": str(admin),
        "index": str(admin / "imagenetfs.lmdb"),
        "pid": os.getpid(),  # alive here, as pids on two nodes may both be
        "pid_start": registry.process_start(os.getpid()),
        "node": {"host": "node-b", "boot_id": "0" * 36},
        "started": time.time(),
    }
    mounter.state_dir.mkdir(mode=0o700)
    path = mounter.state_dir / f"{registry.state_file(mp).stem}.json"
    path.write_text(json.dumps(theirs))
    assert mounter.cli("status").stdout.strip() == "no imagenetfs mounts"
    assert mounter.cli("umount", mp).returncode == 1, "not mounted on this node"
    mounted = mounter.mount(mp, admin)  # mounts: does not join the other node's
    assert mounted.pid != os.getpid()
    status = mounter.cli("status").stdout
    assert status.count(f"{mp}:") == 1 and f"pid {mounted.pid}" in status, status
    assert mounter.cli("umount", mp).stdout.strip() == f"unmounted {mp}"
    assert not path.exists(), "ours replaced theirs (one record per point and directory)"


@pytest.mark.timeout(180)
def test_the_place_does_not_move_when_xdg_runtime_dir_goes(users: Users, admin: Path) -> None:
    """Two tasks mount with $XDG_RUNTIME_DIR set; logind then removes it (the user's last
    session ended) and a third task comes without it: it joins, `status` sees the mount, and
    the users are counted down to the last."""
    user = Mounter(users.user.work, users.user.user, own_state=False)
    shutil.rmtree(user.state_dir.parent, ignore_errors=True)
    runtime = user.mkdir(f"run-{time.monotonic_ns()}")
    mp = user.mkdir(f"mp-{time.monotonic_ns()}")

    def cli(*args: object, xdg: bool) -> subprocess.CompletedProcess[str]:
        return run_cli(user, *args, env={"XDG_RUNTIME_DIR": str(runtime)} if xdg else {})

    try:
        first = cli("mount", "--source", admin, mp, xdg=True)
        assert first.returncode == 0, first.stderr
        user.points.append(mp)
        assert "2 users" in cli("mount", "--source", admin, mp, xdg=True).stdout
        shutil.rmtree(runtime)
        third = cli("mount", "--source", admin, mp, xdg=False)
        assert third.returncode == 0 and "3 users" in third.stdout, third
        assert f"{mp}: serving" in cli("status", xdg=False).stdout
        for left in (2, 1):
            said = cli("umount", mp, xdg=False)
            assert f"still used by {left} more" in said.stdout, said
            assert is_mounted(mp)
        assert cli("umount", mp, xdg=False).stdout.strip() == f"unmounted {mp}"
        assert not is_mounted(mp)
    finally:
        user.cleanup()
        shutil.rmtree(user.state_dir.parent, ignore_errors=True)


def run_cli(user: Mounter, *args: object, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`imagenetfs ARGS` as `user`, with its environment and `env` on top."""
    variables = [f"{k}={v}" for k, v in {**user.env(), **env}.items()]
    runner = ["runuser", "-u", user.user, "--"] if user.user is not None else []
    return subprocess.run(
        [*runner, "env", "-i", *variables, CLI, *map(str, args)],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


# --- dead records, full disks -----------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_dead_record_is_said_once_and_removed(mounter: Mounter, admin: Path) -> None:
    """The daemon SIGKILLed and its mount cleared outside imagenetfs (a reboot, a job's
    namespace torn down): `status` says so once and forgets it; `umount` of such a point
    removes the record and succeeds; lone logs go after a day."""
    mp = mounter.mkdir("mp")
    for how in ("status", "umount"):
        mounted = mounter.mount(mp, admin)
        os.kill(mounted.pid, signal.SIGKILL)
        assert wait_until(lambda m=mounted: not alive(m.pid), 10)
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], check=True, timeout=30)
        assert record_files(mounter.state_dir) == [".json", ".lock", ".log", ".users"]
        if how == "status":
            said = mounter.cli("status")
            assert said.returncode == 0, said.stderr
            assert f"{mp}: gone -- its daemon (pid {mounted.pid}) ended without" in said.stdout
            assert mounter.cli("status").stdout.strip() == "no imagenetfs mounts"
            assert mounter.cli("umount", mp).returncode == 1  # (nothing left to do)
        else:
            said = mounter.cli("umount", mp)
            assert said.returncode == 0, said.stderr
            assert "was not mounted any more: removed the record" in said.stdout
        assert record_files(mounter.state_dir) == [".log"]
    log = next(mounter.state_dir.glob("*.log"))
    old = time.time() - registry.LOG_KEEP - 60
    os.utime(log, (old, old))
    mounter.cli("status")
    assert record_files(mounter.state_dir) == []


@pytest.mark.timeout(120)
def test_a_full_state_directory_is_named_before_anything_is_written(
    mounter: Mounter, admin: Path, tmp_path: Path
) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        state = small / "state"
        state.mkdir(mode=0o700)
        with open(small / "filler", "wb") as f:
            f.write(b"\0" * (900 << 10))
        mp = mounter.mkdir("mp")
        result = run_cli(mounter, "mount", "--source", admin, mp,
                         env={"IMAGENETFS_STATE_DIR": str(state)})  # fmt: skip
        assert one_error_line(result) == (
            f"imagenetfs: error: cannot keep mount state in {state}: its filesystem is full "
            "(point IMAGENETFS_STATE_DIR elsewhere)"
        )
        assert os.listdir(state) == [] and not is_mounted(mp)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=True)


# --- a daemon that does not answer ------------------------------------------------------------


def _stop(pid: int) -> list[int]:
    """SIGSTOP a daemon and its workers (as workers stuck on a hung read would be)."""
    pids = [pid, *children(pid)]
    for p in pids:
        os.kill(p, signal.SIGSTOP)
    return pids


@pytest.mark.timeout(120)
def test_umount_and_status_never_wait_on_a_stopped_daemon(mounter: Mounter, admin: Path) -> None:
    mp = mounter.mkdir("mp")
    mounted = mounter.mount(mp, admin)
    pids = _stop(mounted.pid)
    reader = subprocess.Popen(["ls", "-R", str(mp)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        waits = Path(f"/proc/{reader.pid}/wchan")
        assert wait_until(lambda: waits.read_text() == "request_wait_answer", 10), (
            "the reader waits on the stopped daemon"
        )
        for args, code, said in (
            (["status"], 0, f"{mp}: serving"),
            (["status", mp], 0, f"{mp}: serving"),
            (["umount", mp], 1, "is busy (a process uses it); close it or use --lazy"),
            (["umount", "--lazy", mp], 0, f"detached {mp}"),
        ):
            started = time.monotonic()
            result = mounter.cli(*args, timeout=20)
            took = time.monotonic() - started
            assert result.returncode == code and said in result.stdout + result.stderr, result
            assert took < 5, (args, took)
        assert not is_mounted(mp)
        assert all(registry.process_state(p) == "T" for p in pids), "nobody continued them"
        # the detached daemon still runs (stopped): status says so, --force ends it
        status = mounter.cli("status", timeout=20).stdout
        assert f"not mounted here; its daemon (pid {mounted.pid}) still runs" in status
        result = mounter.cli("umount", "--force", mp, timeout=30)
        assert result.returncode == 0 and "ended its daemon" in result.stdout, result
        assert wait_until(lambda: not any(alive(p) for p in pids), 10)
    finally:
        kill(pids)
        reader.kill()
        reader.wait()


def kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(120)
def test_umount_force_ends_a_stopped_daemon(mounter: Mounter, admin: Path) -> None:
    mp = mounter.mkdir("mp")
    mounted = mounter.mount(mp, admin)
    pids = _stop(mounted.pid)
    try:
        started = time.monotonic()
        result = mounter.cli("umount", "--force", mp, timeout=30)
        assert result.returncode == 0 and result.stdout.strip() == f"unmounted {mp}", result
        assert time.monotonic() - started < 12
        assert not is_mounted(mp)
        assert wait_until(lambda: not any(alive(p) for p in pids), 10)
        assert record_files(mounter.state_dir) == [".log"]
    finally:
        kill(pids)


@pytest.mark.timeout(120)
def test_a_plain_umount_says_when_the_daemon_is_stopped(mounter: Mounter, admin: Path) -> None:
    """Nobody uses the mount: it is unmounted at once, and the stopped daemon, which cannot
    exit, is named in one line rather than waited for."""
    mp = mounter.mkdir("mp")
    mounted = mounter.mount(mp, admin)
    pids = _stop(mounted.pid)
    try:
        started = time.monotonic()
        result = mounter.cli("umount", mp, timeout=30)
        assert time.monotonic() - started < 5
        assert result.returncode == 1, result
        assert f"its daemon (pid {mounted.pid}) is stopped" in result.stderr, result.stderr
        assert "--force" in result.stderr
        assert not is_mounted(mp)
        ended = mounter.cli("umount", "--force", mp, timeout=30)
        assert ended.returncode == 0 and "ended its daemon" in ended.stdout, ended
        assert wait_until(lambda: not any(alive(p) for p in pids), 10)
    finally:
        kill(pids)


# --- mounts this node has no record of --------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_mount_without_a_record_is_shown_and_unmounted(users: Users, admin: Path) -> None:
    """A mount made by an earlier version (its record elsewhere) or whose record was removed:
    `status` names it and says how to unmount; `mount` there refuses in one line; `umount`
    unmounts it and its daemon exits. (Only the node's own registry lists such mounts: one of
    $IMAGENETFS_STATE_DIR's shows its own.)"""
    user = Mounter(users.user.work, users.user.user, own_state=False)
    shutil.rmtree(user.state_dir.parent, ignore_errors=True)
    try:
        mp = user.mkdir(f"mp-{time.monotonic_ns()}")
        mounted = user.mount(mp, admin)
        mounted.state_path.unlink()
        status = user.cli("status").stdout
        assert f"{mp}: mounted, but this node has no record of it" in status, status
        assert f"imagenetfs umount {mp} unmounts it" in status
        elsewhere = Mounter(user.work, user.user)  # a registry of its own
        assert elsewhere.cli("status").stdout.strip() == "no imagenetfs mounts"
        again = user.cli("mount", "--source", admin, mp)
        assert again.returncode == 1 and "no record of" in again.stderr, again
        said = user.cli("umount", mp)
        assert said.returncode == 0 and "this node had no record of it" in said.stdout, said
        assert not is_mounted(mp)
        assert wait_until(lambda: not alive(mounted.pid), 10)
    finally:
        user.cleanup()
        shutil.rmtree(user.state_dir.parent, ignore_errors=True)


def test_mountinfo_reads_escaped_points_and_fuse_owners() -> None:
    table = (
        b"36 25 0:32 / /tmp/a\\040b ro,nosuid - fuse.imagenetfs imagenetfs ro,user_id=1000,"
        b"group_id=1000\n"
        b"37 25 0:33 / /tmp/c\\134d rw shared:5 - tmpfs tmpfs rw,size=10k\n"
        b"garbage\n"
    )
    first, second = mountinfo.parse(table)
    assert (first.point, first.device, first.fstype, first.uid) == (
        "/tmp/a b", "0:32", "fuse.imagenetfs", 1000,
    )  # fmt: skip
    assert first.is_imagenetfs_of(1000) and not first.is_imagenetfs_of(0)
    assert (second.point, second.fstype, second.uid) == ("/tmp/c\\d", "tmpfs", None)


def test_canonical_follows_links_to_a_mount_point_without_stating_it(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to("real")
    (tmp_path / "chain").symlink_to(tmp_path / "link")
    assert mountinfo.canonical(tmp_path / "chain") == real
    assert mountinfo.canonical(Path(os.path.relpath(tmp_path / "link"))) == real
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(OSError, match="Too many levels"):
        mountinfo.canonical(tmp_path / "loop")


def test_pid_start_tells_a_reused_pid_apart() -> None:
    me = {"pid": os.getpid(), "pid_start": registry.process_start(os.getpid())}
    assert registry.is_alive(me)
    assert not registry.is_alive({**me, "pid_start": me["pid_start"] - 1})
    assert not registry.is_alive({"pid": "1"}) and not registry.is_alive({})
    assert pwd.getpwuid(os.getuid())  # (the suite runs as a real user)


@pytest.mark.timeout(120)
def test_in_a_job_the_resize_cache_defaults_to_the_nodes_scratch(
    mounter: Mounter, admin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not the home directory that every node shares (and that has a small quota): the job's
    scratch, $SLURM_TMPDIR, else $TMPDIR inside a job; outside a job, the user's cache."""
    scratch, tmpdir = tmp_path / "slurm-tmpdir", tmp_path / "tmpdir"
    scratch.mkdir()
    tmpdir.mkdir()
    for name in ("SLURM_TMPDIR", "SLURM_JOB_ID", "TMPDIR"):
        monkeypatch.delenv(name, raising=False)
    cases = [
        ({"SLURM_JOB_ID": "7", "SLURM_TMPDIR": str(scratch), "TMPDIR": str(tmpdir)}, scratch),
        ({"SLURM_JOB_ID": "7", "TMPDIR": str(tmpdir)}, tmpdir),
        ({"TMPDIR": str(tmpdir)}, mounter.work / "cache" / "imagenetfs"),  # not a job
    ]
    for n, (env, where) in enumerate(cases):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        mp = mounter.mkdir(f"mp{n}")
        mounter.mount(mp, admin, "--resize", "64")
        state = mounter.state(mp)
        assert state is not None
        expected = where / ("resized" if where.name == "imagenetfs" else "imagenetfs-cache")
        assert state["cache_dir"] == str(expected), (env, state["cache_dir"])
        assert mounter.cli("umount", mp).returncode == 0
        for name in env:
            monkeypatch.delenv(name)
