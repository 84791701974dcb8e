"""`imagenetfs pack SOURCE OUTDIR`: any source imagenetfs serves, written in the cluster layout.

What it writes (what `generate.build_cluster` makes, and the cluster's page describes):
`train.squashfs` (`<wnid>/<file>` at its root), `val.squashfs` (flat), `test.squashfs` (flat),
`train_files.txt`, `val_files.txt`, `test_files.txt` (one path relative to the image a line,
sorted), `val_labels.txt` (`<file> <wnid>` a line), `LOC_synset_mapping.txt`, and beside them
`imagenetfs.lmdb`, the index `imagenetfs index --source OUTDIR` would build: a mount of OUTDIR
serves at once the tree a mount of SOURCE serves, with the same bytes.

Design
------
- The source is read through its index (the one a mount would use, built first if missing):
  the served tree is the one place where every layout -- cluster, Kaggle, unpacked, and
  whatever `source.open_source` learns next -- looks alike. `train/` and `test/` are written as
  they are served; `val/<wnid>/<file>` is flattened again, its grouping written to
  `val_labels.txt` (a val file the source could not label, served at `val/<file>`, goes into
  val.squashfs with no label line), so the packed source regroups val exactly the same way.
- Nothing is unpacked to disk: a thread writes a tar stream into a pipe to `mksquashfs -
  IMAGE -tar` (squashfs-tools >= 4.5). Headers come from `tarfile.TarInfo.tobuf`; the data go
  straight from `Index.read` (1 MiB at a time, never a whole larger file in memory) to the pipe
  with `os.writev`, header and padding in the same call. (`tarfile.open(mode="w|")` would copy
  every byte three times or more through its stream buffer.) If mksquashfs dies, the writer
  meets EPIPE and stops; if the writer fails, mksquashfs is killed: nothing waits forever.
- Entries go into the stream in the order `SquashImage.walk` later yields them (each
  directory's children consecutively, sorted by name, directories depth-first), each file's
  blake2b digest kept in that order (16 bytes a file). Once mksquashfs is done, the new image is
  walked and every file read back and compared, position by position: names, kinds, bytes.
  Any difference and the image is removed, with an error naming the first one.
- The image's root directory (served as `train/`, `val/`, `test/`) carries the time of the
  pack: mksquashfs 4.5.1 ignores `-root-time` with `-tar`. Everything else keeps the source's
  times; `-mkfs-time` is the split directory's.
- Data are stored uncompressed by default (`-noD -noF`; metadata stay compressed): JPEGs gain
  ~0.5% from gzip, while every read of a compressed image pays to inflate its blocks. `--comp`
  picks a mksquashfs compressor for all of it instead.
- Atomic and resumable. An image is written as `OUTDIR/.<split>.squashfs.part-<writer>` and
  takes its name only once checked and synced; lists, labels, the mapping and the manifest
  `.imagenetfs-pack.json` are written to `.<name>.part-<writer>` and renamed; the index is
  built last (atomically, by `index.build`). The manifest records what the source is (its
  index's image names and fingerprints) and, per finished image, what it was made from (the
  split's file count and bytes, the compression) and its own fingerprint; it is saved before
  the rename, so an image file is trusted only if its fingerprint matches its record. A rerun
  keeps every image whose record still matches and rebuilds the others.
- A shared OUTDIR (NFS, Lustre: packs on several nodes). `<writer>` is the pid *and the node*
  (nodeid.py: host and boot id): a pack removes the parts whose process is gone from this
  node, and leaves -- naming them -- those of another node, which a pack may still be writing
  there. OUTDIR is locked by a lock file (dirlock.py: no lock call holds on every such
  filesystem); a second pack is refused in one line naming the holder.
- Never served half-written: the manifest is marked unfinished (with the command that runs the
  pack) before the pack changes anything in OUTDIR, and finished as the very last write (a
  rerun that changes nothing leaves it as it is).
  `source.open_source` -- so `mount`, `index`, `warm` and a pack from OUTDIR -- refuses an
  OUTDIR whose pack has not finished, in one line naming the command that finishes it: an
  interrupted pack never looks like a train-only dataset.
- Refusals, each one line: OUTDIR is SOURCE (or inside one of its unpacked trees); OUTDIR holds
  the images of another source, or ones `pack` did not make (no manifest), unless `--force`;
  not enough free space for an image (the split's bytes + 5%), checked before each.
- SIGINT and SIGTERM raise `Stopped` in the main thread (`stop_on_signals`): mksquashfs is
  stopped, the part file removed, and the command exits 130 or 143 with one line. Cleanup
  itself is never interrupted: a signal during it is held until it is done.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from imagenetfs import dirlock, index, nodeid, source, squashfs
from imagenetfs.errors import ImagenetfsError, ToolError, UsageError
from imagenetfs.index import Index, Node
from imagenetfs.staging import sync_dir

SPLITS = source.SPLITS
COMPRESSORS = ("none", "gzip", "xz", "lzo", "lz4", "zstd")
DEFAULT_COMP = "none"
MANIFEST = source.PACK_MANIFEST
LOCK = source.PACK_LOCK
MAPPING = "LOC_synset_mapping.txt"
#: Bumped when what `pack` writes for the same source changes: older images are rebuilt.
PACK_FORMAT = 1
#: Bytes read from the source, written to the pipe, and read back per step.
CHUNK = 1 << 20
#: Free space asked for an image beyond the split's bytes (metadata, fragments' slack).
SPACE_MARGIN = 0.05
_BLOCK = tarfile.BLOCKSIZE
_DIGEST = 16
_NO_DIGEST = bytes(_DIGEST)
#: How long the writer thread may take to notice a stop once mksquashfs is gone, s.
_JOIN_TIMEOUT = 10.0
_KIND_NAMES = {index.DIR: "directory", index.FILE: "file", index.SYMLINK: "symlink"}
_IMAGE_KINDS = {squashfs.DIR: index.DIR, squashfs.FILE: index.FILE, squashfs.SYMLINK: index.SYMLINK}

Say = Callable[[str], None]


class PackError(ImagenetfsError):
    """The pack cannot go on: mksquashfs failed, the image is not the source, a source file
    changed under it, no space."""


class Stopped(BaseException):  # (a stop, like KeyboardInterrupt: not an error)
    """SIGINT or SIGTERM during a pack (see `stop_on_signals`)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


# --- signals ----------------------------------------------------------------------------------


class _Signals:
    """The first SIGINT/SIGTERM raises `Stopped`, unless cleanup is running (`held`): then it
    is raised when the cleanup is done. Later signals only wait for the first to finish."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.holding = 0

    def handler(self, signum: int, _frame: FrameType | None) -> None:
        if self.received is not None:
            return
        self.received = signum
        if not self.holding:
            raise Stopped(signum)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.holding += 1
        try:
            yield
        finally:
            self.holding -= 1
        if self.received is not None and not self.holding:
            raise Stopped(self.received)


_signals = _Signals()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While inside (in the main thread), SIGINT and SIGTERM raise `Stopped`."""
    global _signals
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _signals = _Signals()
    previous = {s: signal.signal(s, _signals.handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# --- what goes into each image ----------------------------------------------------------------


@dataclass
class Plan:
    """One output image: its entries in stream (= walk) order, and what the lists need."""

    split: str
    mtime: int  # of the split's directory: the image's root and creation time
    paths: list[bytes] = field(default_factory=list)  # relative to the image root
    inos: array.array[int] = field(default_factory=lambda: array.array("Q"))
    kinds: bytearray = field(default_factory=bytearray)
    labels: list[tuple[bytes, bytes]] = field(default_factory=list)  # val: (file, wnid)
    files: int = 0
    size: int = 0  # of its files

    def add(self, path: bytes, node: Node) -> None:
        self.paths.append(path)
        self.inos.append(node.ino)
        self.kinds.append(node.kind)
        if node.kind == index.FILE:
            self.files += 1
            self.size += node.size

    @property
    def image_name(self) -> str:
        return f"{self.split}.squashfs"

    def file_list(self) -> bytes:
        """`<split>_files.txt`: the image's files, one path a line, sorted."""
        files = sorted(p for p, k in zip(self.paths, self.kinds, strict=True) if k == index.FILE)
        return b"".join(p + b"\n" for p in files)

    def made_from(self, identity: list[dict[str, Any]], comp: str) -> dict[str, Any]:
        """What the manifest records an image was made from: a change means a rebuild."""
        return {
            "format": PACK_FORMAT,
            "source": identity,
            "comp": comp,
            "files": self.files,
            "bytes": self.size,
            "entries": len(self.paths),
        }


def walk_order(ix: Index, top: int) -> Iterator[tuple[bytes, Node]]:
    """The subtree of directory `top`, as `SquashImage.walk` yields an image holding it: each
    directory's children consecutively (sorted), then its subdirectories, depth-first."""
    stack: list[tuple[int, bytes]] = [(top, b"")]
    while stack:
        ino, prefix = stack.pop()
        subdirectories = []
        for node in ix.readdir(ino):
            path = prefix + node.name
            yield path, node
            if node.kind == index.DIR:
                subdirectories.append((node.ino, path + b"/"))
        stack.extend(reversed(subdirectories))


def plan_split(ix: Index, split: str) -> Plan:
    """The entries of `split`'s image: train and test as served, val flat again."""
    top = ix.lookup(index.ROOT_INO, split.encode())
    plan = Plan(split, top.mtime)
    if split != "val":
        for path, node in walk_order(ix, top.ino):
            plan.add(path, node)
        return plan
    flat: dict[bytes, tuple[Node, bytes | None]] = {}
    for node in ix.readdir(top.ino):
        group: list[tuple[Node, bytes | None]] = [(node, None)]  # a val file with no label
        if node.kind == index.DIR:
            group = [(child, node.name) for child in ix.readdir(node.ino)]
        for child, label in group:
            if child.kind == index.DIR:
                raise PackError(
                    f"val/{_text(node.name)}/{_text(child.name)}: a directory, where val holds "
                    "<wnid>/<file>; cannot make a flat val.squashfs of it"
                )
            if child.name in flat:
                raise PackError(f"val: two files named {_text(child.name)}; cannot flatten val")
            flat[child.name] = (child, label)
    for name in sorted(flat):
        node, label = flat[name]
        plan.add(name, node)
        if label is not None:
            plan.labels.append((name, label))
    return plan


def _text(name: bytes) -> str:
    return name.decode("utf-8", "surrogateescape")


def class_mapping(ix: Index, src: source.Source) -> bytes:
    """LOC_synset_mapping.txt: the served one (line i = label i), then the val classes that
    train lacks (so that meta.bin names them the same way in the packed source)."""
    node = ix.lookup(index.ROOT_INO, MAPPING.encode())
    served = ix.read(node, 0, node.size)
    listed = {line.split(b" ", 1)[0] for line in served.splitlines()}
    extra = set()
    with contextlib.suppress(ImagenetfsError):
        val = ix.lookup(index.ROOT_INO, b"val")
        extra = {n.name for n in ix.readdir(val.ino) if n.kind == index.DIR} - listed
    lines = [f"{_text(w)} {', '.join(src.class_names(_text(w)))}\n" for w in sorted(extra)]
    return served + "".join(lines).encode("utf-8", "surrogateescape")


# --- streaming one image ----------------------------------------------------------------------


@functools.cache
def mksquashfs_path() -> str:
    """mksquashfs, 4.5 or later (for `-tar`)."""
    exe = shutil.which("mksquashfs")
    if exe is None:
        raise ToolError(
            "mksquashfs not found: install squashfs-tools 4.5 or later (Debian 12: apt-get "
            "install squashfs-tools; RHEL family: dnf install squashfs-tools)"
        )
    result = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=30)
    found = re.search(r"version (\d+)\.(\d+)", result.stdout)
    if found is None or (int(found[1]), int(found[2])) < (4, 5):
        version = found[0] if found else "an unknown version"
        raise ToolError(f"{exe} is {version}: pack needs squashfs-tools 4.5 or later (-tar)")
    return exe


def mksquashfs_command(image: Path, comp: str, mtime: int) -> list[str]:
    """mksquashfs reading a tar stream on stdin into `image`."""
    cpus = len(os.sched_getaffinity(0))  # what this job may use, not the machine's count
    cmd = [
        mksquashfs_path(), "-", str(image), "-tar", "-noappend", "-quiet", "-no-progress",
        "-all-root", "-no-xattrs", "-root-mode", "0755", "-mkfs-time", str(mtime),
        "-processors", str(cpus),
    ]  # fmt: skip
    if comp == "none":
        cmd += ["-noD", "-noF"]
    else:
        cmd += ["-comp", comp]
    return cmd


def _send(fd: int, parts: list[bytes]) -> None:
    """Write all of `parts` to `fd` (a pipe: writes may be partial)."""
    views = [memoryview(p) for p in parts if p]
    while views:
        n = os.writev(fd, views)
        while views and n >= len(views[0]):
            n -= len(views.pop(0))
        if n:
            views[0] = views[0][n:]


class _Feeder:
    """The writer thread: the plan's entries as a tar stream into `fd`, which it closes."""

    def __init__(self, ix: Index, plan: Plan, fd: int, advance: Callable[[int], object]) -> None:
        self.ix, self.plan, self.fd, self.advance = ix, plan, fd, advance
        self.digests = bytearray(_DIGEST * len(plan.paths))
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.broken_pipe = False

    def run(self) -> None:
        try:
            for i, path in enumerate(self.plan.paths):
                if self.stop.is_set():
                    return
                self._entry(i, path, self.ix.getattr(self.plan.inos[i]))
            _send(self.fd, [bytes(2 * _BLOCK)])  # the end-of-archive marker
        except BrokenPipeError:
            self.broken_pipe = True  # mksquashfs is gone: its own error says why
        except BaseException as e:  # handed to the main thread
            self.error = e
        finally:
            os.close(self.fd)

    def _entry(self, i: int, path: bytes, node: Node) -> None:
        info = tarfile.TarInfo(os.fsdecode(path))
        info.mtime = node.mtime
        info.uname = info.gname = "root"
        if node.kind == index.DIR:
            info.type, info.mode = tarfile.DIRTYPE, 0o755
        elif node.kind == index.SYMLINK:
            info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, os.fsdecode(node.target)
            self.digests[i * _DIGEST : (i + 1) * _DIGEST] = _digest(node.target)
        else:
            info.type, info.mode, info.size = tarfile.REGTYPE, 0o644, node.size
        header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        if node.kind != index.FILE:
            _send(self.fd, [header])
            return
        digest = hashlib.blake2b(digest_size=_DIGEST)
        size, offset, parts = node.size, 0, [header]
        while offset < size:
            if self.stop.is_set():
                return
            data = self.ix.read(node, offset, min(CHUNK, size - offset))
            if not data:
                raise PackError(
                    f"{self.plan.split}/{_text(path)}: the source file ended after {offset:,} "
                    f"of {size:,} bytes (changed since it was indexed?)"
                )
            digest.update(data)
            offset += len(data)
            parts.append(data)
            if offset == size:
                parts.append(bytes(-size % _BLOCK))
            _send(self.fd, parts)
            self.advance(len(data))
            parts = []
        if size == 0:
            _send(self.fd, parts)
        self.digests[i * _DIGEST : (i + 1) * _DIGEST] = digest.digest()


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=_DIGEST).digest()


def _bar(total: int, desc: str, progress: bool) -> Any:
    from tqdm import tqdm  # only when packing

    return tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=None if progress else True,
        leave=False,
    )


def stream(ix: Index, plan: Plan, part: Path, comp: str, progress: bool) -> bytes:
    """Write `plan`'s image to `part` through mksquashfs; its files' digests, in plan order.
    On any failure or stop, mksquashfs is gone and `part` removed before this returns."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    with contextlib.suppress(OSError):  # fewer, larger hand-overs; the default is fine too
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, CHUNK)
    with tempfile.TemporaryFile() as errors, _bar(plan.size, plan.image_name, progress) as bar:
        feeder = _Feeder(ix, plan, write_end, bar.update)  # closes write_end once started
        writer = threading.Thread(target=feeder.run, name=f"pack-{plan.split}", daemon=True)
        proc: subprocess.Popen[bytes] | None = None
        try:
            with _signals.held():  # both started, or neither
                try:
                    proc = subprocess.Popen(
                        mksquashfs_command(part, comp, plan.mtime),
                        stdin=read_end,
                        stdout=subprocess.DEVNULL,
                        stderr=errors,
                    )
                finally:
                    os.close(read_end)
                writer.start()
            while writer.is_alive():
                writer.join(0.2)
                if proc.poll() not in (None, 0):  # died while being fed: no use feeding on
                    feeder.stop.set()
            if feeder.error is not None:
                raise feeder.error
            while proc.poll() is None:
                time.sleep(0.05)
            if proc.returncode != 0:
                raise PackError(f"mksquashfs failed for {plan.image_name}: {_tail(errors, proc)}")
            if feeder.broken_pipe:  # (exit status 0 after closing its input: never seen)
                raise PackError(f"mksquashfs stopped reading for {plan.image_name}")
        except BaseException:
            with _signals.held():
                feeder.stop.set()
                if proc is not None:
                    _end(proc)
                if writer.ident is None:
                    os.close(write_end)
                writer.join(_JOIN_TIMEOUT)  # unblocked: its pipe has no reader any more
                part.unlink(missing_ok=True)
            raise
    return bytes(feeder.digests)


def _end(proc: subprocess.Popen[bytes]) -> None:
    """Stop mksquashfs (SIGTERM, then SIGKILL) and reap it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(errors: Any, proc: subprocess.Popen[bytes]) -> str:
    """mksquashfs's last words, on one line."""
    errors.seek(0)
    text = errors.read()[-4096:].decode("utf-8", "replace")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    detail = " / ".join(lines[-3:]) if lines else "no message"
    if proc.returncode < 0:
        detail += f" (killed by {signal.Signals(-proc.returncode).name})"
    return detail


def check(part: Path, plan: Plan, digests: bytes, progress: bool) -> None:
    """Walk the new image and read every file back: the plan's entries, in order, with the
    digests seen while streaming; PackError naming the first difference."""
    where = f"{plan.image_name} (as written by mksquashfs)"
    bar = _bar(plan.size, f"checking {plan.image_name}", progress)
    with squashfs.SquashImage(part) as image, bar:
        entries = image.walk()
        next(entries)  # the root
        n = 0
        for entry in entries:
            if n == len(plan.paths):
                raise PackError(f"{where} holds {_text(entry.path)}, which the source lacks")
            expected, kind = plan.paths[n], plan.kinds[n]
            if entry.path != expected or _IMAGE_KINDS.get(entry.kind) != kind:
                raise PackError(
                    f"{where} holds {_text(entry.path)} where the source has the "
                    f"{_KIND_NAMES[kind]} {_text(expected)}"
                )
            want = digests[n * _DIGEST : (n + 1) * _DIGEST]
            if kind == index.FILE:
                assert entry.extent is not None
                digest = hashlib.blake2b(digest_size=_DIGEST)
                for offset in range(0, entry.extent.size, CHUNK):
                    data = image.read(entry.extent, offset, CHUNK)
                    digest.update(data)
                    bar.update(len(data))
                got = digest.digest()
            else:
                got = _digest(entry.target or b"") if kind == index.SYMLINK else _NO_DIGEST
            if got != want:
                raise PackError(f"{where}: {_text(expected)} differs from the source's bytes")
            n += 1
        if n < len(plan.paths):
            raise PackError(f"{where} lacks {_text(plan.paths[n])}")


# --- the output directory ---------------------------------------------------------------------


def _output_names() -> set[str]:
    names = {MANIFEST.lstrip("."), "val_labels.txt", MAPPING}
    for split in SPLITS:
        names |= {f"{split}.squashfs", f"{split}_files.txt"}
    return names


_PART = re.compile(r"\.(?P<name>[^/]+?)\.part-(?P<writer>[^/]+)")
_INDEX_TMP = re.compile(re.escape(source.INDEX_NAME) + r"\.tmp-(?P<writer>[^/]+)")
_LOCK_ASIDE = re.compile(re.escape(LOCK) + r"\.stale-(?P<writer>[^/]+)")  # (dirlock._clear)


def part_path(path: Path) -> Path:
    """Where `path` is written before it takes its name: named after this process and node."""
    return path.with_name(f".{path.name.lstrip('.')}.part-{nodeid.suffix()}")


def _stale_here(writer: tuple[int, nodeid.Node]) -> bool:
    """A file written by `writer` (pid, node) whose process is gone: only this node can tell.
    (Our own pid and node: an earlier process of that number -- this one has written nothing
    yet when `remove_stale` runs.)"""
    pid, where = writer
    if where != nodeid.here():
        return False
    return pid == os.getpid() or not nodeid.running_here(pid, where)


def remove_stale(out: Path) -> tuple[list[str], list[str]]:
    """Remove what killed packs of this node left in `out` -- part files, index builds, a lock
    set aside -- and list the ones another node (or no known node) wrote: a pack may still be
    writing them there. (removed, left)"""
    removed, left = [], []
    names = _output_names()
    for entry in os.scandir(out):
        found = _INDEX_TMP.fullmatch(entry.name) or _LOCK_ASIDE.fullmatch(entry.name)
        part = _PART.fullmatch(entry.name)
        if part is not None and part["name"] in names:
            found = part
        if found is None:
            continue
        writer = nodeid.parse(found["writer"])
        if writer is not None and _stale_here(writer):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
            removed.append(entry.name)
        elif writer is None or writer[1] != nodeid.here():
            left.append(entry.name)
    return removed, left


def write_atomic(path: Path, data: bytes, before: Callable[[], object] | None = None) -> bool:
    """Give `path` the contents `data` through a part file and a rename; False (and nothing
    written) if it already has them. `before` is called first when it is written."""
    with contextlib.suppress(OSError):
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    if before is not None:
        before()
    part = part_path(path)
    try:
        with open(part, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, path)
    except BaseException:
        with _signals.held():
            part.unlink(missing_ok=True)
        raise
    return True


@dataclass
class Manifest:
    """`.imagenetfs-pack.json`: the source OUTDIR is packed from, and each finished image."""

    source: list[dict[str, Any]]
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    index: str | None = None  # what imagenetfs.lmdb was built from (see `_index`)
    finished: bool = False  # the pack that wrote OUTDIR last got to its end
    command: str | None = None  # that pack's command (what finishes it)
    changed: bool = False  # (this pack has changed OUTDIR: not saved)

    @classmethod
    def load(cls, out: Path) -> Manifest | None:
        try:
            data = json.loads((out / MANIFEST).read_bytes())
            if data.get("format") != PACK_FORMAT:
                return None
            finished = data.get("finished", data.get("index") is not None)  # (older packs)
            return cls(
                list(data["source"]),
                dict(data["images"]),
                data.get("index"),
                finished is True,
                data.get("command"),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def save(self, out: Path) -> None:
        document = {
            "format": PACK_FORMAT,
            "source": self.source,
            "images": self.images,
            "index": self.index,
            "finished": self.finished,
            "command": self.command,
        }
        write_atomic(out / MANIFEST, json.dumps(document, indent=1).encode() + b"\n")

    def changing(self, out: Path) -> None:
        """Before each change to OUTDIR: the first marks it unfinished, saved, so that no
        mount serves it until `finish` (source.pack_unfinished). A rerun that changes nothing
        never makes it unservable, not even for a moment."""
        if not self.changed:
            self.changed, self.finished = True, False
            self.save(out)

    def finish(self, out: Path) -> None:
        """The very last write of a pack: from here on OUTDIR is a dataset to serve."""
        if self.changed or not self.finished:
            self.finished = True
            self.save(out)

    def holds(self, image: Path, made_from: dict[str, Any]) -> bool:
        """Whether `image` is the one recorded, made from what it would be made from now."""
        record = self.images.get(image.name)
        if record is None or record.get("made_from") != made_from or not image.is_file():
            return False
        try:
            with squashfs.SquashImage(image) as existing:
                return asdict(existing.fingerprint()) == record.get("image")
        except ImagenetfsError:
            return False


def check_outdir(src: source.Source, out: Path) -> None:
    """Refuse an OUTDIR that is the source, lies inside one of its unpacked trees, or is not a
    directory."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"OUTDIR {out} exists and is not a directory; give another OUTDIR")
    target = out.resolve()
    if target == src.root.resolve():
        raise UsageError(f"{out} is the source itself: give another OUTDIR")
    for ref in src.images:
        if ref.path.is_dir() and target.is_relative_to(ref.path.resolve()):
            raise UsageError(f"{out} is inside the source's {ref.path}: give another OUTDIR")


def foreign_images(
    out: Path, manifest: Manifest | None, identity: list[dict[str, Any]]
) -> list[str]:
    """What OUTDIR holds of another source: its split images unless the manifest says they are
    packed from this one, and any other layout's images or trees."""
    ours = manifest is not None and manifest.source == identity
    found = [] if ours else [f"{s}.squashfs" for s in SPLITS if (out / f"{s}.squashfs").exists()]
    try:
        there = source.open_source(out, unfinished_pack=True)
    except UsageError:
        return found
    if there.layout != "cluster":
        found += [ref.path.name for ref in there.images]
    return found


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """One pack at a time into `out`, whichever node runs it: `OUTDIR/.imagenetfs-pack.lock`
    (dirlock.py says why a lock file), removed when the pack ends. A second pack is refused,
    not made to wait: a pack takes hours, and the line names the one holding the lock."""
    lock = dirlock.take(out / LOCK, f"another imagenetfs pack is writing {out}")
    try:
        yield
    finally:
        with _signals.held():
            lock.release()


def _free_space(out: Path, plan: Plan) -> None:
    need = int(plan.size * (1 + SPACE_MARGIN)) + CHUNK
    st = os.statvfs(out)
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise PackError(
            f"{out}: not enough space for {plan.image_name}: {size_text(need)} needed (the split's "
            f"{size_text(plan.size)} + {SPACE_MARGIN:.0%}), {size_text(free)} free"
        )


def size_text(n: float) -> str:
    """`n` bytes as a person reads them: 999 B, 1.5 MB, 152.1 GB (powers of 1000)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


# --- the whole pack ---------------------------------------------------------------------------


@dataclass
class ImageReport:
    name: str
    kept: bool
    files: int
    bytes: int
    stream_seconds: float = 0.0
    check_seconds: float = 0.0
    size: int = 0  # of the image file


@dataclass
class Report:
    out: Path
    images: list[ImageReport]
    index_built: bool
    removed: list[str]


def parse_splits(text: str | None) -> tuple[str, ...] | None:
    """`--splits train,val`: None (all the source has) when not given."""
    if text is None:
        return None
    wanted = {s.strip() for s in text.split(",") if s.strip()}
    unknown = wanted - set(SPLITS)
    if unknown or not wanted:
        raise UsageError(f"--splits: choose from {','.join(SPLITS)}, not {text!r}")
    return tuple(s for s in SPLITS if s in wanted)


def pack(
    src: source.Source,
    index_path: Path,
    out: Path,
    *,
    comp: str = DEFAULT_COMP,
    splits: Sequence[str] | None = None,
    force: bool = False,
    progress: bool = True,
    say: Say = print,
    command: str | None = None,
) -> Report:
    """Write `src` (read through the index at `index_path`) into `out` in the cluster layout,
    keeping what an earlier pack of the same source already finished there. `command`: the
    command that runs it, named by `mount` and `index` should it stop before the end
    (default: `command_line` of these arguments)."""
    if comp not in COMPRESSORS:
        raise UsageError(f"--comp: choose from {', '.join(COMPRESSORS)}, not {comp!r}")
    check_outdir(src, out)
    mksquashfs_path()
    with Index.open(index_path, source=src.root, names=src.image_names) as ix:
        present = [s for s in SPLITS if _has(ix, s)]
        if splits is None:
            wanted = present
        else:
            missing = [s for s in splits if s not in present]
            if missing:
                raise UsageError(f"the source {src.root} has no {'/, '.join(missing)}/")
            wanted = list(splits)
        if not wanted:
            raise UsageError(f"the source {src.root} has no train/, val/ or test/ to pack")
        out.mkdir(parents=True, exist_ok=True)
        command = command or command_line(src.root, out, comp=comp, splits=splits)
        with locked(out):
            return _pack_locked(ix, src, out, wanted, comp, force, progress, say, command)


def command_line(
    src: Path,
    out: Path,
    *,
    comp: str = DEFAULT_COMP,
    splits: Sequence[str] | None = None,
    index_path: Path | None = None,
) -> str:
    """The `imagenetfs pack` command that writes `src` into `out` so (absolute paths)."""
    words = ["imagenetfs", "pack"]
    if comp != DEFAULT_COMP:
        words += ["--comp", comp]
    if splits is not None:
        words += ["--splits", ",".join(splits)]
    if index_path is not None:
        words += ["--index", str(index_path.absolute())]
    return shlex.join([*words, str(src.absolute()), str(out.absolute())])


def _has(ix: Index, split: str) -> bool:
    try:
        return ix.lookup(index.ROOT_INO, split.encode()).kind == index.DIR
    except ImagenetfsError:
        return False


def _pack_locked(
    ix: Index,
    src: source.Source,
    out: Path,
    wanted: Sequence[str],
    comp: str,
    force: bool,
    progress: bool,
    say: Say,
    command: str,
) -> Report:
    removed, left = remove_stale(out)
    if removed:
        say(f"removed what an interrupted pack left: {', '.join(sorted(removed))}")
    if left:
        say(
            f"left {', '.join(sorted(left))}: written by a pack of another node (or of this "
            "host before it rebooted, or by an older imagenetfs), which may still be running; "
            "remove them once no pack writes here"
        )
    identity = ix.image_records
    manifest = Manifest.load(out)
    foreign = foreign_images(out, manifest, identity)
    if foreign and not force:
        raise UsageError(
            f"{out} holds {', '.join(foreign)} of another source (not packed from {src.root} "
            "by imagenetfs pack); give --force to replace them, or another OUTDIR"
        )
    if manifest is None or manifest.source != identity:
        manifest = Manifest(identity)
    manifest.command = command  # (saved with the first change: what finishes this pack)
    kept = {k: v for k, v in manifest.images.items() if (out / k).is_file()}
    if kept != manifest.images:
        manifest.changing(out)
        manifest.images = kept
        manifest.save(out)
    changing = functools.partial(manifest.changing, out)
    images = []
    for split in wanted:
        plan = plan_split(ix, split)
        image = out / plan.image_name
        made_from = plan.made_from(identity, comp)
        if manifest.holds(image, made_from):
            say(f"{plan.image_name}: already packed, kept")
            images.append(ImageReport(image.name, True, plan.files, plan.size))
        else:
            images.append(_pack_image(ix, plan, out, comp, made_from, manifest, progress))
            say(_describe(images[-1]))
        write_atomic(out / f"{split}_files.txt", plan.file_list(), changing)
        if split == "val":
            labels = b"".join(b"%s %s\n" % pair for pair in plan.labels)
            write_atomic(out / source.LABELS_FILE, labels, changing)
    write_atomic(out / MAPPING, class_mapping(ix, src), changing)
    built = _index(out, manifest, progress, say)
    manifest.finish(out)
    sync_dir(out)
    return Report(out, images, built, removed)


def _pack_image(
    ix: Index,
    plan: Plan,
    out: Path,
    comp: str,
    made_from: dict[str, Any],
    manifest: Manifest,
    progress: bool,
) -> ImageReport:
    _free_space(out, plan)
    manifest.changing(out)
    image = out / plan.image_name
    part = part_path(image)
    part.unlink(missing_ok=True)
    started = time.monotonic()
    digests = stream(ix, plan, part, comp, progress)
    streamed = time.monotonic()
    try:
        check(part, plan, digests, progress)
        fd = os.open(part, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        with squashfs.SquashImage(part) as written:
            fingerprint = asdict(written.fingerprint())
        # recorded before the rename: a name without .part is trusted only if it matches
        manifest.images[image.name] = {"made_from": made_from, "image": fingerprint}
        manifest.save(out)
        os.rename(part, image)
        sync_dir(out)
    except BaseException:
        with _signals.held():
            part.unlink(missing_ok=True)
        raise
    return ImageReport(
        image.name,
        False,
        plan.files,
        plan.size,
        streamed - started,
        time.monotonic() - streamed,
        image.stat().st_size,
    )


def _describe(r: ImageReport) -> str:
    seconds = max(r.stream_seconds, 1e-6)
    return (
        f"{r.name}: {r.files:,} files, {size_text(r.bytes)} packed in {r.stream_seconds:.1f} s "
        f"({r.bytes / 1e6 / seconds:.0f} MB/s, {r.files / seconds:,.0f} files/s), checked in "
        f"{r.check_seconds:.1f} s; image {size_text(r.size)}"
    )


def _index(out: Path, manifest: Manifest, progress: bool, say: Say) -> bool:
    """Build `out`'s own index as `imagenetfs index --source OUTDIR` would, unless the one
    there serves these images and was built with these labels and names (the manifest keeps
    their digest). True if built."""
    packed = source.open_source(out, unfinished_pack=True)
    path = out / source.INDEX_NAME
    inputs = hashlib.blake2b(digest_size=_DIGEST)  # (Index.open checks the images)
    for name in (*packed.image_names, source.LABELS_FILE, MAPPING):
        inputs.update(name.encode() + b"\0")
        if not name.endswith(".squashfs") and (out / name).is_file():
            inputs.update(_digest((out / name).read_bytes()))
    if manifest.index == inputs.hexdigest() and path.is_file():
        try:
            with Index.open(path, source=out, names=packed.image_names):
                pass
        except ImagenetfsError:
            pass
        else:
            say(f"{path.name}: up to date, kept")
            return False
    manifest.changing(out)
    stats = index.build(
        path,
        packed.image_list,
        packed.placer(),
        source=str(out),
        virtual=packed.virtual_files,
        progress=progress,
    )
    manifest.index = inputs.hexdigest()
    manifest.save(out)
    say(f"{path.name}: built ({stats.entries:,} entries, {stats.files:,} files)")
    return True
