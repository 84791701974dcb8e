"""The contenders: how each one mounts a set, where its files are, which processes serve it.

Every mount goes through `Mounts`, a registry that unmounts whatever is still mounted when the
benchmark ends, fails or is interrupted (`fusermount3 -uz` for FUSE, `umount -l` for the
kernel's loop mounts), and stops the daemons the benchmark started, by their pid.

- imagenetfs: `imagenetfs mount --source SET --index INDEX MP` (one mount, the whole tree);
- kernel: `mount -t squashfs -o loop,ro` of each image (root only);
- squashfuse, squashfuse_ll: one foreground daemon per image;
- ratarmount: one foreground daemon per image, from the benchmark's own venv, its SQLite
  indexes in `<work>/ratarmount-index/<set>/`;
- unpacked: the unsquashfs'd tree on local disk; nothing to mount;
- floor: the FUSE floor (scripts/bench/floorfs.c through scripts/bench/floor.py): the
  unpacked tree's files packed once into one data file, served in the foreground by a minimal
  libfuse 3 server with imagenetfs's protocol choices and no other work, one thread per core;
  what this kernel charges any FUSE filesystem per file. Like the unpacked tree it does not
  depend on the image variant.

Over the official tars (`--tars`, data.ensure_official):
- ratarmount-tar: `ratarmount -f --recursive --index-folders <work>/ratarmount-index/<set>
  TAR MP`, one daemon per tar, its defaults otherwise: the per-class tars inside the train tar
  are indexed into the same SQLite index and shown as directories named `<wnid>.tar/`; the
  test tar's files sit under its `test/`;
- imagenetfs-tar: `imagenetfs mount --source <official set> --index INDEX MP`, once imagenetfs
  serves the tars (archive.py); until then it is reported unavailable, with imagenetfs's own
  words about a probe set (`<work>/probe-official`: 2 classes, generated);
- imagenetfs-packed: `imagenetfs pack SOURCE <work>/packed/<set>` (timed, SOURCE's index
  included), then `imagenetfs mount --source` the packed set (its own `imagenetfs.lmdb`
  when pack writes one); unavailable while `imagenetfs pack --help` fails.

"Ready" means a stat of a known file under every split succeeds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from benchlib import data
from benchlib.data import SPLITS, File

READY_TIMEOUT = 3600.0  # ratarmount indexes 1.28M entries on its first mount


class MountFailed(Exception):
    pass


def evict(path: Path) -> None:
    """Drop one file's pages from the page cache (POSIX_FADV_DONTNEED): a cold read of it
    without dropping the whole machine's caches."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


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


def _kib_fields(path: str) -> dict[str, int]:
    """`Name:   123 kB` lines of a /proc file (status, smaps_rollup), in KiB; {} if gone."""
    try:
        text = Path(path).read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        value = rest.split()
        if sep and value and value[0].isdigit():
            out[name] = int(value[0])
    return out


def memory(pids: list[int]) -> dict[str, float]:
    """The memory of `pids` and their descendants (imagenetfs: the supervisor and its
    workers), each summed over the processes, in MiB: `rss` and `hwm` (VmRSS, VmHWM from
    /proc/<pid>/status), `pss` (Pss from /proc/<pid>/smaps_rollup: each page divided by the
    number of processes mapping it, so pages the workers share with the supervisor count
    once in the sum) and `uss` (Private_Clean + Private_Dirty: the pages each process alone
    maps; pages the workers share with the supervisor are in no USS), `pss_anon` and
    `pss_file` (PSS of anonymous memory, and of mapped files: for imagenetfs mostly the pages
    of its LMDB index the workers have touched -- page cache, shared, dropped under pressure
    like any file's), and `procs`, how many processes were counted."""
    out = {"rss": 0.0, "hwm": 0.0, "pss": 0.0, "uss": 0.0, "pss_anon": 0.0, "pss_file": 0.0}
    out["procs"] = 0.0
    for pid in _tree_pids(pids):
        status = _kib_fields(f"/proc/{pid}/status")
        rollup = _kib_fields(f"/proc/{pid}/smaps_rollup")
        if not status:
            continue
        out["procs"] += 1
        out["rss"] += status.get("VmRSS", 0) / 1024
        out["hwm"] += status.get("VmHWM", 0) / 1024
        out["pss"] += rollup.get("Pss", 0) / 1024
        out["uss"] += (rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0)) / 1024
        out["pss_anon"] += rollup.get("Pss_Anon", 0) / 1024
        out["pss_file"] += rollup.get("Pss_File", 0) / 1024
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system, all threads) of `pids` and their descendants, in seconds,
    from /proc/<pid>/stat; children they reaped count too (cutime + cstime), so the
    difference over an interval holds the work of a worker that exited meanwhile. 0 for
    none (the kernel's mount, the unpacked tree: nothing serves them in user space)."""
    ticks = 0
    for pid in _tree_pids(pids) if pids else []:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        f = stat.rsplit(")", 1)[1].split()  # f[0] is field 3 (state): utime is field 14
        ticks += sum(int(v) for v in f[11:15])  # utime, stime, cutime, cstime
    return ticks / _TICK


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
    rel: Callable[[File], str] | None = None  # the file's path under its root, if not relpath

    def path(self, f: File) -> str:
        if self.val_by_label and f.split == "val" and f.wnid:
            return f"{self.roots['val']}/{f.wnid}/{f.relpath}"
        return f"{self.roots[f.split]}/{self.rel(f) if self.rel else f.relpath}"


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


def _floor_module() -> ModuleType:
    """scripts/bench/floor.py (not a package: `bench` is bench.py's name)."""
    path = Path(__file__).resolve().parent.parent / "bench" / "floor.py"
    spec = importlib.util.spec_from_file_location("bench_floor", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Floor(Contender):
    """The FUSE floor over `tree` (the unpacked tree of a scale): packed once into
    `<work>/floor/<tree's name>/`, floorfs compiled once into `<work>/floor/`, one foreground
    server per mount (its pid known: CPU and memory rows as for the daemons)."""

    name = "floor"

    def __init__(self, work: Path, tree: Path, threads: int | None = None) -> None:
        super().__init__(work)
        self.tree = tree
        self.threads = threads or os.cpu_count() or 2  # imagenetfs: a worker per core

    def unavailable(self) -> str | None:
        missing = [t for t in ("gcc", "pkg-config", "fusermount3") if not shutil.which(t)]
        if missing:
            return f"the FUSE floor needs {', '.join(missing)} (and libfuse3's headers)"
        r = subprocess.run(["pkg-config", "--exists", "fuse3"], capture_output=True)
        return None if r.returncode == 0 else "the FUSE floor needs libfuse3's headers (fuse3.pc)"

    def mount(self, setdir: Path, mp: Path, probe: File) -> Mounted:
        floor = _floor_module()
        base = self.work / "floor"
        binary = floor.build(base)
        blob, manifest = floor.pack(self.tree, base / self.tree.name)
        mp.mkdir(parents=True, exist_ok=True)
        roots = {s: mp / s for s in SPLITS}
        m = Mounted(self.name, roots, [mp])
        log = self.work / "logs" / "floor.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        argv = floor.argv(binary, blob, manifest, mp, self.threads, fg=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=out)
        m.pids = [proc.pid]

        def unmount() -> None:
            if os.path.ismount(mp):
                r = subprocess.run(["fusermount3", "-u", str(mp)], capture_output=True)
                if r.returncode != 0:
                    _fusermount_lazy(mp)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

        m.unmount = unmount
        try:
            wait_ready([m.path(probe)], [proc], log)
        except BaseException:
            unmount()
            raise
        return m


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
            self.index_path(setdir).unlink(missing_ok=True)
            r = subprocess.run(cmd, env=self.env, cwd=self.cwd, capture_output=True, text=True)
        if r.returncode != 0:
            if os.path.ismount(mp):
                _fusermount_lazy(mp)
            raise MountFailed(r.stderr.strip().splitlines()[-1] if r.stderr else "mount failed")
        with contextlib.suppress(OSError, ValueError, KeyError):
            m.pids = [int(json.loads(registry.state_file(mp).read_text())["pid"])]
        wait_ready([m.path(probe)], [], Path())
        return m


class ImagenetfsTar(Imagenetfs):
    """imagenetfs with the official tars as its source (archive.py): the same mount."""

    name = "imagenetfs-tar"

    def __init__(self, work: Path, src: Path | None, tag: str = "") -> None:
        super().__init__(work, src, tag)
        self._why: list[str | None] = []  # asked once per run

    def unavailable(self) -> str | None:
        """Can this imagenetfs index an official set? Asked of a small one, generated once."""
        if not self._why:
            self._why.append(self._probe())
        return self._why[0]

    def _probe(self) -> str | None:
        from imagenetfs import generate

        probe = self.work / "probe-official"
        if not all(data.tar_of(probe, s).is_file() for s in SPLITS):
            shutil.rmtree(probe, ignore_errors=True)
            spec = generate.Spec(
                classes=2, train_per_class=3, val_per_class=2, test=3, tiny=True, progress=False
            )
            generate.generate(probe, dataclasses.replace(spec, layout="official"))
        index = self.work / "index" / "probe-official.lmdb"
        index.parent.mkdir(parents=True, exist_ok=True)
        index.unlink(missing_ok=True)
        cmd = [*self.cmd, "index", "-q", "--source", str(probe), "--index", str(index)]
        r = subprocess.run(cmd, env=self.env, cwd=self.cwd, capture_output=True, text=True)
        index.unlink(missing_ok=True)
        if r.returncode == 0:
            return None
        said = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
        return f"this imagenetfs does not serve the official tars ({said})"


class ImagenetfsPacked(Imagenetfs):
    """`imagenetfs pack -q --index SOURCE_INDEX SOURCE OUT`, then imagenetfs over OUT. The
    pack is timed (`last_pack`, None when a pack was reused) and kept in `<work>/packed/<source's
    name>` for later mounts; `forget_index` removes it and SOURCE_INDEX (pack builds SOURCE's
    index when missing: a user with only the tars pays for it too), so the first-mount build
    is the whole way from SOURCE: its index, the pack, the first mount."""

    name = "imagenetfs-packed"

    def __init__(self, work: Path, src: Path | None) -> None:
        super().__init__(work, src, tag="packed-")
        self.last_pack: float | None = None
        self._why: list[str | None] = []

    def unavailable(self) -> str | None:
        if not self._why:
            cmd = [*self.cmd, "pack", "--help"]
            r = subprocess.run(cmd, env=self.env, cwd=self.cwd, capture_output=True, text=True)
            said = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
            self._why.append(
                None if r.returncode == 0 else f"this imagenetfs has no `pack` command ({said})"
            )
        return self._why[0]

    def packed_dir(self, source: Path) -> Path:
        return self.work / "packed" / source.name

    def _done(self, source: Path) -> Path:
        out = self.packed_dir(source)
        return out.with_name(out.name + ".done")

    def index_path(self, setdir: Path) -> Path:
        """The packed set's own index when pack wrote one, else one of ours."""
        own = setdir / "imagenetfs.lmdb"
        return own if own.exists() else self.work / "index" / f"{self.tag}{setdir.name}.lmdb"

    def source_index(self, source: Path) -> Path:
        return self.work / "index" / f"{self.tag}source-{source.name}.lmdb"

    def forget_index(self, setdir: Path) -> None:
        out = self.packed_dir(setdir)
        self.index_path(out).unlink(missing_ok=True)
        self.source_index(setdir).unlink(missing_ok=True)
        self._done(setdir).unlink(missing_ok=True)
        shutil.rmtree(out, ignore_errors=True)

    def pack(self, source: Path) -> Path:
        out = self.packed_dir(source)
        self.last_pack = None
        if self._done(source).exists():
            return out
        self.forget_index(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        index = self.source_index(source)
        index.parent.mkdir(parents=True, exist_ok=True)
        cmd = [*self.cmd, "pack", "-q", "--index", str(index), str(source), str(out)]
        t = time.perf_counter()
        r = subprocess.run(cmd, env=self.env, cwd=self.cwd, capture_output=True, text=True)
        if r.returncode != 0:
            tail = " | ".join(r.stderr.strip().splitlines()[-2:])
            raise MountFailed(f"imagenetfs pack {source} {out} failed: {tail}")
        self.last_pack = time.perf_counter() - t
        self._done(source).touch()
        return out

    def mount(
        self,
        setdir: Path,
        mp: Path,
        probe: File,
        extra: Sequence[str] = (),
        rebuild: bool = True,
    ) -> Mounted:
        """Pack `setdir` unless packed already, then mount the packed set."""
        return super().mount(self.pack(setdir), mp, probe, extra, rebuild)


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
    """One foreground FUSE daemon per image (squashfuse, squashfuse_ll, ratarmount), each
    mounted at `<mp>/<split>`."""

    def argv(self, image: Path, mp: Path, setdir: Path) -> list[str]:
        raise NotImplementedError

    def image(self, setdir: Path, split: str) -> Path:
        return setdir / f"{split}.squashfs"

    def layout(self, setdir: Path, points: dict[str, Path]) -> Mounted:
        """Where the files of each split are, given each split's mount point."""
        return Mounted(self.name, dict(points), list(points.values()))

    def mount(self, setdir: Path, mp: Path, probe: File) -> Mounted:
        points = {s: mp / s for s in SPLITS}
        m = self.layout(setdir, points)
        procs: list[subprocess.Popen[bytes]] = []
        log = self.work / "logs" / f"{self.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)

        def unmount() -> None:
            for s in SPLITS:
                if os.path.ismount(points[s]):
                    r = subprocess.run(["fusermount3", "-u", str(points[s])], capture_output=True)
                    if r.returncode != 0:
                        _fusermount_lazy(points[s])
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
                    points[s].mkdir(parents=True, exist_ok=True)
                    argv = self.argv(self.image(setdir, s), points[s], setdir)
                    procs.append(subprocess.Popen(argv, stdout=out, stderr=out))
            m.pids = [p.pid for p in procs]
            probes = [points[s] / probe_rel for s, probe_rel in self._probes(probe, setdir)]
            wait_ready(probes, procs, log)
        except BaseException:
            unmount()
            raise
        return m

    def _probes(self, probe: File, setdir: Path) -> list[tuple[str, str]]:
        """A path in each split's mount, so that every daemon is known to be serving."""
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


def first_member(tar: Path) -> str:
    """The name of a tar's first member (its first header only is read)."""
    with tarfile.open(tar) as t:
        first = t.next()
    if first is None:
        raise MountFailed(f"{tar}: an empty tar")
    return first.name


class RatarmountTar(Ratarmount):
    """ratarmount over the official tars, as a user serves ImageNet's downloads with it: one
    `ratarmount -f --recursive` per tar. Train shows `<wnid>.tar/<file>` (the per-class tars
    mounted recursively, under their own names: `--strip-recursive-tar-extension` is not a
    default), val its flat files, test `test/<file>`."""

    name = "ratarmount-tar"

    def image(self, setdir: Path, split: str) -> Path:
        return data.tar_of(setdir, split)

    def argv(self, image: Path, mp: Path, setdir: Path) -> list[str]:
        folder = self.index_dir(setdir)
        folder.mkdir(parents=True, exist_ok=True)
        return [
            str(self.exe),
            "-f",
            "--recursive",
            "--index-folders",
            str(folder),
            str(image),
            str(mp),
        ]

    def layout(self, setdir: Path, points: dict[str, Path]) -> Mounted:
        roots = dict(points)
        # the eval tars' files sit under a directory of the tar (test/ in the 2019 test tar)
        for s in ("val", "test"):
            parent = os.path.dirname(first_member(self.image(setdir, s)))
            roots[s] = points[s] / parent if parent else points[s]

        def rel(f: File) -> str:
            if f.split != "train":
                return f.relpath
            wnid, name = f.relpath.split("/", 1)
            return f"{wnid}.tar/{name}"

        return Mounted(self.name, roots, list(roots.values()), rel=rel)

    def _probes(self, probe: File, setdir: Path) -> list[tuple[str, str]]:
        """Each tar's first member (train: a class tar, shown as a directory)."""
        return [(s, first_member(self.image(setdir, s))) for s in SPLITS]


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
