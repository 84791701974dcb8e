"""`imagenetfs doctor`: each check passes on a machine where a mount works, and each failing
check is made to fail for real -- no /dev/fuse (an empty /dev in a mount namespace of its
own), /dev/fuse closed to a user, fusermount3 missing or not setuid, /etc/fuse.conf without
user_allow_other (a file bound over it in a private namespace), a missing source, an index of
other images, an index place the user cannot write, a state directory of another user, small
filesystems for the resize cache and the job's scratch, and a mount that is not mounted, whose
daemon died, or whose daemon stopped answering. Each failure says what is wrong and its fix;
the exit code is 1 exactly when a mount would not work.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import Users
from helpers import CLI, Mounter, children, private_mount_namespace

from imagenetfs import generate
from imagenetfs.generate import Spec


def lines_of(result: subprocess.CompletedProcess[str]) -> dict[str, list[str]]:
    """The doctor's report: check name -> its lines ('STATUS  name: detail -- fix: ...')."""
    assert "Traceback" not in result.stderr, result.stderr
    report: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        status, rest = line.split(maxsplit=1)
        assert status in ("OK", "WARN", "FAIL"), line
        name = rest.split(": ", 1)[0]
        report.setdefault(name, []).append(line)
    return report


def status(report: dict[str, list[str]], name: str) -> str:
    assert name in report, (name, report)
    return report[name][-1].split()[0]


def doctor_as(
    runner: Mounter, *args: object, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`imagenetfs doctor ARGS` as the runner's user, with extra environment."""
    base = runner.env() | (env or {})
    command = [CLI, "doctor", *map(str, args)]
    if runner.user is not None:
        command = ["runuser", "-u", runner.user, "--", "env", "-i",
                   *(f"{k}={v}" for k, v in base.items()), *command]  # fmt: skip
    outer = base if runner.user is None else None  # (runuser itself: found on this PATH)
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, env=outer, stdin=subprocess.DEVNULL
    )


def test_a_machine_where_mounts_work_passes_every_check(mounter: Mounter, admin: Path) -> None:
    """With a source, its index and a live mount: every check ok, exit 0; the probe mount
    reports the kernel's FUSE protocol; --json says the same."""
    mp = mounter.mkdir("mnt")
    mounted = mounter.mount(mp, admin)
    result = doctor_as(mounter, "--source", admin, mp)
    assert result.returncode == 0, result.stdout + result.stderr
    report = lines_of(result)
    for name in ("/dev/fuse", "fusermount3", "versions", "source", "index", "mount state"):
        assert status(report, name) == "OK", report[name]
    assert "matches the images" in report["index"][0]
    assert status(report, f"mount {mp}") == "OK"
    assert f"serving, daemon pid {mounted.pid}" in report[f"mount {mp}"][0]
    assert status(report, "probe mount") == "OK"
    assert "kernel FUSE protocol 7." in report["probe mount"][0]
    document = json.loads(doctor_as(mounter, "--json", "--source", admin, mp).stdout)
    assert document["ok"] is True
    assert {c["status"] for c in document["checks"]} <= {"ok", "warn"}
    assert any(c["name"] == "probe mount" for c in document["checks"])


def test_no_dev_fuse_fails_with_its_fix(mounter: Mounter, admin: Path) -> None:
    """An empty /dev (a mount namespace of its own): /dev/fuse and the probe mount fail."""
    script = 'mount -t tmpfs none /dev && exec "$@"'
    base = mounter.env()
    result = subprocess.run(
        [*private_mount_namespace(), "sh", "-c", script, "sh", CLI, "doctor", "--source", admin],
        capture_output=True, text=True, timeout=120, env=base,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    report = lines_of(result)
    assert status(report, "/dev/fuse") == "FAIL"
    assert "missing" in report["/dev/fuse"][0]
    assert "fix: an admin: modprobe fuse" in report["/dev/fuse"][0]
    assert status(report, "probe mount") == "FAIL"
    assert status(report, "index") == "OK"  # (the rest is still checked)


def test_dev_fuse_closed_to_the_user(users: Users, admin: Path) -> None:
    """/dev/fuse 0600 (root's only): the user is told, with the chmod an admin runs."""
    mode = os.stat("/dev/fuse").st_mode & 0o7777
    os.chmod("/dev/fuse", 0o600)
    try:
        result = doctor_as(users.user, "--source", admin)
    finally:
        os.chmod("/dev/fuse", mode)
    assert result.returncode == 1, result.stdout + result.stderr
    report = lines_of(result)
    assert status(report, "/dev/fuse") == "FAIL"
    assert "not readable and writable for you (mode 0600)" in report["/dev/fuse"][0]
    assert "chmod 0666 /dev/fuse" in report["/dev/fuse"][0]
    assert status(report, "probe mount") == "FAIL"


def test_fusermount3_missing_or_not_setuid(users: Users, admin: Path) -> None:
    """A user's PATH without fusermount3, then with a copy that is not setuid root."""
    user = users.user
    path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    bin_dir = user.work / "bin-nofusermount"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("env", "sh"):  # (what the probe and the CLI need, without fusermount3)
        (bin_dir / tool).unlink(missing_ok=True)
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/bin/{tool}")
    result = doctor_as(user, "--source", admin, env={"PATH": str(bin_dir)})
    assert result.returncode == 1, result.stdout + result.stderr
    report = lines_of(result)
    assert status(report, "fusermount3") == "FAIL"
    assert "not found on PATH -- fix: an admin: apt-get install fuse3" in report["fusermount3"][0]
    # (the probe may still mount: libfuse falls back to fusermount3 in its own install path,
    # but `imagenetfs mount` and `umount` look for it on PATH, and refuse)

    plain = bin_dir / "fusermount3"
    shutil.copy(shutil.which("fusermount3") or "/usr/bin/fusermount3", plain)
    plain.chmod(0o755)  # (the copy kept the setuid bit)
    try:
        result = doctor_as(user, "--source", admin, env={"PATH": f"{bin_dir}:{path}"})
    finally:
        plain.unlink()
    report = lines_of(result)
    assert result.returncode == 1, result.stdout
    assert status(report, "fusermount3") == "FAIL"
    assert f"{plain} is not setuid root" in report["fusermount3"][0]
    assert f"chmod u+s {plain}" in report["fusermount3"][0]


def test_allow_other_needs_user_allow_other(users: Users, admin: Path, tmp_path: Path) -> None:
    """--allow-other for a user: FAIL without `user_allow_other` in /etc/fuse.conf, OK with it
    (each a file bound over /etc/fuse.conf in a private mount namespace)."""
    user = users.user
    outcomes = {}
    for text in ("# user_allow_other\nmount_max = 1000\n", "user_allow_other\n"):
        conf = tmp_path / f"fuse-{len(text)}.conf"
        conf.write_text(text)
        conf.chmod(0o644)
        env = [f"{k}={v}" for k, v in user.env().items()]
        script = 'mount --bind "$1" /etc/fuse.conf && shift && exec "$@"'
        result = subprocess.run(
            [*private_mount_namespace(), "sh", "-c", script, "sh", str(conf),
             "runuser", "-u", str(user.user), "--", "env", "-i", *env,
             CLI, "doctor", "--allow-other", "--source", str(admin)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        report = lines_of(result)
        outcomes[text] = (result.returncode, status(report, "--allow-other"), report)
    code, state, report = outcomes["# user_allow_other\nmount_max = 1000\n"]
    assert (code, state) == (1, "FAIL"), report
    assert "echo user_allow_other >> /etc/fuse.conf" in report["--allow-other"][0]
    code, state, report = outcomes["user_allow_other\n"]
    assert state == "OK", report
    assert code == 0, report


def test_a_missing_source_and_an_index_of_other_images(mounter: Mounter, tmp_path: Path) -> None:
    """A --source that is not there fails the source check; an --index built for other images
    fails the index check with the command that rebuilds it."""
    result = doctor_as(mounter, "--source", tmp_path / "nowhere")
    assert result.returncode == 1
    report = lines_of(result)
    assert status(report, "source") == "FAIL"
    assert str(tmp_path / "nowhere") in report["source"][0]

    spec = Spec(classes=2, train_per_class=2, val_per_class=1, test=1, tiny=True)
    one, other = tmp_path / "one", tmp_path / "other"
    generate.generate(one, spec)
    generate.generate(other, Spec(classes=3, train_per_class=2, val_per_class=1, tiny=True))
    ix = tmp_path / "one.lmdb"
    assert mounter.cli("index", "--source", one, "--index", ix).returncode == 0
    result = doctor_as(mounter, "--source", other, "--index", ix)
    assert result.returncode == 1, result.stdout
    report = lines_of(result)
    assert status(report, "source") == "OK"
    assert status(report, "index") == "FAIL"
    assert "rebuild the index with: imagenetfs index" in report["index"][0]


def test_an_index_place_the_user_cannot_write(users: Users, admin: Path, base: Path) -> None:
    """No index yet, and its directory is not the user's: a mount would fail after the
    images were read; the doctor says so first."""
    closed = base / "closed"
    closed.mkdir(mode=0o755, exist_ok=True)
    result = doctor_as(users.user, "--source", admin, "--index", closed / "i.lmdb")
    assert result.returncode == 1, result.stdout
    report = lines_of(result)
    assert status(report, "index") == "FAIL"
    assert f"{closed} is not writable for you" in report["index"][0]
    assert "give --index a path you can write" in report["index"][0]


def test_a_state_directory_of_another_user(mounter: Mounter, admin: Path, tmp_path: Path) -> None:
    """IMAGENETFS_STATE_DIR owned by someone else: refused, as mount would refuse it."""
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    shutil.chown(foreign, "nobody")
    result = doctor_as(mounter, "--source", admin, env={"IMAGENETFS_STATE_DIR": str(foreign)})
    assert result.returncode == 1
    report = lines_of(result)
    assert status(report, "mount state") == "FAIL"
    assert "it belongs to uid" in report["mount state"][0]


def test_small_disks_for_the_cache_and_the_jobs_scratch(
    mounter: Mounter, admin: Path, tmp_path: Path
) -> None:
    """A 1 MB filesystem holding the resize cache and the job's scratch: both warned about
    (the cache may grow to 10 GB; staging needs the images' size), and a mount still works."""
    small = tmp_path / "small"
    small.mkdir()
    env = mounter.env() | {"XDG_CACHE_HOME": str(small), "SLURM_JOB_ID": "7",
                           "SLURM_TMPDIR": str(small)}  # fmt: skip
    script = 'mount -t tmpfs -o size=1m none "$1" && shift && exec "$@"'
    result = subprocess.run(
        [*private_mount_namespace(), "sh", "-c", script, "sh", str(small),
         CLI, "doctor", "--source", str(admin)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = lines_of(result)
    assert status(report, "resize cache") == "WARN"
    assert "less than the 10.7 GB it may use" in report["resize cache"][0]
    assert status(report, "staging") == "WARN"
    assert "--stage would not fit" in report["staging"][0]


def test_a_mount_not_mounted_stale_or_hung(mounter: Mounter, admin: Path) -> None:
    """A mount point with nothing mounted; a mount whose daemon was killed (stale); a mount
    whose daemon and workers are stopped (the stat is bounded, the doctor does not hang)."""
    mp = mounter.mkdir("mnt")
    result = doctor_as(mounter, "--source", admin, mp)
    assert result.returncode == 1
    assert status(lines_of(result), f"mount {mp}") == "FAIL"
    assert "not mounted -- fix: imagenetfs mount" in lines_of(result)[f"mount {mp}"][0]

    mounted = mounter.mount(mp, admin)
    stopped = [mounted.pid, *children(mounted.pid)]
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        result = doctor_as(mounter, "--source", admin, mp)
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    assert result.returncode == 1, result.stdout
    line = lines_of(result)[f"mount {mp}"][0]
    assert "does not answer" in line and f"imagenetfs umount --force {mp}" in line, line

    os.kill(mounted.pid, signal.SIGKILL)
    for pid in stopped[1:]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    result = doctor_as(mounter, "--source", admin, mp)
    assert result.returncode == 1
    line = lines_of(result)[f"mount {mp}"][0]
    assert f"stale: its daemon (pid {mounted.pid}) died" in line
    assert f"fix: imagenetfs umount {mp}" in line


@pytest.mark.parametrize("args", [["--json"], []])
def test_the_sample_is_named_when_no_imagenet_is_found(mounter: Mounter, args: list[str]) -> None:
    """No source given and none at the default place: a warning naming the built-in sample,
    not a failure (the quick start's mount serves it)."""
    result = doctor_as(mounter, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    if args:
        checks = json.loads(result.stdout)["checks"]
        source = [c for c in checks if c["name"] == "source"]
        assert source[0]["status"] == "warn" and "built-in sample" in source[0]["detail"]
    else:
        assert status(lines_of(result), "source") == "WARN"
