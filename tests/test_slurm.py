"""Per-job mounts under a real Slurm (issue 14): the job recipe users copy, cancellation, hard
kills and the admin's epilog, two users' jobs at once, the tasks of one job sharing a mount;
and the two things that make sharing and forgetting safe without Slurm: `mount` joining a
mount that serves, `--idle-timeout`.

The `slurm` fixture runs a one-node Slurm 22.05 on this machine (../shared/notes/
slurm-facts.md): it installs the Debian packages if missing, writes a config whose Epilog is
`scripts/slurm/epilog`, starts munged, slurmctld and slurmd, and stops them afterwards
(restoring any config it replaced). Jobs are submitted by the unprivileged test users with
`sbatch --wait`, and checked by their output files, exit codes, /proc/mounts and /proc --
no squeue or sacct. The job script is `scripts/slurm/imagenet.sbatch`, unchanged; the training
command is `tests/job_reader.py`, which reads every file as ImageFolder would and checks its
bytes against a manifest of `unsquashfs` output.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Users
from helpers import Mounter, alive, force_unmount, is_mounted, wait_until

REPO = Path(__file__).resolve().parent.parent
JOB = REPO / "scripts" / "slurm" / "imagenet.sbatch"
EPILOG = REPO / "scripts" / "slurm" / "epilog"
READER = Path(__file__).resolve().parent / "job_reader.py"
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
CONF = Path("/etc/slurm/slurm.conf")
CPUS = 4  # (more than this machine has: config_overrides; jobs here mostly wait on I/O)

SLURM_CONF = f"""\
ClusterName=imagenetfs-test
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=5
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
Epilog={EPILOG}
NodeName=localhost CPUs={CPUS} RealMemory=1024 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def run(*cmd: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=timeout)


def _pid(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stop_daemons() -> None:
    for pidfile in ("/run/slurm/slurmd.pid", "/run/slurm/slurmctld.pid", "/run/munge/munged.pid"):
        pid = _pid(pidfile)
        if pid is not None and alive(pid):
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda pid=pid: not alive(pid), 15)


@pytest.fixture(scope="session")
def slurm() -> Iterator[None]:
    """A one-node Slurm, up for the session."""
    if any(shutil.which(tool) is None for tool in ("slurmctld", "slurmd", "sbatch", "munged")):
        result = run(
            "apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES, timeout=600
        )
        if result.returncode != 0:  # e.g. no apt index yet on a fresh machine
            run("apt-get", "update", "-qq", timeout=600)
            result = run("apt-get", "install", "-y", "-qq", "--no-install-recommends",
                         *PACKAGES, timeout=600)  # fmt: skip
        assert result.returncode == 0, f"cannot install Slurm: {result.stderr}"
    _stop_daemons()
    hosts = Path("/etc/hosts")
    saved_hosts = hosts.read_bytes() if hosts.exists() else None
    # Slurm resolves "localhost" and this machine's name; a bare root (debootstrap) has no
    # /etc/hosts to say them
    missing = []
    for name in ("localhost", socket.gethostname()):
        try:
            socket.getaddrinfo(name, None, socket.AF_INET)
        except OSError:
            missing.append(name)
    if missing:
        hosts.write_bytes((saved_hosts or b"") + f"127.0.0.1 {' '.join(missing)}\n".encode())
    saved = CONF.read_bytes() if CONF.exists() else None
    CONF.parent.mkdir(parents=True, exist_ok=True)
    CONF.write_text(SLURM_CONF)
    for d in ("/var/spool/slurmctld", "/var/spool/slurmd", "/var/log/slurm", "/run/slurm"):
        os.makedirs(d, exist_ok=True)
        shutil.chown(d, "slurm", "slurm")
    os.makedirs("/run/munge", exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        assert run("mungekey", "--create", f"--keyfile={key}").returncode == 0
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
    try:
        for cmd in (["runuser", "-u", "munge", "--", "/usr/sbin/munged"],
                    ["slurmctld", "-c"], ["slurmd"]):  # fmt: skip
            result = run(*cmd)
            assert result.returncode == 0, f"{cmd[0]}: {result.stderr}"
        assert wait_until(
            lambda: run("sinfo", "-h", "-o", "%T").stdout.strip() == "idle", 30, 0.3
        ), (run("sinfo").stdout, Path("/var/log/slurm/slurmctld.log").read_text()[-2000:])
        yield
    finally:
        _stop_daemons()
        if saved is None:
            CONF.unlink(missing_ok=True)
        else:
            CONF.write_bytes(saved)
        if saved_hosts is None:
            hosts.unlink(missing_ok=True)
        elif hosts.read_bytes() != saved_hosts:
            hosts.write_bytes(saved_hosts)


@pytest.fixture(scope="module")
def manifest(base: Path, expected: dict[str, bytes]) -> Path:
    path = base / "manifest.json"
    path.write_text(json.dumps({k: hashlib.sha256(v).hexdigest() for k, v in expected.items()}))
    path.chmod(0o644)
    return path


@dataclass
class Job:
    """A job submitted with `sbatch --wait`, running."""

    proc: subprocess.Popen[str]
    id: int
    output: Path
    started: float

    def wait(self, timeout: float = 120) -> int:
        code = self.proc.wait(timeout)
        self.seconds = time.monotonic() - self.started
        return code

    @property
    def log(self) -> str:
        return self.output.read_text() if self.output.exists() else ""


def submit(user: Mounter, admin: Path, *command: object, sbatch: tuple[str, ...] = ()) -> Job:
    """`sbatch --wait scripts/slurm/imagenet.sbatch COMMAND` as `user`, with the README's
    settings (the admin's images, the installed command)."""
    env = {**user.env(), "IMAGENETFS": str(Path(sys.executable).with_name("imagenetfs")),
           "IMAGENETFS_SOURCE": str(admin)}  # fmt: skip
    output = user.work / f"job-{time.monotonic_ns()}.out"
    argv = ["sbatch", "--wait", "--parsable", f"--output={output}", f"--chdir={user.work}",
            *sbatch, str(JOB), *map(str, command)]  # fmt: skip
    env_args = [f"{k}={v}" for k, v in env.items()]
    # (stdbuf: sbatch prints the job id at once, then waits for the job)
    cmd = ["runuser", "-u", str(user.user), "--", "env", "-i", *env_args, "stdbuf", "-oL", *argv]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline().strip()
    assert first.split(";")[0].isdigit(), (first, proc.stderr.read() if proc.stderr else "")
    return Job(proc, int(first.split(";")[0]), output, started)


def imagenetfs_mounts(uid: int) -> list[str]:
    """Mount points of imagenetfs mounts of `uid`, live or stale."""
    points = []
    with open("/proc/mounts") as f:
        for line in f:
            _, point, kind, options, *_ = line.split()
            if kind == "fuse.imagenetfs" and f"user_id={uid}" in options.split(","):
                points.append(point.encode().decode("unicode_escape"))
    return points


def processes_of(uid: int) -> list[str]:
    """The command lines of `uid`'s processes."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ")
                    if alive(int(entry.name)):
                        out.append(cmdline.decode(errors="replace"))
            except OSError:
                pass
    return out


def assert_nothing_left(uid: int, *jobs: Job) -> None:
    """No mount, no process of `uid`, and the mount points of its `jobs` removed."""
    assert wait_until(lambda: not imagenetfs_mounts(uid), 15), imagenetfs_mounts(uid)
    assert wait_until(lambda: not processes_of(uid), 15), processes_of(uid)
    for job in jobs:
        assert not Path(f"/tmp/{user_name(uid)}-imagenet-{job.id}").exists()


def user_name(uid: int) -> str:
    import pwd

    return pwd.getpwuid(uid).pw_name


# --- under Slurm ---------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_the_job_script_mounts_reads_and_unmounts(
    slurm: None, users: Users, user: Mounter, admin: Path, manifest: Path
) -> None:
    job = submit(user, admin, sys.executable, READER, manifest)
    assert job.wait() == 0, job.log
    assert f"ok: {len(json.loads(manifest.read_text()))} files" in job.log, job.log
    assert "ready in" in job.log, job.log
    assert_nothing_left(users.uid, job)


@pytest.mark.timeout(300)
def test_scancel_unmounts_and_leaves_no_process(
    slurm: None, users: Users, user: Mounter, admin: Path
) -> None:
    job = submit(user, admin, "sleep", "300")
    assert wait_until(lambda: "ready in" in job.log, 60), job.log  # (not while mounting)
    result = subprocess.run(user.command(["scancel", str(job.id)]), env=user.env(),
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert result.returncode == 0, result.stderr
    job.wait()  # (returns once the job is cancelled: its trap may still be unmounting)
    assert_nothing_left(users.uid, job)
    assert wait_until(lambda: "unmounted" in job.log, 10), job.log  # by the job's own trap


@pytest.mark.timeout(300)
def test_a_job_killed_hard_leaves_a_stale_mount_that_the_epilog_clears(
    slurm: None, users: Users, user: Mounter, admin: Path
) -> None:
    other = users.other
    theirs = other.mkdir(f"stale-{time.monotonic_ns()}")  # another user's stale mount
    mounted = other.mount(theirs, admin)
    os.kill(mounted.pid, signal.SIGKILL)
    assert wait_until(lambda: not alive(mounted.pid), 10)
    try:
        # the daemon, then the job's shell killed outright: no trap runs
        kill = (
            'pid=$("$IMAGENETFS" status "$IMAGENET" | sed -n "s/.* pid \\([0-9]*\\).*/\\1/p");'
            " kill -KILL $pid; sleep 1; kill -KILL $PPID"
        )
        job = submit(user, admin, "bash", "-c", kill)
        assert job.wait() != 0
        assert wait_until(lambda: not imagenetfs_mounts(users.uid), 30), (
            imagenetfs_mounts(users.uid), job.log,
        )  # fmt: skip
        assert str(theirs) in imagenetfs_mounts(pwd_uid(other)), "the epilog touched another's"
        assert_nothing_left(users.uid)  # (its mount point stays: the epilog only unmounts)
    finally:
        force_unmount(theirs)


def rate(job: Job) -> float:
    """The job reader's MB/s (the last number of its "ok:" line)."""
    line = next(ln for ln in job.log.splitlines() if ln.startswith("ok:"))
    return float(line.rsplit(",", 1)[1].split()[0])


def pwd_uid(runner: Mounter) -> int:
    import pwd

    return pwd.getpwnam(str(runner.user)).pw_uid


@pytest.mark.timeout(300)
def test_two_users_jobs_get_private_mounts(
    slurm: None, users: Users, user: Mounter, admin: Path, manifest: Path
) -> None:
    alone = submit(user, admin, sys.executable, READER, manifest, "--hold", "4")
    assert alone.wait() == 0, alone.log
    jobs = [
        submit(runner, admin, sys.executable, READER, manifest, "--hold", "4")
        for runner in (user, users.other)
    ]
    theirs = pwd_uid(users.other)
    assert wait_until(lambda: bool(imagenetfs_mounts(theirs)), 60)
    # what the other user mounted, this user cannot even list
    peek = subprocess.run(user.command(["ls", imagenetfs_mounts(theirs)[0]]), env=user.env(),
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert peek.returncode != 0 and "Permission denied" in peek.stderr, peek
    for job in jobs:
        assert job.wait() == 0, job.log
        assert "ok:" in job.log
    # Two jobs share this machine's 2 CPUs (each job's reader and daemon could use both):
    # each may read at half its rate alone; slower than a third would be more than the CPU.
    solo, together = rate(alone), [rate(job) for job in jobs]
    print(f"reading alone {solo:.0f} MB/s; two jobs at once {together} MB/s")
    assert min(together) >= solo / 3, (solo, together)
    assert_nothing_left(users.uid, alone, jobs[0])
    assert_nothing_left(theirs, jobs[1])


@pytest.mark.timeout(300)
def test_the_tasks_of_a_job_share_one_mount(
    slurm: None, users: Users, user: Mounter, admin: Path, manifest: Path
) -> None:
    job = submit(user, admin, sys.executable, READER, manifest, "--hold", "5", sbatch=("-n", "4"))
    assert job.wait() == 0, job.log
    assert job.log.count("ok:") == 4, job.log
    assert job.log.count("already mounted") == 3, job.log  # one mount, three joined it
    assert job.log.count("unmounted") == 1, job.log  # by the last task to finish
    assert_nothing_left(users.uid, job)


# --- sharing and idle time, without Slurm --------------------------------------------------


def test_mount_again_joins_and_umount_counts(mounter: Mounter, admin: Path) -> None:
    mp = mounter.mkdir("mp")
    first = mounter.mount(mp, admin)
    again = mounter.cli("mount", "--source", admin, mp)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == (
        f"{mp}: already mounted (source {admin}, pid {first.pid}); 2 users"
    )
    elsewhere = mounter.cli("mount", "--source", mp, mp)  # another source at that point
    assert elsewhere.returncode == 1 and "is busy: imagenetfs serves" in elsewhere.stderr
    left = mounter.cli("umount", mp)
    assert left.returncode == 0 and "still used by 1 more" in left.stdout
    assert is_mounted(mp)
    assert mounter.cli("umount", mp).stdout.strip() == f"unmounted {mp}"
    assert not is_mounted(mp)
    # --force unmounts whoever else counted
    mounter.mount(mp, admin)
    mounter.cli("mount", "--source", admin, mp)
    assert mounter.cli("umount", "--force", mp).stdout.strip() == f"unmounted {mp}"


def test_idle_timeout_unmounts_an_unused_mount_only(mounter: Mounter, admin: Path) -> None:
    mp = mounter.mkdir("mp")
    mounted = mounter.mount(mp, admin, "--idle-timeout", "2s")
    holder = subprocess.Popen(["sleep", "60"], cwd=mp / "train")  # a shell inside, say
    try:
        time.sleep(5)
        assert is_mounted(mp), "unmounted while a process had its directory open"
        assert "uses the mount: staying" in mounted.log
    finally:
        holder.kill()
        holder.wait()
    assert wait_until(lambda: not is_mounted(mp), 15)
    assert wait_until(lambda: not alive(mounted.pid), 10)
    assert "no request for 2 s: unmounting" in mounted.log
    bad = mounter.cli("mount", "--source", admin, "--idle-timeout", "soon", mp)
    assert bad.returncode == 1 and "--idle-timeout 'soon': give a duration" in bad.stderr


def test_the_readme_shows_the_job_script_the_tests_run() -> None:
    readme = (REPO / "README.md").read_text()
    start = readme.index("<summary>scripts/slurm/imagenet.sbatch</summary>")
    block = readme[start:].split("```bash\n", 1)[1].split("```", 1)[0]
    assert block == JOB.read_text()
