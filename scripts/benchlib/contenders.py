"""The contenders: how each one mounts a set, where its files are, which processes serve it.

Every mount goes through `Mounts`, a registry that unmounts whatever is still mounted when the
benchmark ends, fails or is interrupted (`fusermount3 -uz` for FUSE, `umount -l` for the
kernel's loop mounts), and stops the daemons the benchmark started, by their pid.

- imagenetfs: `imagenetfs mount --source SET --index INDEX MP` (one mount, the whole tree);
- kernel: `mount -t squashfs -o loop,ro` of each image (root only);
- squashfuse, squashfuse_ll: one foreground daemon per image;
- ratarmount: one foreground daemon per image, from the benchmark's own venv, its SQLite
  indexes in `<work>/ratarmount-index/<set>/`;
- unpacked: the unsquashfs'd tree on local disk; nothing to mount.

"Ready" means a stat of a known file under every split succeeds.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchlib.data import SPLITS, File

READY_TIMEOUT = 3600.0  # ratarmount indexes 1.28M entries on its first mount


class MountFailed(Exception):
    pass


def drop_caches() -> bool:
    """`sync` then drop page cache, dentries and inodes; False where not permitted."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def _tree_pids(pids: list[int]) -> list[int]:
    """`pids` and all their descendants (a daemon may serve from worker processes)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def memory_mib(pids: list[int]) -> tuple[float, float]:
    """(VmRSS, VmHWM) summed over `pids` and their descendants, in MiB."""
    rss = hwm = 0
    for pid in _tree_pids(pids):
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        rss += int(fields.get("VmRSS", "0 kB").split()[0])
        hwm += int(fields.get("VmHWM", "0 kB").split()[0])
    return rss / 1024, hwm / 1024


def _fusermount_lazy(mp: Path) -> None:
    subprocess.run(["fusermount3", "-u", "-z", "-q", str(mp)], capture_output=True)


def _wait_gone(pids: list[int], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < end:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.01)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class Mounted:
    contender: str
    roots: dict[str, Path]  # split -> directory holding the image's files
    walk_tops: list[Path]
    pids: list[int] = field(default_factory=list)
    unmount: Callable[[], None] = lambda: None
    val_by_label: bool = False  # imagenetfs: val/<wnid>/<file>

    def path(self, f: File) -> str:
        if self.val_by_label and f.split == "val" and f.wnid:
            return f"{self.roots['val']}/{f.wnid}/{f.relpath}"
        return f"{self.roots[f.split]}/{f.relpath}"


class Mounts:
    """Registry of live mounts; `close()` unmounts them all (also after an error or Ctrl-C)."""

    def __init__(self) -> None:
        self.live: list[Mounted] = []

    def add(self, m: Mounted) -> Mounted:
        self.live.append(m)
        return m

    def release(self, m: Mounted) -> None:
        try:
            m.unmount()
        finally:
            if m in self.live:
                self.live.remove(m)

    def close(self) -> None:
        while self.live:
            m = self.live.pop()
            try:
                m.unmount()
            except BaseException as e:  # keep unmounting the others
                print(f"bench: unmounting {m.contender}: {e}", file=sys.stderr)


def wait_ready(probes: list[Path], procs: list[subprocess.Popen[bytes]], log: Path) -> None:
    end = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            for p in probes:
                os.stat(p)
            return
        except OSError:
            pass
        for proc in procs:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log else []
                raise MountFailed(f"exited with {proc.returncode}: {' | '.join(tail)}")
        if time.monotonic() > end:
            raise MountFailed("not ready in time")
        time.sleep(0.001)


class Contender:
    name = ""
    has_index = False

    def __init__(self, work: Path) -> None:
        self.work = work

    def unavailable(self) -> str | None:
        return None

    def mount(self, setdir: Path, mp: Path, probe: File) -> Mounted:
        raise NotImplementedError

    def forget_index(self, setdir: Path) -> None:
        """Remove this contender's index for `setdir`, so the next mount builds it."""


class Unpacked(Contender):
    name = "unpacked"

    def __init__(self, work: Path, tree: Path) -> None:
        super().__init__(work)
        self.tree = tree

    def mount(self, setdir: Path, mp: Path, probe: File) -> Mounted:
        roots = {s: self.tree / s for s in SPLITS}
        return Mounted(self.name, roots, list(roots.values()))


class Imagenetfs(Contender):
    name = "imagenetfs"
    has_index = True

    def __init__(self, work: Path, src: Path | None, tag: str = "") -> None:
        super().__init__(work)
        self.tag = tag  # index name prefix: the storm's index records other image paths
        self.env = dict(os.environ)
        if src is not None:  # a snapshot of the package, e.g. from `git archive`
            self.env["PYTHONPATH"] = str(src)
        # `-m` puts the working directory first on sys.path: run from the work dir, so that
        # a checkout there (or here) does not shadow PYTHONPATH's snapshot
        self.cmd = [sys.executable, "-m", "imagenetfs.cli"]
        self.cwd = work

    def index_path(self, setdir: Path) -> Path:
        return self.work / "index" / f"{self.tag}{setdir.name}.lmdb"

    def forget_index(self, setdir: Path) -> None:
        self.index_path(setdir).unlink(missing_ok=True)

    def mount(
        self,
        setdir: Path,
        mp: Path,
        probe: File,
        extra: Sequence[str] = (),
        rebuild: bool = True,
    ) -> Mounted:
        """Mount `setdir` at `mp` with `extra` mount options. `rebuild`: when the index is
        refused as another version's, remove it and mount again (the mount builds it)."""
        from imagenetfs import registry

        self.index_path(setdir).parent.mkdir(parents=True, exist_ok=True)
        mp.mkdir(parents=True, exist_ok=True)
        cmd = [*self.cmd, "mount", "--source", str(setdir)]
        cmd += ["--index", str(self.index_path(setdir)), *extra, str(mp)]
        roots = {s: mp / s for s in SPLITS}
        m = Mounted(self.name, roots, [mp], val_by_label=True)

        def unmount() -> None:
            pids = m.pids
            r = subprocess.run(
                [*self.cmd, "umount", str(mp)], env=self.env, cwd=self.cwd, capture_output=True
            )
            if r.returncode != 0 or os.path.ismount(mp):
                _fusermount_lazy(mp)
            _wait_gone(pids)

        m.unmount = unmount
        r = subprocess.run(cmd, env=self.env, cwd=self.cwd, capture_output=True, text=True)
        if rebuild and r.returncode != 0 and "--rebuild" in r.stderr:  # an older version's
            self.forget_index(setdir)
            r = subprocess.run(cmd, env=self.env, cwd=self.cwd, capture_output=True, text=True)
        if r.returncode != 0:
            if os.path.ismount(mp):
                _fusermount_lazy(mp)
            raise MountFailed(r.stderr.strip().splitlines()[-1] if r.stderr else "mount failed")
        with contextlib.suppress(OSError, ValueError, KeyError):
            m.pids = [int(json.loads(registry.state_file(mp).read_text())["pid"])]
        wait_ready([m.path(probe)], [], Path())
        return m


class Kernel(Contender):
    name = "kernel"

    def unavailable(self) -> str | None:
        if os.geteuid() != 0:
            return "needs root (mount -t squashfs -o loop)"
        if "squashfs" not in Path("/proc/filesystems").read_text():
            return "this kernel has no squashfs"
        return None

    def mount(self, setdir: Path, mp: Path, probe: File) -> Mounted:
        roots = {s: mp / s for s in SPLITS}
        m = Mounted(self.name, roots, list(roots.values()))
        done: list[Path] = []

        def unmount() -> None:
            for d in reversed(done):
                if subprocess.run(["umount", str(d)], capture_output=True).returncode != 0:
                    subprocess.run(["umount", "-l", str(d)], capture_output=True)

        m.unmount = unmount
        try:
            for s in SPLITS:
                roots[s].mkdir(parents=True, exist_ok=True)
                cmd = ["mount", "-t", "squashfs", "-o", "loop,ro"]
                r = subprocess.run(
                    [*cmd, str(setdir / f"{s}.squashfs"), str(roots[s])],
                    capture_output=True,
                    text=True,
                )
                if r.returncode != 0:
                    raise MountFailed(r.stderr.strip())
                done.append(roots[s])
            wait_ready([m.path(probe)], [], Path())
        except BaseException:
            unmount()
            raise
        return m


class PerImageDaemon(Contender):
    """One foreground FUSE daemon per image (squashfuse, squashfuse_ll, ratarmount)."""

    def argv(self, image: Path, mp: Path, setdir: Path) -> list[str]:
        raise NotImplementedError

    def mount(self, setdir: Path, mp: Path, probe: File) -> Mounted:
        roots = {s: mp / s for s in SPLITS}
        m = Mounted(self.name, roots, list(roots.values()))
        procs: list[subprocess.Popen[bytes]] = []
        log = self.work / "logs" / f"{self.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)

        def unmount() -> None:
            for s in SPLITS:
                if os.path.ismount(roots[s]):
                    r = subprocess.run(["fusermount3", "-u", str(roots[s])], capture_output=True)
                    if r.returncode != 0:
                        _fusermount_lazy(roots[s])
            for proc in procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

        m.unmount = unmount
        try:
            with log.open("ab") as out:
                for s in SPLITS:
                    roots[s].mkdir(parents=True, exist_ok=True)
                    argv = self.argv(setdir / f"{s}.squashfs", roots[s], setdir)
                    procs.append(subprocess.Popen(argv, stdout=out, stderr=out))
            m.pids = [p.pid for p in procs]
            probes = [roots[s] / probe_rel for s, probe_rel in self._probes(probe, setdir)]
            wait_ready(probes, procs, log)
        except BaseException:
            unmount()
            raise
        return m

    def _probes(self, probe: File, setdir: Path) -> list[tuple[str, str]]:
        """A file in each split's image, so that every daemon is known to be serving."""
        out = []
        for s in SPLITS:
            with open(setdir / f"{s}_files.txt") as f:
                first = f.readline().strip()
            if first:
                out.append((s, first))
        return out


class Squashfuse(PerImageDaemon):
    name = "squashfuse"

    def unavailable(self) -> str | None:
        return None if shutil.which(self.name) else f"{self.name} not installed (apt squashfuse)"

    def argv(self, image: Path, mp: Path, setdir: Path) -> list[str]:
        return [self.name, "-f", str(image), str(mp)]


class SquashfuseLL(Squashfuse):
    name = "squashfuse_ll"


class Ratarmount(PerImageDaemon):
    name = "ratarmount"
    has_index = True

    def __init__(self, work: Path, venv: Path, problem: str | None) -> None:
        super().__init__(work)
        self.exe = venv / "bin" / "ratarmount"
        self.problem = problem

    def unavailable(self) -> str | None:
        return self.problem

    def index_dir(self, setdir: Path) -> Path:
        return self.work / "ratarmount-index" / setdir.name

    def forget_index(self, setdir: Path) -> None:
        shutil.rmtree(self.index_dir(setdir), ignore_errors=True)

    def argv(self, image: Path, mp: Path, setdir: Path) -> list[str]:
        folder = self.index_dir(setdir)
        folder.mkdir(parents=True, exist_ok=True)
        return [str(self.exe), "-f", "--index-folders", str(folder), str(image), str(mp)]


def bench_venv(work: Path) -> tuple[Path, str | None]:
    """The benchmark's own venv (ratarmount[squashfs] + matplotlib), made on first use.

    Returns the venv and, when ratarmount could not be installed, why.
    """
    venv = work / "bench-venv"
    ratarmount = venv / "bin" / "ratarmount"
    if ratarmount.exists():
        return venv, None
    print(f"bench: creating {venv} (ratarmount[squashfs], matplotlib) ...", file=sys.stderr)
    log = work / "bench-venv.log"
    with log.open("w") as out:
        steps = [
            ["python3", "-m", "venv", str(venv)],
            [str(venv / "bin" / "pip"), "install", "-q", "ratarmount[squashfs]", "matplotlib"],
        ]
        for cmd in steps:
            if subprocess.run(cmd, stdout=out, stderr=out).returncode != 0:
                return venv, f"install failed (see {log})"
    return venv, None if ratarmount.exists() else f"install failed (see {log})"
