"""scripts/install-user.sh in a fresh Debian: the README's "Install without root", for real.

A Debian bookworm root made by `debootstrap --variant=minbase` (cached under
/var/tmp/imagenetfs-fresh-root-cache, keyed by VERSION and the package list), in which root
installs only the admin's packages (README: fuse3 libfuse3-dev pkg-config gcc python3-dev
python3-venv squashfs-tools, plus ca-certificates for HTTPS). Each test works in a copy of it,
chrooted, with /proc and /sys bound, /dev a private tmpfs (its /dev/fuse 0666, as udev makes
it on a normal system: the host's is left alone) and /dev/pts bound. A plain user (no sudo in
there at all) gets the checkout's working tree (tracked and untracked files: what is being
tested need not be committed) and runs the README's commands with a clean environment and no
stdin:

- test_user_install_mounts_and_writes_only_home: install, mount (the built-in sample), `ls`;
  the symlink in ~/.local/bin, the PATH hint, nothing written outside the home and /tmp (there
  only the mount point and the mount records);
  `imagenetfs umount`; re-running it upgrades (the version in use by a mount is kept).
- test_missing_packages_fail_in_one_line_leaving_nothing: setup.sh, with no sudo, points to
  install-user.sh in one line; a pip failure and a SIGTERM during pip leave nothing behind;
  with libfuse3-dev removed, then python3.11-venv too, then on a "RHEL" os-release, one
  stderr line naming them and the apt-get/dnf command, exit 1, nothing created either.

Needs root, debootstrap (scripts/test-prepare.sh installs it), Debian's mirror and PyPI: about
75 s here (pip's downloads, and pyfuse3's compile by the first install: the re-runs take it
from a wheel of that build), plus about 45 s the first time (building the cached root,
~570 MB). Part of the test command's run (scripts/test.sh), CI's included.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prepared import unprepared

pytestmark = pytest.mark.timeout(2400)

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("IMAGENETFS_FRESH_ROOT_CACHE", "/var/tmp/imagenetfs-fresh-root-cache"))
SUITE = "bookworm"
#: Bump to rebuild the cached root.
VERSION = "1"
#: What the README tells an admin to install (Debian names).
ADMIN_PACKAGES = (
    "fuse3",
    "libfuse3-dev",
    "pkg-config",
    "gcc",
    "python3-dev",
    "python3-venv",
    "squashfs-tools",
)
#: What this test needs besides: HTTPS to PyPI through this machine's CA.
HARNESS_PACKAGES = ("ca-certificates",)
#: The README's commands for the user, run from the clone.
USER_COMMANDS = (
    "bash scripts/install-user.sh && ~/.local/bin/imagenetfs mount /tmp/$USER-inet"
    " && ls /tmp/$USER-inet/train | head"
)
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

if os.geteuid() != 0:
    pytest.skip("builds a Debian root with debootstrap: run as root", allow_module_level=True)


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, failing the test with its output if it fails."""
    kwargs.setdefault("timeout", 1200)
    result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kwargs)
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited {result.returncode}\n"
            f"stdout: {result.stdout[-3000:]}\nstderr: {result.stderr[-3000:]}"
        )
    return result


# --- the cached root ------------------------------------------------------------------------


def mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 sources, else sources.list)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for stanza in sources.read_text().split("\n\n"):
            fields = dict(
                line.split(":", 1) for line in stanza.splitlines() if re.match(r"^\w[\w-]*:", line)
            )
            if SUITE in fields.get("Suites", "").split():
                return fields["URIs"].split()[0]
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE:
                return parts[1]
    return "http://deb.debian.org/debian"


def cache_key() -> str:
    packages = " ".join(ADMIN_PACKAGES + HARNESS_PACKAGES)
    return f"{SUITE}-minbase-v{VERSION}-{hashlib.sha256(packages.encode()).hexdigest()[:12]}"


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root` (host view), deepest first."""
    prefix = str(root)
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(found, key=len, reverse=True)


def kill_processes_in(root: Path) -> None:
    """SIGKILL every process whose root directory is `root` (daemons left by a test)."""
    for _ in range(50):
        victims = daemons(root)
        if not victims:
            return
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def release(root: Path) -> None:
    """Kill what runs in `root`, unmount everything below it; fail if a mount stays."""
    kill_processes_in(root)
    for point in mounts_under(root):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=60)
    left = mounts_under(root)
    assert not left, f"still mounted under {root}: {left}"


def remove_root(root: Path) -> None:
    """Delete a root (or a copy), never through a mount that is still there."""
    if not root.exists():
        return
    release(root)
    subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=True, timeout=600)


@contextlib.contextmanager
def chroot_mounts(root: Path) -> Iterator[None]:
    """/proc and /sys bound, a private /dev (tmpfs: null, zero, full, random, urandom, tty,
    fuse 0666, shm, pts bound); all unmounted afterwards, with anything left running."""
    try:
        for name in ("proc", "sys"):
            run(["mount", "--bind", f"/{name}", str(root / name)])
        dev = root / "dev"
        run(["mount", "-t", "tmpfs", "-o", "mode=0755,nosuid", "imagenetfs-test-dev", str(dev)])
        for name, major, minor in (
            ("null", 1, 3),
            ("zero", 1, 5),
            ("full", 1, 7),
            ("random", 1, 8),
            ("urandom", 1, 9),
            ("tty", 5, 0),
            ("fuse", 10, 229),
        ):
            os.mknod(dev / name, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            os.chmod(dev / name, 0o666)
        (dev / "shm").mkdir()
        os.chmod(dev / "shm", 0o1777)
        (dev / "pts").mkdir()
        run(["mount", "--bind", "/dev/pts", str(dev / "pts")])
        for name, target in (
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
            ("ptmx", "pts/ptmx"),
        ):
            os.symlink(target, dev / name)
        yield
    finally:
        release(root)


def in_root(root: Path, script: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a shell script as root inside `root`; fail on error."""
    return run(["chroot", str(root), "/bin/sh", "-c", script], env=APT_ENV, **kwargs)


def build_root(target: Path) -> None:
    """debootstrap a minimal bookworm into `target`, then install the admin's packages."""
    if shutil.which("debootstrap") is None:
        unprepared("no debootstrap here (Debian's debootstrap)")
    run(["debootstrap", "--variant=minbase", SUITE, str(target), mirror()], timeout=1800)
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        shutil.copy(sources, target / "etc/apt/sources.list.d/debian.sources")
        (target / "etc/apt/sources.list").unlink(missing_ok=True)
    shutil.copy("/etc/resolv.conf", target / "etc/resolv.conf")
    (target / "etc/mtab").unlink(missing_ok=True)
    (target / "etc/mtab").symlink_to("/proc/self/mounts")
    with chroot_mounts(target):
        in_root(target, "apt-get update -qq")
        in_root(target, f"apt-get install -y -qq {' '.join(HARNESS_PACKAGES)}")
        for crt in Path("/usr/local/share/ca-certificates").glob("*.crt"):
            shutil.copy(crt, target / "usr/local/share/ca-certificates" / crt.name)
        in_root(target, "update-ca-certificates")
        # As the README has it: plain `apt-get install -y` (with Recommends, as an admin would).
        in_root(target, f"apt-get install -y -qq {' '.join(ADMIN_PACKAGES)}")
        in_root(target, "apt-get clean")
    for tool in ("useradd", "fusermount3", "mksquashfs"):
        assert any((target / d / tool).exists() for d in ("usr/sbin", "usr/bin", "sbin")), tool


@pytest.fixture(scope="module")
def base_root() -> Path:
    """The cached root: built once (under a lock, renamed into place when complete)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    final = CACHE / cache_key()
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for stale in CACHE.glob("work-*"):  # copies left by a killed run
            pid = stale.name.split("-")[1]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                remove_root(stale)
        if not final.exists():
            for old in CACHE.glob("*.partial"):
                remove_root(old)
            partial = CACHE / f"{final.name}.partial"
            try:
                build_root(partial)
            except BaseException:
                remove_root(partial)
                raise
            partial.rename(final)
    return final


@pytest.fixture
def root(base_root: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A throw-away copy of the cached root, with its mounts; removed afterwards."""
    work = CACHE / f"work-{os.getpid()}-{request.node.name}"
    remove_root(work)
    run(["cp", "-a", "--reflink=auto", str(base_root), str(work)], timeout=600)
    shutil.copy("/etc/resolv.conf", work / "etc/resolv.conf")  # today's, for pip
    try:
        with chroot_mounts(work):
            yield work
    finally:
        remove_root(work)


# --- users in the root ----------------------------------------------------------------------


def add_user(root: Path, name: str) -> tuple[int, int]:
    """A plain user with a home holding the checkout's working tree; (uid, gid)."""
    in_root(root, f"useradd -m -s /bin/bash {name}")
    line = next(
        x for x in (root / "etc/passwd").read_text().splitlines() if x.startswith(f"{name}:")
    )
    uid, gid = int(line.split(":")[2]), int(line.split(":")[3])
    files = run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    ).stdout.split("\0")
    dest = root / "home" / name / "imagenetfs"
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file() and not src.is_symlink():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for path in [dest, *dest.rglob("*")]:
        os.lchown(path, uid, gid)
    return uid, gid


def user_command(
    root: Path, name: str, script: str, env: dict[str, str] | None = None
) -> list[str]:
    """The command that runs `script` by bash as user `name` in `root`: clean environment,
    from ~."""
    uid, gid = home_owner(root, name)
    environ = {
        "HOME": f"/home/{name}",
        "PATH": "/usr/bin:/bin",
        "USER": name,
        "LOGNAME": name,
        "LANG": "C.UTF-8",
        **(env or {}),
    }
    return [
        "chroot",
        f"--userspec={uid}:{gid}",
        f"--groups={gid}",
        str(root),
        "env",
        "-i",
        *(f"{k}={v}" for k, v in environ.items()),
        "bash",
        "-c",
        f"cd ~ && {script}",
    ]


def as_user(
    root: Path, name: str, script: str, *, env: dict[str, str] | None = None, timeout: float = 1200
) -> subprocess.CompletedProcess[str]:
    """`script` run by bash as user `name` in `root`, no stdin (see `user_command`)."""
    return subprocess.run(
        user_command(root, name, script, env),
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout,
    )  # fmt: skip


def home_owner(root: Path, name: str) -> tuple[int, int]:
    st = (root / "home" / name).stat()
    return st.st_uid, st.st_gid


def tree(path: Path) -> set[str]:
    """Every path below `path`, relative."""
    return {str(p.relative_to(path)) for p in path.rglob("*")} if path.exists() else set()


def wheel_of_installed(venv: Path, project: str, dest: Path) -> Path:
    """A wheel of `project` as pip installed it into `venv` -- the files its RECORD lists, a
    RECORD of their hashes -- in `dest`. For the installs that re-run the first one: pyfuse3
    from this wheel instead of compiled again (the first install compiled it; what a re-run
    proves is the switch from one venv to the next, not the compiler)."""
    site = next(venv.glob("lib/python3*/site-packages"))
    info = next(site.glob(f"{project}-*.dist-info"))
    tag = next(ln.split(":", 1)[1].strip() for ln in (info / "WHEEL").read_text().splitlines()
               if ln.startswith("Tag:"))  # fmt: skip
    left_out = {f"{info.name}/{n}" for n in ("INSTALLER", "REQUESTED", "direct_url.json")}
    names = [
        row.split(",")[0]
        for row in (info / "RECORD").read_text().splitlines()
        if row and not row.startswith("..") and "__pycache__" not in row
    ]
    names = [n for n in names if n not in left_out and n != f"{info.name}/RECORD"]
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / f"{info.name.removesuffix('.dist-info')}-{tag}.whl"
    record = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for name in names:
            data = (site / name).read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{name},sha256={digest.decode()},{len(data)}")
            z.writestr(name, data)
        z.writestr(f"{info.name}/RECORD", "\n".join([*record, f"{info.name}/RECORD,,", ""]))
    wheel.chmod(0o644)
    return wheel


# --- the tests ------------------------------------------------------------------------------


def test_user_install_mounts_and_writes_only_home(root: Path) -> None:
    name = "alice"
    add_user(root, name)
    home = root / "home" / name
    stamp = root / "stamp"
    stamp.touch()
    time.sleep(0.05)
    started = time.monotonic()
    result = as_user(root, name, f"cd imagenetfs && {USER_COMMANDS}")
    took = time.monotonic() - started
    assert result.returncode == 0, f"stdout: {result.stdout}\nstderr: {result.stderr}"
    listing = result.stdout.split()
    assert listing, result.stderr
    assert all(re.fullmatch(r"n\d{8}", w) for w in listing), result.stdout
    print(f"install + mount + ls as {name}: {took:.0f} s\n{result.stderr}")

    # The command is a symlink into the venv, and the hint says how to get it on PATH.
    link = home / ".local/bin/imagenetfs"
    assert link.is_symlink()
    assert os.readlink(link) == f"/home/{name}/.local/share/imagenetfs/venv/bin/imagenetfs"
    venvs = sorted(p.name for p in (home / ".local/share/imagenetfs").iterdir())
    assert len(venvs) == 3 and venvs[:2] == [".lock", "venv"], venvs
    venvs = venvs[1:]
    assert os.readlink(home / ".local/share/imagenetfs/venv") == venvs[1]
    assert not (home / ".local/share/imagenetfs" / venvs[1] / ".src").exists()
    assert 'add this line to ~/.bashrc: export PATH="$HOME/.local/bin:$PATH"' in result.stderr
    # The checkout got no build/ or egg-info.
    assert not (home / "imagenetfs/build").exists()
    assert not list((home / "imagenetfs").glob("*.egg-info"))

    # Nothing written outside the home and /tmp; in /tmp, only the mount point and the user's
    # mount records (/tmp/imagenetfs-<uid>/mounts: README, "Where imagenetfs writes").
    found = in_root(
        root,
        f"find / -xdev \\( -path /home/{name} -o -path /tmp \\) -prune"
        " -o \\( -newer /stamp -o -cnewer /stamp \\) -print",
    ).stdout.split()
    assert found == [], found
    uid, _ = home_owner(root, name)
    assert sorted(os.listdir(root / "tmp")) == sorted([f"{name}-inet", f"imagenetfs-{uid}"])
    assert os.listdir(root / "tmp" / f"imagenetfs-{uid}") == ["mounts"]
    assert str(root / "tmp" / f"{name}-inet") in mounts_under(root)

    # Re-running upgrades: a new venv; the one the mount's daemon uses stays until the next.
    # (pyfuse3 from a wheel of what the first install built: pip finds it before PyPI's
    # source, so that the re-runs do not compile it again.)
    wheels = {"PIP_FIND_LINKS": "/wheelhouse"}
    wheel_of_installed(home / ".local/share/imagenetfs" / venvs[1], "pyfuse3", root / "wheelhouse")
    again = as_user(root, name, "cd imagenetfs && bash scripts/install-user.sh", env=wheels)
    assert again.returncode == 0, again.stderr
    assert "a running process uses it" in again.stderr
    versions = sorted(p.name for p in (home / ".local/share/imagenetfs").glob("venv-*"))
    assert len(versions) == 2 and venvs[1] in versions, versions
    assert os.readlink(home / ".local/share/imagenetfs/venv") == versions[1] != venvs[1]

    # umount through the (new) command; then a third install removes both older versions.
    done = as_user(
        root,
        name,
        "~/.local/bin/imagenetfs umount /tmp/$USER-inet && ls /tmp/$USER-inet | wc -l",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"unmounted /tmp/{name}-inet", "0"], done.stdout
    assert str(root / "tmp" / f"{name}-inet") not in mounts_under(root)
    deadline = time.monotonic() + 30
    while daemons(root) and time.monotonic() < deadline:  # the daemon ends after the unmount
        time.sleep(0.2)
    assert not daemons(root)
    third = as_user(root, name, "cd imagenetfs && bash scripts/install-user.sh", env=wheels)
    assert third.returncode == 0, third.stderr
    assert len(list((home / ".local/share/imagenetfs").glob("venv-*"))) == 1

    # --uninstall refuses while a mount uses the install; then removes the prefix and the
    # link, keeps the caches (the sample, its index) and names them; a second one says so.
    remount = as_user(root, name, "~/.local/bin/imagenetfs mount /tmp/$USER-inet")
    assert remount.returncode == 0, remount.stderr
    uninstall = "cd imagenetfs && bash scripts/install-user.sh --uninstall"
    refused = as_user(root, name, uninstall)
    assert refused.returncode == 1, refused.stderr
    assert "unmount first" in refused.stderr and link.is_symlink()
    assert as_user(root, name, "~/.local/bin/imagenetfs umount /tmp/$USER-inet").returncode == 0
    deadline = time.monotonic() + 30
    while daemons(root) and time.monotonic() < deadline:
        time.sleep(0.2)
    removed = as_user(root, name, uninstall)
    assert removed.returncode == 0, removed.stderr
    assert not link.is_symlink() and not (home / ".local/share/imagenetfs").exists()
    assert (home / ".cache/imagenetfs/sample").is_dir()
    assert f"kept /home/{name}/.cache/imagenetfs" in removed.stderr, removed.stderr
    twice = as_user(root, name, uninstall)
    assert twice.returncode == 1 and "no imagenetfs installed" in twice.stderr, twice.stderr


def assert_failed_leaving_nothing(
    result: subprocess.CompletedProcess[str], home: Path, before: set[str]
) -> None:
    assert result.returncode != 0, result.stderr
    assert tree(home) == before, sorted(tree(home) - before)
    assert not (home / ".local").exists()


def test_missing_packages_fail_in_one_line_leaving_nothing(root: Path) -> None:
    name = "bob"
    add_user(root, name)
    home = root / "home" / name
    before = tree(home)
    install = "cd imagenetfs && bash scripts/install-user.sh"

    # No sudo here: setup.sh points to install-user.sh, in one line.
    result = as_user(root, name, "bash imagenetfs/scripts/setup.sh")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "setup: error: not root and no sudo: to install for yourself without root, run: "
        f"bash /home/{name}/imagenetfs/scripts/install-user.sh"
    ]
    assert tree(home) == before

    # Every package there; pip fails (an index that refuses connections): nothing left
    # behind. (Before the packages go: putting them back would download them again.)
    with socket.socket() as closed:  # bound, never listening, kept: it refuses connections
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        refused = {
            "PIP_INDEX_URL": f"http://127.0.0.1:{port}/simple",
            "PIP_RETRIES": "0",
            "PIP_TIMEOUT": "5",
        }
        result = as_user(root, name, install, env=refused)
    assert_failed_leaving_nothing(result, home, before)
    assert "nothing was installed or changed" in result.stderr.splitlines()[-1], result.stderr

    # SIGTERM (a job's end) while pip waits on an index that never answers: nothing left.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        env = {**refused, "PIP_INDEX_URL": f"http://127.0.0.1:{silent.getsockname()[1]}/simple"}
        env["PIP_TIMEOUT"] = "300"
        uid, _ = home_owner(root, name)
        proc = subprocess.Popen(
            user_command(root, name, install, env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            silent.settimeout(120)  # pip waits on the index once it has connected to it
            connection, _ = silent.accept()
            with connection:  # (open, never answered, until pip is gone)
                assert pip_running(root, uid) and proc.poll() is None
                os.killpg(proc.pid, signal.SIGTERM)
                _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode != 0, stderr
    assert "nothing was installed or changed" in stderr, stderr
    assert tree(home) == before, sorted(tree(home) - before)

    in_root(root, "apt-get remove -y -qq libfuse3-dev")
    result = as_user(root, name, install)
    assert_failed_leaving_nothing(result, home, before)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("install-user: error: missing system packages: libfuse3-dev ")
    assert lines[0].endswith("ask an admin to run: apt-get install -y libfuse3-dev"), lines[0]
    assert result.stdout == ""

    in_root(root, "apt-get remove -y -qq python3.11-venv")
    result = as_user(root, name, install)
    assert_failed_leaving_nothing(result, home, before)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].endswith("apt-get install -y libfuse3-dev python3-venv"), lines[0]

    # The same machine calling itself RHEL: dnf and its package names.
    (root / "etc/os-release").unlink()
    (root / "etc/os-release").write_text(
        'NAME="Rocky Linux"\nID="rocky"\nID_LIKE="rhel centos fedora"\n'
    )
    result = as_user(root, name, install)
    assert_failed_leaving_nothing(result, home, before)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].endswith("dnf install -y fuse3-devel python3"), lines[0]


def pip_running(root: Path, uid: int) -> bool:
    """Whether a process of `uid` in `root` runs `pip install`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if entry.stat().st_uid != uid or os.readlink(entry / "root") != str(root):
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if b"pip" in argv and b"install" in argv:
                return True
    return False


def daemons(root: Path) -> list[int]:
    """Processes running in `root`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "root") == str(root):
                    found.append(int(entry.name))
    return found
