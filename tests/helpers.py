"""Helpers shared by test modules (importable: pytest puts tests/ on sys.path), and the one
harness through which every test mounts (`Mounter`, and the `mounter` fixture of conftest.py).
"""

from __future__ import annotations

import contextlib
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
import time
from collections.abc import Callable, Iterator
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


# --- the one mount harness ------------------------------------------------------------------

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
            time.sleep(0.2)


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
    #: /tmp/imagenetfs-UID/mounts that every test of this user would share.
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
        if self.own_state:
            env["IMAGENETFS_STATE_DIR"] = str(self.state_dir)
        return env

    def command(self, args: list[str]) -> list[str]:
        """`args` as this user runs them."""
        if self.user is None:
            return args
        env = [f"{k}={v}" for k, v in self.env().items()]
        return ["runuser", "-u", self.user, "--", "env", "-i", *env, *args]

    def cli(
        self, *args: object, timeout: float = 60, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command([CLI, *map(str, args)]),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
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
        """`imagenetfs mount [--source S] [--index I] EXTRA... MP`, daemonized; must succeed."""
        self.points.append(mp)
        args: list[object] = ["mount"]
        if source is not None:
            args += ["--source", source.relative_to(cwd) if cwd else source]
        if index is not None:
            args += ["--index", index]
        result = self.cli(*args, *extra, mp, timeout=120, cwd=cwd)
        assert result.returncode == 0, result.stderr
        assert is_mounted(mp), mount_points()
        state = self.state(mp)
        assert state is not None, f"no state file for {mp} in {self.state_dir}"
        self.pids.add(int(state["pid"]))
        return Mounted(mp, int(state["pid"]), Path(state["state_file"]))

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


def official_files(root: Path) -> dict[str, bytes]:
    """Every file of an official-layout source as the mount serves it (val regrouped by
    label), read with tarfile: train/<wnid>/<file> from the class tars, val/, test/."""
    from imagenetfs import source

    labels = source.open_source(root).val_labels
    files: dict[str, bytes] = {}
    for split, name in (("train", "ILSVRC2012_img_train.tar"), ("val", "ILSVRC2012_img_val.tar"),
                        ("test", "ILSVRC2012_img_test_v10102019.tar")):  # fmt: skip
        with tarfile.open(root / name) as outer:
            for member in outer.getmembers():
                if not member.isfile():
                    continue
                data = outer.extractfile(member).read()  # type: ignore[union-attr]
                if split == "train":
                    wnid = member.name.removesuffix(".tar")
                    with tarfile.open(fileobj=io.BytesIO(data)) as inner:
                        for m in inner.getmembers():
                            body = inner.extractfile(m).read()  # type: ignore[union-attr]
                            files[f"train/{wnid}/{m.name}"] = body
                elif split == "val":
                    wnid = labels[member.name.encode()].decode()
                    files[f"val/{wnid}/{member.name}"] = data
                else:  # (the test tar holds test/<file>)
                    files[f"test/{member.name.removeprefix('test/')}"] = data
    return files
