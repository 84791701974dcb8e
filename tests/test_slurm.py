"""Per-job mounts under a real Slurm of two nodes: the job recipe users copy (one node and
several), cancellation, hard kills and the admin's epilog, two users' jobs at once, the tasks
of a job sharing their node's mount, data-parallel jobs across nodes, staging on every node; and
the two things that make sharing and forgetting safe without Slurm: `mount` joining a mount
that serves, `--idle-timeout`.

The `slurm` fixture runs a two-node Slurm 22.05 on this machine (../shared/notes/
slurm-facts.md, "Several nodes on one machine"), from Debian's packages (scripts/test-prepare.sh
installs them): it writes a config whose Epilog is `scripts/slurm/epilog`, starts munged and
slurmctld, and one slurmd per node, each in a mount namespace of its own with a private tmpfs on
/tmp (the node's local disk; its spool is there too, so one node cannot read another's job
files), and stops them afterwards (restoring any config it replaced). Everything else -- the
test users' homes, the admin's images (`base`, here under /var/tmp), /run -- every node shares,
as on a cluster. Jobs are submitted by the unprivileged test users with `sbatch`, waited for
with `scontrol show job`, and checked by their output files, exit codes, and each node's own
mount table, /tmp and processes. The job script is `scripts/slurm/imagenet.sbatch`, unchanged;
the training command is `tests/job_reader.py`, which reads every file as ImageFolder would (or
its rank's share) and checks its bytes against a manifest of `unsquashfs` output, or
`tests/job_ddp.py` (torch.distributed over torchvision's ImageNet, from the test venv that
scripts/test.sh runs pytest in).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import pwd
import re
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
from helpers import CLI, Mounter, alive, is_mounted, private_mount_namespace, wait_until
from prepared import unprepared

from imagenetfs import mountinfo

REPO = Path(__file__).resolve().parent.parent
JOB = REPO / "scripts" / "slurm" / "imagenet.sbatch"
EPILOG = REPO / "scripts" / "slurm" / "epilog"
READER = Path(__file__).resolve().parent / "job_reader.py"
DDP = Path(__file__).resolve().parent / "job_ddp.py"
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
CONF = Path("/etc/slurm/slurm.conf")
NODES = ("n1", "n2")
#: What every node shares (homes, the admin's images, job outputs: conftest's `base`) lies
#: outside /tmp, which is each node's own.
BASE_PARENT = "/var/tmp"
CPUS = 4  # per node (more than this machine has: config_overrides; jobs here mostly wait on I/O)

SLURM_CONF = (
    f"""\
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
SlurmdSpoolDir=/tmp/slurmd/%n
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
Epilog={EPILOG}
"""
    + "".join(
        f"NodeName={name} NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 "
        f"Port={17001 + i} CPUs={CPUS} RealMemory=4000 State=UNKNOWN\n"
        for i, name in enumerate(NODES)
    )
    + f"PartitionName=debug Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP\n"
)


def run(*cmd: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=timeout)


def _pid(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


PIDFILES = [f"/run/slurm/slurmd-{n}.pid" for n in NODES] + [
    "/run/slurm/slurmd.pid", "/run/slurm/slurmctld.pid", "/run/munge/munged.pid",
]  # fmt: skip


def _stop_daemons() -> None:
    for pidfile in PIDFILES:
        pid = _pid(pidfile)
        if pid is not None and alive(pid):
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda pid=pid: not alive(pid), 15)


@dataclass(frozen=True)
class Node:
    """One Slurm node of the test cluster: its slurmd, whose mount namespace -- its own /tmp,
    the FUSE mounts its jobs make -- is the node's."""

    name: str
    pid: int

    def path(self, path: str | Path) -> Path:
        """`path` as this node sees it (through its slurmd's root)."""
        return Path(f"/proc/{self.pid}/root") / str(path).lstrip("/")

    def mounts(self, uid: int) -> list[str]:
        """Mount points of `uid`'s imagenetfs mounts on this node, live or stale."""
        table = Path(f"/proc/{self.pid}/mountinfo").read_bytes()
        return [m.point for m in mountinfo.parse(table) if m.is_imagenetfs_of(uid)]

    def run(self, *cmd: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `cmd` on this node (in its mount namespace)."""
        return run(*self.enter(), *cmd, timeout=timeout)

    def enter(self) -> list[str]:
        """The start of an argv that runs in this node: its mount namespace, and its root
        directory too (entering a mount namespace leaves a chroot: the suite in a fresh root)."""
        return ["nsenter", "-t", str(self.pid), "--mount", "--root", "--wd", "--"]

    def records(self, uid: int) -> list[dict[str, object]]:
        """The mount records of `uid` in this node's registry."""
        directory = self.path(f"/tmp/imagenetfs-{uid}/mounts")
        out = []
        for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
            with contextlib.suppress(OSError, ValueError):
                out.append(json.loads(path.read_text()))
        return out


@dataclass(frozen=True)
class Cluster:
    nodes: tuple[Node, ...]

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)


def _start_node(name: str) -> None:
    script = (
        # 16g: a bound, not memory taken; staging keeps 10 GiB free after a copy by default
        "mount -t tmpfs -o size=16g,mode=1777 tmpfs /tmp && "
        f"mkdir -p /tmp/slurmd/{name} && exec slurmd -N {name}"
    )
    result = run(*private_mount_namespace(), "sh", "-c", script)
    assert result.returncode == 0, f"slurmd -N {name}: {result.stderr}"


def _nodes_idle() -> bool:
    lines = run("sinfo", "-h", "-N", "-o", "%N %T").stdout.split("\n")
    states = dict(line.split() for line in lines if line.strip())
    return all(states.get(name) == "idle" for name in NODES)


@pytest.fixture(scope="session")
def slurm() -> Iterator[Cluster]:
    """A two-node Slurm, up for the session."""
    absent = [t for t in ("slurmctld", "slurmd", "sbatch", "munged") if shutil.which(t) is None]
    if absent:
        unprepared(f"no {', '.join(absent)} here (Debian's {' '.join(PACKAGES)})")
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
    for d in ("/var/spool/slurmctld", "/var/log/slurm", "/run/slurm"):
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
        for cmd in (["runuser", "-u", "munge", "--", "/usr/sbin/munged"], ["slurmctld", "-c"]):
            result = run(*cmd)
            assert result.returncode == 0, f"{cmd[0]}: {result.stderr}"
        for name in NODES:
            _start_node(name)
        assert wait_until(_nodes_idle, 30, 0.3), (
            run("sinfo", "-N").stdout, Path("/var/log/slurm/slurmctld.log").read_text()[-2000:],
        )  # fmt: skip
        nodes = []
        for name in NODES:
            pid = _pid(f"/run/slurm/slurmd-{name}.pid")
            assert pid is not None and alive(pid), name
            nodes.append(Node(name, pid))
        yield Cluster(tuple(nodes))
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
    # (by file name, as tests/job_reader.py checks: names are unique in ImageNet)
    named = {k.rsplit("/", 1)[-1]: hashlib.sha256(v).hexdigest() for k, v in expected.items()}
    path.write_text(json.dumps(named))
    path.chmod(0o644)
    return path


@dataclass
class Job:
    """A submitted job."""

    id: int
    output: Path
    started: float

    def wait(self, timeout: float = 120) -> int:
        """Wait until the job has ended (its epilog included); its exit code, as `sbatch
        --wait` gives it (128 + the signal that ended it). Asks slurmctld every 0.2 s:
        `sbatch --wait` asks less and less often, up to half a minute after the end."""
        deadline = time.monotonic() + timeout
        while True:
            shown = run("scontrol", "show", "job", "-o", str(self.id)).stdout
            fields = dict(f.split("=", 1) for f in shown.split() if "=" in f)
            if fields.get("JobState") in ENDED:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id}: {shown.strip()}\n{self.log}")
            time.sleep(0.2)
        self.seconds = time.monotonic() - self.started
        code, signum = (int(n) for n in fields.get("ExitCode", "1:0").split(":"))
        if code == 0 and signum == 0 and fields["JobState"] != "COMPLETED":
            return 1
        return code or (128 + signum if signum else 0)

    @property
    def log(self) -> str:
        return self.output.read_text() if self.output.exists() else ""


ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
         "PREEMPTED", "BOOT_FAIL", "DEADLINE"}  # fmt: skip


def submit(
    user: Mounter,
    admin: Path,
    *command: object,
    sbatch: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Job:
    """`sbatch scripts/slurm/imagenet.sbatch COMMAND` as `user`, with the README's settings
    (the admin's images, the installed command) and the node's own mount registry (no
    IMAGENETFS_STATE_DIR: the default, /tmp/imagenetfs-UID/mounts on each node)."""
    env = {**user.env(), "IMAGENETFS": CLI, "IMAGENETFS_SOURCE": str(admin), **(env or {})}
    env.pop("IMAGENETFS_STATE_DIR", None)
    output = user.work / f"job-{time.monotonic_ns()}.out"
    argv = ["sbatch", "--parsable", f"--output={output}", f"--chdir={user.work}", *sbatch,
            str(JOB), *map(str, command)]  # fmt: skip
    env_args = [f"{k}={v}" for k, v in env.items()]
    started = time.monotonic()
    result = run("runuser", "-u", str(user.user), "--", "env", "-i", *env_args, *argv)
    first = result.stdout.strip()
    assert result.returncode == 0 and first.split(";")[0].isdigit(), result
    return Job(int(first.split(";")[0]), output, started)


def processes_of(uid: int) -> list[str]:
    """The command lines of `uid`'s processes (on any node: they share the pid namespace)."""
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


def mounts_of(cluster: Cluster, uid: int) -> dict[str, list[str]]:
    """Node -> `uid`'s imagenetfs mount points there, for the nodes that have any."""
    return {n.name: found for n in cluster.nodes if (found := n.mounts(uid))}


def assert_nothing_left(cluster: Cluster, uid: int, *jobs: Job, keep: str = "") -> None:
    """No mount and no process of `uid` on any node (but those whose command line has `keep`),
    and its `jobs`' mount points removed."""

    def processes() -> list[str]:
        return [p for p in processes_of(uid) if not (keep and keep in p)]

    assert wait_until(lambda: not mounts_of(cluster, uid), 15), mounts_of(cluster, uid)
    assert wait_until(lambda: not processes(), 15), processes()
    for job in jobs:
        for node in cluster.nodes:
            assert not node.path(f"/tmp/{user_name(uid)}-imagenet-{job.id}").exists(), node


def user_name(uid: int) -> str:
    return pwd.getpwuid(uid).pw_name


def pwd_uid(runner: Mounter) -> int:
    return pwd.getpwnam(str(runner.user)).pw_uid


def task_lines(job: Job, prefix: str) -> dict[str, list[str]]:
    """The job's output lines starting with `prefix`, by the node they name ("... node n1 ...")."""
    out: dict[str, list[str]] = {}
    for line in job.log.splitlines():
        if line.startswith(prefix):
            found = re.search(r"\bnode (\S+)", line)
            out.setdefault(found.group(1) if found else "?", []).append(line)
    return out


# --- one node -------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_the_job_script_mounts_reads_and_unmounts(
    slurm: Cluster, users: Users, user: Mounter, admin: Path, manifest: Path
) -> None:
    job = submit(user, admin, sys.executable, READER, manifest)
    assert job.wait() == 0, job.log
    assert f"ok: {len(json.loads(manifest.read_text()))} files" in job.log, job.log
    assert "ready in" in job.log, job.log
    assert_nothing_left(slurm, users.uid, job)


@pytest.mark.timeout(300)
def test_scancel_unmounts_and_leaves_no_process(
    slurm: Cluster, users: Users, user: Mounter, admin: Path
) -> None:
    job = submit(user, admin, "sleep", "300")
    assert wait_until(lambda: "ready in" in job.log, 60), job.log  # (not while mounting)
    result = subprocess.run(user.command(["scancel", str(job.id)]), env=user.env(),
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert result.returncode == 0, result.stderr
    job.wait()  # (returns once the job is cancelled: its trap may still be unmounting)
    assert_nothing_left(slurm, users.uid, job)
    assert wait_until(lambda: "unmounted" in job.log, 10), job.log  # by the job's own trap


def mount_on(node: Node, runner: Mounter, mp: Path, admin: Path) -> int:
    """`runner` mounts the admin's images at `mp` on `node`; returns the daemon's pid."""
    result = node.run(*runner.command([CLI, "mount", "--source", str(admin), str(mp)]))
    assert result.returncode == 0, result.stderr
    state = runner.state(mp)
    assert state is not None, result
    return int(state["pid"])


@pytest.mark.timeout(300)
def test_a_job_killed_hard_leaves_a_stale_mount_that_the_epilog_clears(
    slurm: Cluster, users: Users, user: Mounter, admin: Path
) -> None:
    n1 = slurm.node("n1")
    other = users.other
    theirs = other.mkdir(f"stale-{time.monotonic_ns()}")  # another user's stale mount on n1
    os.kill(mount_on(n1, other, theirs, admin), signal.SIGKILL)
    try:
        # the daemon, then the job's shell killed outright: no trap runs
        kill = (
            'pid=$("$IMAGENETFS" status "$IMAGENET" | sed -n "s/.* pid \\([0-9]*\\).*/\\1/p");'
            " kill -KILL $pid; sleep 1; kill -KILL $PPID"
        )
        job = submit(user, admin, "bash", "-c", kill, sbatch=("-w", "n1"))
        assert job.wait() != 0
        assert wait_until(lambda: not n1.mounts(users.uid), 30), (n1.mounts(users.uid), job.log)
        assert str(theirs) in n1.mounts(pwd_uid(other)), "the epilog touched another's"
        assert_nothing_left(slurm, users.uid)  # (its mount point stays: the epilog only unmounts)
    finally:
        n1.run("umount", "-l", theirs)


@pytest.mark.timeout(300)
def test_the_epilog_unmounts_what_a_job_killed_outright_left_serving(
    slurm: Cluster, users: Users, user: Mounter, admin: Path
) -> None:
    """The job's shell SIGKILLed, its daemon alive (detached: Slurm without cgroups does not
    end it): the epilog unmounts the mount the job alone used, and the daemon then exits."""
    n1 = slurm.node("n1")
    job = submit(user, admin, "bash", "-c", "sleep 1; kill -KILL $PPID", sbatch=("-w", "n1"))
    assert job.wait() != 0
    assert wait_until(lambda: not n1.mounts(users.uid), 30), (n1.mounts(users.uid), job.log)
    assert_nothing_left(slurm, users.uid)  # (its daemon saw the mount go, and ended)


def rate(job: Job) -> float:
    """The job reader's MB/s (the last number of its "ok:" line)."""
    line = next(ln for ln in job.log.splitlines() if ln.startswith("ok:"))
    found = re.search(r"([0-9.]+) MB/s", line)
    assert found is not None, line
    return float(found.group(1))


@pytest.mark.timeout(300)
def test_two_users_jobs_get_private_mounts(
    slurm: Cluster, users: Users, user: Mounter, admin: Path, manifest: Path
) -> None:
    alone = submit(user, admin, sys.executable, READER, manifest, "--hold", "4")
    assert alone.wait() == 0, alone.log
    hold = (sys.executable, READER, manifest, "--hold", "4")
    jobs = [submit(runner, admin, *hold, sbatch=("-w", "n1")) for runner in (user, users.other)]
    n1, theirs = slurm.node("n1"), pwd_uid(users.other)
    assert wait_until(lambda: bool(n1.mounts(theirs)), 60)
    # what the other user mounted, this user cannot even list
    peek = n1.run(*user.command(["ls", n1.mounts(theirs)[0]]))
    assert peek.returncode != 0 and "Permission denied" in peek.stderr, peek
    for job in jobs:
        assert job.wait() == 0, job.log
        assert "ok:" in job.log
    # (how fast two private mounts read side by side: scripts/bench.py --check readers-share-cpu)
    solo, together = rate(alone), [rate(job) for job in jobs]
    print(f"reading alone {solo:.0f} MB/s; two jobs at once {together} MB/s")
    assert_nothing_left(slurm, users.uid, alone, jobs[0])
    assert_nothing_left(slurm, theirs, jobs[1])


@pytest.mark.timeout(300)
def test_the_tasks_of_a_job_share_one_mount(
    slurm: Cluster, users: Users, user: Mounter, admin: Path, manifest: Path
) -> None:
    hold = (sys.executable, READER, manifest, "--hold", "5")
    job = submit(user, admin, *hold, sbatch=("-N", "1", "-n", "4"))
    assert job.wait() == 0, job.log
    assert job.log.count("ok:") == 4, job.log
    assert job.log.count("already mounted") == 3, job.log  # one mount, three joined it
    assert job.log.count("unmounted") == 1, job.log  # by the last task to finish
    assert_nothing_left(slurm, users.uid, job)


# --- several nodes ---------------------------------------------------------------------------

TWO_NODES = ("-N", "2", "--ntasks-per-node", "2")


def ready_times(job: Job) -> dict[str, float]:
    """Node -> seconds its mount took to be ready, from the job's "ready in" lines."""
    found = re.findall(r"ready in ([0-9.]+) s on (\S+)", job.log)
    return {node: float(seconds) for seconds, node in found}


@pytest.mark.timeout(300)
def test_two_nodes_each_mount_once_and_unmount_after_their_last_task(
    slurm: Cluster, users: Users, user: Mounter, admin: Path, manifest: Path
) -> None:
    """Two nodes, two tasks each, each node's second task reading 4 s after its first ended:
    each node mounts once, its tasks share that mount, it goes after its node's last task,
    every byte is right, and nothing is left on either node."""
    job = submit(user, admin, sys.executable, READER, manifest, "--stagger", "4", sbatch=TWO_NODES)
    assert job.wait(180) == 0, job.log
    done = task_lines(job, "ok:")
    assert sorted(done) == ["n1", "n2"] and all(len(v) == 2 for v in done.values()), job.log
    assert all(f"ok: {len(json.loads(manifest.read_text()))} files" in line
               for lines in done.values() for line in lines)  # fmt: skip
    point = f"/tmp/{user.user}-imagenet-{job.id}"
    assert job.log.count("already mounted") == 2, job.log  # one task per node joined
    assert job.log.count("still used by 1 more") == 2, job.log  # each node's first to end
    assert job.log.count(f"unmounted {point}") == 2, job.log  # each node's last
    assert "error" not in job.log, job.log
    print(f"mount ready per node: {ready_times(job)}")
    assert sorted(ready_times(job)) == ["n1", "n2"], job.log
    assert_nothing_left(slurm, users.uid, job)


@pytest.mark.timeout(300)
def test_status_on_each_node_shows_that_nodes_mount_only(
    slurm: Cluster, users: Users, user: Mounter, admin: Path
) -> None:
    out = user.work / f"status-{time.monotonic_ns()}"
    out.mkdir()
    shutil.chown(out, str(user.user))
    show = f'"$IMAGENETFS" status --json > {out}/"$SLURMD_NODENAME".json; sleep 2'
    job = submit(user, admin, "bash", "-c", show, sbatch=("-N", "2", "--ntasks-per-node", "1"))
    assert job.wait(120) == 0, job.log
    pids = {}
    for node in slurm.nodes:
        shown = json.loads((out / f"{node.name}.json").read_text())
        assert len(shown) == 1, shown
        assert shown[0]["mountpoint"] == f"/tmp/{user.user}-imagenet-{job.id}"
        assert shown[0]["serving"] is True
        pids[node.name] = shown[0]["pid"]
    assert pids["n1"] != pids["n2"], "each node its own daemon"
    assert_nothing_left(slurm, users.uid, job)


@pytest.mark.timeout(300)
def test_a_data_parallel_job_reads_its_shares_across_nodes(
    slurm: Cluster, users: Users, user: Mounter, admin: Path, manifest: Path
) -> None:
    """Without torch: each of the four ranks reads its DistributedSampler-style share through
    its node's mount; the shares together are every file once."""
    job = submit(user, admin, sys.executable, READER, manifest, "--shard", sbatch=TWO_NODES)
    assert job.wait(180) == 0, job.log
    done = [line for line in job.log.splitlines() if line.startswith("ok:")]
    ranks = sorted(int(re.search(r"rank (\d+)/4", line).group(1)) for line in done)  # type: ignore[union-attr]
    assert ranks == [0, 1, 2, 3], job.log
    files = sum(int(line.split()[1]) for line in done)
    assert files == len(json.loads(manifest.read_text())), job.log
    assert {node: len(lines) for node, lines in task_lines(job, "ok:").items()} == {
        "n1": 2, "n2": 2,
    }  # fmt: skip
    assert_nothing_left(slurm, users.uid, job)


@pytest.mark.timeout(600)
def test_torch_distributed_training_across_two_nodes(
    slurm: Cluster, users: Users, user: Mounter, admin: Path
) -> None:
    """torch.distributed (gloo) with DistributedSampler over torchvision.datasets.ImageNet on
    each node's mount, one process per task, a few steps of a tiny model."""
    absent = [m for m in ("torch", "torchvision") if importlib.util.find_spec(m) is None]
    if absent:
        unprepared(f"no {' or '.join(absent)} in this environment ({sys.executable})")
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(20000 + os.getpid() % 10000)}
    job = submit(user, admin, sys.executable, DDP, "--steps", "3", sbatch=TWO_NODES, env=env)
    assert job.wait(500) == 0, job.log
    done = task_lines(job, "ddp ok:")
    assert {node: len(lines) for node, lines in done.items()} == {"n1": 2, "n2": 2}, job.log
    lines = [line for lines in done.values() for line in lines]
    assert all(line.endswith("(torchvision.datasets.ImageNet)") for line in lines), job.log
    print("\n".join(lines))
    assert_nothing_left(slurm, users.uid, job)


def stormfs(work: Path) -> Path:
    """The counting passthrough of scripts/storm/ (the shared filesystem), built as the
    benchmark builds it, into `work`/bin."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from benchlib import storm
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return storm.build(work)


@dataclass
class Shared:
    """The admin's images on one node through the counting passthrough, as that node's client
    of the shared filesystem sees them."""

    node: Node
    proc: subprocess.Popen[bytes]
    stats: Path

    @property
    def pid(self) -> int:
        """The passthrough's own pid (under nsenter and runuser)."""
        for entry in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if argv[0].endswith(b"stormfs") and str(self.stats).encode() in argv:
                    return int(entry.name)
        raise AssertionError(f"no stormfs writing {self.stats}")

    def read_bytes(self) -> int:
        """Bytes read through it so far (SIGUSR1: it writes its counters)."""
        self.stats.unlink(missing_ok=True)
        os.kill(self.pid, signal.SIGUSR1)
        counted: list[int] = []

        def written() -> bool:
            with contextlib.suppress(OSError, ValueError):
                counted.append(int(json.loads(self.stats.read_text())["read_bytes"]))
            return bool(counted)

        assert wait_until(written, 10), self.stats
        return counted[0]


def share(node: Node, user: Mounter, admin: Path, mp: Path) -> Shared:
    exe = stormfs(user.work.parent)
    stats = user.work / f"storm-{node.name}-{time.monotonic_ns()}.json"
    argv = [str(exe), "-f", "-d", "0", "-q", "64", "-t", "10", "-s", str(stats), str(admin)]
    proc = subprocess.Popen([*node.enter(), *user.command([*argv, str(mp)])])
    assert wait_until(lambda: _fuse_at(node, mp), 30)
    return Shared(node, proc, stats)


def _fuse_at(node: Node, mp: Path) -> bool:
    table = Path(f"/proc/{node.pid}/mountinfo").read_bytes()
    return any(m.point == str(mp) for m in mountinfo.parse(table))


@pytest.mark.timeout(300)
def test_stage_on_two_nodes_reads_the_shared_images_once_per_node(
    slurm: Cluster, users: Users, user: Mounter, admin: Path, manifest: Path
) -> None:
    """`--stage` (the recipe's default) on both nodes: each node copies each image once into
    its own scratch, whatever its tasks read -- the bytes read from the shared filesystem,
    counted by each node's passthrough, are one copy of the images per node (and, without
    staging, what the tasks read)."""
    images = sum(p.stat().st_size for p in admin.glob("*.squashfs"))
    index = (admin / "imagenetfs.lmdb").stat().st_size
    mp = user.mkdir(f"shared-{time.monotonic_ns()}")
    for node in slurm.nodes:  # copies earlier jobs staged (they would be reused)
        for copy in node.path(f"/tmp/imagenetfs-{users.uid}").glob("*.squashfs"):
            copy.unlink()
    shares = [share(node, user, admin, mp) for node in slurm.nodes]
    read: dict[str, dict[str, int]] = {}
    try:
        for label, options in (("stage", None), ("direct", "")):
            Path("/proc/sys/vm/drop_caches").write_text("3\n")  # (the passthroughs' too)
            before = {s.node.name: s.read_bytes() for s in shares}
            env = {} if options is None else {"IMAGENETFS_OPTIONS": options}
            hold = (sys.executable, READER, manifest, "--hold", "3")
            job = submit(user, mp, *hold, sbatch=TWO_NODES, env=env)
            assert job.wait(180) == 0, job.log
            read[label] = {s.node.name: s.read_bytes() - before[s.node.name] for s in shares}
            assert_nothing_left(slurm, users.uid, job, keep="stormfs")
    finally:
        for s in shares:
            s.node.run("fusermount3", "-u", "-z", mp)
            s.proc.wait(30)
    print(f"images {images:,} B, index {index:,} B; read from the shared filesystem: {read}")
    for name in NODES:
        assert images <= read["stage"][name] <= images + index + images // 2, read


@pytest.mark.timeout(300)
def test_scancel_of_a_two_node_job_unmounts_on_both(
    slurm: Cluster, users: Users, user: Mounter, admin: Path
) -> None:
    job = submit(user, admin, "sleep", "300", sbatch=("-N", "2", "--ntasks-per-node", "1"))
    assert wait_until(lambda: len(ready_times(job)) == 2, 60), job.log
    result = subprocess.run(user.command(["scancel", str(job.id)]), env=user.env(),
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert result.returncode == 0, result.stderr
    job.wait()
    assert_nothing_left(slurm, users.uid, job)
    assert wait_until(lambda: job.log.count("unmounted") == 2, 10), job.log


@pytest.mark.timeout(300)
def test_a_daemon_killed_on_one_node_fails_that_nodes_tasks_only(
    slurm: Cluster, users: Users, user: Mounter, admin: Path, manifest: Path
) -> None:
    """The daemon on n2 SIGKILLed mid-job: n2's tasks get a clear error at once (not a hang),
    n1's finish, nothing stale is left on n2 (the job's trap, else the epilog, clears it), and
    the next job mounts on both nodes."""
    n2 = slurm.node("n2")
    hold = (sys.executable, READER, manifest, "--hold", "10")
    job = submit(user, admin, *hold, sbatch=TWO_NODES)
    assert wait_until(lambda: job.log.count("ready in") == 4, 60), job.log  # (all joined)
    os.kill(int(n2.records(users.uid)[0]["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
    killed = time.monotonic()
    assert job.wait(60) != 0, job.log
    errors = [line for line in job.log.splitlines() if line.startswith("error: node")]
    assert len(errors) == 2 and all("node n2" in e for e in errors), job.log
    lost = ("Transport endpoint is not connected", "Software caused connection abort")
    assert all(any(why in e for why in lost) for e in errors), errors
    assert {node: len(lines) for node, lines in task_lines(job, "ok:").items()} == {"n1": 2}
    print(f"the job ended {time.monotonic() - killed:.1f} s after the kill")
    assert_nothing_left(slurm, users.uid, job)
    again = submit(user, admin, sys.executable, READER, manifest, sbatch=TWO_NODES)
    assert again.wait(180) == 0, again.log
    assert sorted(ready_times(again)) == ["n1", "n2"], again.log
    assert_nothing_left(slurm, users.uid, again)


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


def test_the_cluster_page_shows_the_job_script_the_tests_run() -> None:
    page = (REPO / "docs" / "cluster.md").read_text()
    start = page.index("<summary>scripts/slurm/imagenet.sbatch</summary>")
    block = page[start:].split("```bash\n", 1)[1].split("```", 1)[0]
    assert block == JOB.read_text()
