"""Real FUSE mounts through the `imagenetfs` command (issue 4): tree, bytes, users, lifecycle.

No mocks: every test runs the installed CLI on SquashFS images made by the generator and
compares what the mount serves with what `unsquashfs` extracts from the same images (val
regrouped by `val_labels.txt`, as `source.py` does); the root's lists are computed from that
extraction, class names and `meta.bin`'s content from the devkit as scipy reads it.

Safety rules, because a leftover FUSE mount hangs whatever touches it next:

- every test has a timeout, and every subprocess has its own (`timeout=` or `timeout(1)`);
- every mount goes through a `Mounter`, whose finalizer lazily unmounts what is still mounted
  (`fusermount3 -uz`) and SIGKILLs the daemons it started; the module's base directory is swept
  for mounts once more at the end;
- readers of a killed daemon run in subprocesses under `timeout`, never in this process;
- system changes (test users, `/dev/fuse` mode, `/etc/fuse.conf`, search bits on the
  interpreter's directories) are undone by the fixtures that make them.

Facts these tests pin, measured on Debian 12 (libfuse 3.14, kernel 6.x): root gets EACCES on a
FUSE mount of another user without `allow_other` (even `stat` of the mount point); every write
operation, for every user, fails with EROFS at the VFS because the mount is `ro`; after SIGKILL
the mount point stays (no `auto_unmount` for users on 3.14) and every access gives ENOTCONN.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import hashlib
import json
import os
import pwd
import random
import re
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Users
from helpers import (
    CLI,
    ROOT_FILES,
    Mounter,
    alive,
    children,
    force_unmount,
    fuse_unusable,
    is_mounted,
    mount_points,
    one_error_line,
    reference_tree,
    wait_until,
)
from oracles import Devkit, expected_meta, generated_devkit, read_torch_zip

from imagenetfs import generate, synsets
from imagenetfs.generate import Spec

PY = sys.executable

SPLITS = ("train", "val", "test")

#: ~30 realistic JPEGs (tens to hundreds of KB: several FUSE reads per file).
REALISTIC = Spec(classes=3, train_per_class=6, val_per_class=3, test=4, jobs=2)
#: 3,000 tiny files: counts, names and random-order reads at scale.
TINY = Spec(classes=20, train_per_class=120, val_per_class=10, test=400, tiny=True, jobs=2)


def _fuse_usable() -> str | None:
    return fuse_unusable(
        ("fusermount3", "unsquashfs", "mksquashfs", "runuser", "useradd", "timeout"),
        "these tests create users and change /dev/fuse: run them as root",
    )


pytestmark = pytest.mark.skipif(_fuse_usable() is not None, reason=str(_fuse_usable()))


# --- small helpers ------------------------------------------------------------------------


def mount_line(mp: Path) -> str | None:
    with open("/proc/mounts") as f:
        for line in f:
            if line.split()[1].encode().decode("unicode_escape") == str(mp):
                return line
    return None


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the datasets -------------------------------------------------------------------------


@dataclass
class Dataset:
    root: Path
    index: Path
    files: dict[str, bytes]  # path in the served tree -> bytes, from unsquashfs (no meta.bin)
    dirs: set[str]
    mtimes: dict[str, int]  # every path that exists in an image (not the regrouped val dirs)
    meta: tuple[dict[str, tuple[str, ...]], list[str]]  # what meta.bin holds, by the devkit

    @property
    def images(self) -> list[str]:
        return sorted(p for p in self.files if p.split("/")[0] in SPLITS and "/" in p)

    @property
    def regular(self) -> set[str]:
        """Every regular file of the tree: the images, the lists and meta.bin."""
        return {*self.files, "meta.bin"}

    @property
    def entries(self) -> int:
        return len(self.regular) + len(self.dirs) + 1  # + the root


def build_dataset(base: Path, name: str, spec: Spec) -> Dataset:
    root = base / name
    generate.generate(root, spec)
    extracted = reference_tree(root, base / f"{name}-extracted")
    assert not extracted.links, "the generated images hold files and directories only"
    files, dirs, mtimes = dict(extracted.files), set(extracted.dirs), dict(extracted.mtimes)
    devkit = generated_devkit(base / f"{name}-devkit")
    files |= expected_lists(files, devkit)
    index = base / f"{name}.lmdb"
    subprocess.run(
        [CLI, "index", "--source", str(root), "--index", str(index), "-q"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return Dataset(root, index, files, dirs, mtimes, expected_meta(devkit, files))


def expected_lists(images: dict[str, bytes], devkit: Devkit) -> dict[str, bytes]:
    """The root's text files (DESIGN.md) from the extracted images alone: labels in
    sorted-wnid order, lists in sorted path order, class names from the devkit."""
    paths = {split: sorted(p for p in images if p.startswith(f"{split}/")) for split in SPLITS}
    wnids = sorted({p.split("/")[1] for p in paths["train"]})
    label = {w: i for i, w in enumerate(wnids)}

    def lines(rows: list[str]) -> bytes:
        return "".join(f"{row}\n" for row in rows).encode()

    out = {
        "LOC_synset_mapping.txt": lines(
            [f"{w} {', '.join(devkit.wnid_to_classes[w])}" for w in wnids]
        ),
        "train.txt": lines([f"{p} {label[p.split('/')[1]]}" for p in paths["train"]]),
        "val.txt": lines([f"{p} {label[p.split('/')[1]]}" for p in paths["val"]]),
        "test.txt": lines([f"{p} 0" for p in paths["test"]]),
    }
    for split in SPLITS:
        out[f"{split}_files.txt"] = lines(paths[split])
    return out


@pytest.fixture(scope="module")
def realistic(base: Path) -> Dataset:
    return build_dataset(base, "realistic", REALISTIC)


@pytest.fixture(scope="module")
def tiny(base: Path) -> Dataset:
    data = build_dataset(base, "tiny", TINY)
    assert len(data.regular) == 3000 + len(ROOT_FILES)
    return data


@pytest.fixture(autouse=True)
def no_mount_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Whatever a test mounted under our directories and did not undo (e.g. a refusal that
    mounted after all) fails it; it is detached all the same (its daemon then exits: reads
    give ENODEV). Module-wide mounts (the `served` fixture's) were there before the test."""
    ours = (f"{tmp_path_factory.getbasetemp()}/", f"{tempfile.gettempdir()}/imagenetfs-test-")
    before = set(mount_points())
    yield
    left = sorted(mp for mp in set(mount_points()) - before if mp.startswith(ours))
    for mp in left:
        force_unmount(Path(mp))
    assert not left, f"left mounted after the test: {left}"


# Snippets run as another user (or in a separate process, where a hang must not reach pytest).

READ_FILES = """
import errno, hashlib, json, os, sys
out = {}
for p in json.loads(sys.argv[1]):
    try:
        st = os.stat(p)
        with open(p, 'rb') as f:
            data = f.read()
        out[p] = [hashlib.sha256(data).hexdigest(), st.st_uid, st.st_gid, st.st_mode]
    except OSError as e:
        out[p] = errno.errorcode[e.errno]
print(json.dumps(out))
"""

ACCESS = """
import errno, json, os, sys
out = {}
for name, call in [('listdir', os.listdir), ('stat', os.stat), ('statvfs', os.statvfs),
                   ('open', lambda p: os.close(os.open(p, os.O_RDONLY)))]:
    for p in json.loads(sys.argv[1]):
        try:
            call(p)
            out[name + ' ' + p] = 'ok'
        except OSError as e:
            out[name + ' ' + p] = errno.errorcode[e.errno]
print(json.dumps(out))
"""

WRITES = """
import errno, json, os, sys
f, d = json.loads(sys.argv[1]), json.loads(sys.argv[2])
ops = {
    'open O_WRONLY': lambda: os.open(f, os.O_WRONLY),
    'open O_RDWR': lambda: os.open(f, os.O_RDWR),
    'open O_APPEND': lambda: os.open(f, os.O_WRONLY | os.O_APPEND),
    'open O_TRUNC': lambda: os.open(f, os.O_RDONLY | os.O_TRUNC),
    'create': lambda: os.open(os.path.join(d, 'new'), os.O_WRONLY | os.O_CREAT, 0o644),
    'unlink': lambda: os.unlink(f),
    'rmdir': lambda: os.rmdir(d),
    'rename': lambda: os.rename(f, f + '.renamed'),
    'rename dir': lambda: os.rename(d, d + '.renamed'),
    'chmod': lambda: os.chmod(f, 0o644),
    'chown': lambda: os.chown(f, os.getuid(), os.getgid()),
    'utime': lambda: os.utime(f, (0, 0)),
    'truncate': lambda: os.truncate(f, 0),
    'mkdir': lambda: os.mkdir(os.path.join(d, 'newdir')),
    'symlink': lambda: os.symlink('x', os.path.join(d, 'newlink')),
    'link': lambda: os.link(f, os.path.join(d, 'hardlink')),
    'mkfifo': lambda: os.mkfifo(os.path.join(d, 'fifo')),
    'setxattr': lambda: os.setxattr(f, 'user.x', b'1'),
}
out = {}
for name, op in ops.items():
    try:
        op()
        out[name] = 'succeeded'
    except OSError as e:
        out[name] = errno.errorcode[e.errno]
out['access(W_OK)'] = 'writable' if os.access(f, os.W_OK) else 'EROFS'
print(json.dumps(out))
"""


def assert_all_erofs(out: dict[str, str]) -> None:
    """The mount is `ro`: the VFS answers every write EROFS before FUSE sees it."""
    assert len(out) == 19
    assert out == dict.fromkeys(out, "EROFS"), out


def sample_files(data: Dataset, n: int, seed: int = 0) -> list[str]:
    return random.Random(seed).sample(sorted(data.files), min(n, len(data.files)))


def assert_reads(out: dict[str, Any], mp: Path, data: Dataset, rels: list[str], uid: int) -> None:
    gid = pwd.getpwuid(uid).pw_gid
    for rel in rels:
        assert out[str(mp / rel)] == [sha(data.files[rel]), uid, gid, 0o100444], rel


# --- 1. the tree and its bytes ------------------------------------------------------------


@pytest.fixture(scope="module")
def served(
    request: pytest.FixtureRequest, base: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Dataset, Path]]:
    """A root mount of one dataset, shared by the read-only tests of this module; served by
    worker processes (the default) or, for `<dataset>-pyfuse3`, by pyfuse3 alone."""
    name, _, mode = request.param.partition("-")
    data: Dataset = request.getfixturevalue(name)
    runner = Mounter(tmp_path_factory.mktemp(f"served-{request.param}"))
    mp = runner.mkdir("mp")
    try:
        workers = ["--workers", "0"] if mode == "pyfuse3" else []
        runner.mount(mp, data.root, *workers, index=data.index)
        yield data, mp
    finally:
        runner.cleanup()


both = pytest.mark.parametrize("served", ["realistic", "tiny", "realistic-pyfuse3"], indirect=True)


def walk(mp: Path) -> dict[str, os.stat_result]:
    found: dict[str, os.stat_result] = {}
    for dirpath, dirnames, filenames in os.walk(mp):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, mp)] = os.lstat(path)
    return found


@both
@pytest.mark.timeout(180)
def test_tree_and_stat_match_unsquashfs(served: tuple[Dataset, Path]) -> None:
    data, mp = served
    found = walk(mp)
    files = {p for p, st in found.items() if stat.S_ISREG(st.st_mode)}
    dirs = {p for p, st in found.items() if stat.S_ISDIR(st.st_mode)}
    assert files == data.regular
    assert dirs == data.dirs
    assert len(found) == len(files) + len(dirs), "only files and directories"
    assert sorted(os.listdir(mp)) == sorted(SPLITS + ROOT_FILES)
    assert read_torch_zip((mp / "meta.bin").read_bytes()) == data.meta
    for rel, st in found.items():
        if rel in data.files:
            assert st.st_size == len(data.files[rel]), rel
            assert st.st_blocks * 512 >= st.st_size, rel
        if rel in data.mtimes:
            assert st.st_mtime_ns == data.mtimes[rel] * 1_000_000_000, rel


class _Dirent(ctypes.Structure):  # glibc's struct dirent on 64-bit Linux
    _fields_ = (
        ("d_ino", ctypes.c_uint64),
        ("d_off", ctypes.c_int64),
        ("d_reclen", ctypes.c_ushort),
        ("d_type", ctypes.c_ubyte),
        ("d_name", ctypes.c_char * 256),
    )


def d_types(directory: Path) -> dict[str, int]:
    """The d_type of each entry as readdir(3) returns it: no stat involved."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.opendir.restype = ctypes.c_void_p
    libc.opendir.argtypes = (ctypes.c_char_p,)
    libc.readdir.restype = ctypes.POINTER(_Dirent)
    libc.readdir.argtypes = (ctypes.c_void_p,)
    libc.closedir.argtypes = (ctypes.c_void_p,)
    handle = libc.opendir(os.fsencode(directory))
    assert handle, os.strerror(ctypes.get_errno())
    out: dict[str, int] = {}
    try:
        while entry := libc.readdir(handle):
            out[os.fsdecode(entry.contents.d_name)] = entry.contents.d_type
    finally:
        libc.closedir(handle)
    return out


DT_DIR, DT_REG = 4, 8


@both
@pytest.mark.timeout(60)
def test_readdir_carries_entry_types(served: tuple[Dataset, Path]) -> None:
    data, mp = served
    seen = 0
    for rel in ["", *sorted(data.dirs)]:
        directory = mp / rel
        types = d_types(directory)
        assert types.pop(".") == DT_DIR and types.pop("..") == DT_DIR
        for name, d_type in types.items():
            child = f"{rel}/{name}".lstrip("/")
            assert d_type == (DT_DIR if child in data.dirs else DT_REG), child
            seen += 1
        with os.scandir(directory) as it:
            for entry in it:
                child = f"{rel}/{entry.name}".lstrip("/")
                assert entry.is_dir(follow_symlinks=False) == (child in data.dirs)
                assert entry.is_file(follow_symlinks=False) == (child in data.regular)
                assert not entry.is_symlink()
    assert seen == data.entries - 1


#: getdents64(2): the one way to read a directory from a position a program chose (lseek to
#: a cookie), as telldir/seekdir and NFS do; libc's readdir hides the positions.
SYS_GETDENTS64 = {"x86_64": 217, "aarch64": 61}[os.uname().machine]
_DIRENT64 = struct.Struct("<QqHB")  # d_ino, d_off, d_reclen, d_type; then the name, NUL-ended


def read_from(fd: int, cookie: int, buffer: int) -> list[tuple[str, int]]:
    """(name, d_off) of every entry from position `cookie` on, read `buffer` bytes a call."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    os.lseek(fd, cookie, os.SEEK_SET)
    out: list[tuple[str, int]] = []
    buf = ctypes.create_string_buffer(buffer)
    while (n := libc.syscall(SYS_GETDENTS64, fd, buf, ctypes.c_uint(buffer))) != 0:
        if n < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        pos = 0
        while pos < n:
            _, d_off, reclen, _ = _DIRENT64.unpack_from(buf.raw, pos)
            name = buf.raw[pos + _DIRENT64.size : pos + reclen].split(b"\0", 1)[0]
            out.append((os.fsdecode(name), d_off))
            pos += reclen
    return out


@pytest.mark.parametrize("served", ["tiny", "tiny-pyfuse3"], indirect=True)
@pytest.mark.timeout(120)
def test_readdir_resumes_at_every_cookie(served: tuple[Dataset, Path]) -> None:
    """Every directory lists `.`, `..` and exactly its entries in the images, once each; a
    listing resumed at any entry's cookie (lseek, then getdents) gives exactly the entries
    after it -- also across READDIR requests (test/ holds 400 files: several 4 KiB kernel
    buffers, and more than one stored chunk of the index) and across small user buffers."""
    data, mp = served
    children: dict[str, set[str]] = {"": set()}
    for rel in [*data.dirs, *data.regular]:
        parent, _, name = rel.rpartition("/")
        children.setdefault(parent, set()).add(name)
    largest = 0
    for rel in ["", *sorted(data.dirs)]:
        fd = os.open(mp / rel, os.O_RDONLY | os.O_DIRECTORY)
        try:
            full = read_from(fd, 0, 512)
            names = [name for name, _ in full]
            assert len(names) == len(set(names)), f"{rel}: an entry listed twice"
            assert set(names) == {".", "..", *children.get(rel, ())}, rel
            assert read_from(fd, 0, 1 << 16) == full, f"{rel}: another listing with a big buffer"
            for i, (name, cookie) in enumerate(full):
                assert read_from(fd, cookie, 1024) == full[i + 1 :], (rel, name, cookie)
        finally:
            os.close(fd)
        largest = max(largest, sum((24 + len(os.fsencode(n)) + 7) & ~7 for n in names))
    assert largest > 3 * 4096, "a directory larger than a few kernel READDIR buffers"


@both
@pytest.mark.timeout(120)
def test_random_order_reads_are_byte_identical(served: tuple[Dataset, Path]) -> None:
    """Every file, in random order: first a pread at a random offset (cold: the daemon serves
    it), then the whole file; offsets at and past the end give short or empty reads."""
    data, mp = served
    rng = random.Random(4)
    order = sorted(data.files)
    rng.shuffle(order)
    for rel in order:
        expected = data.files[rel]
        fd = os.open(mp / rel, os.O_RDONLY)
        try:
            assert os.fstat(fd).st_size == len(expected)
            for _ in range(2):
                off = rng.randrange(len(expected) + 1)
                size = rng.choice([1, 17, 4096, 65536, 131072 + 3, 300_000])
                assert os.pread(fd, size, off) == expected[off : off + size], (rel, off, size)
            assert os.pread(fd, 10, len(expected)) == b""
            assert os.pread(fd, 10, len(expected) + 12345) == b""
        finally:
            os.close(fd)
        with open(mp / rel, "rb") as f:
            assert f.read() == expected, rel
    assert len(order) == len(data.files)


# --- 6. read-only everywhere --------------------------------------------------------------


@both
@pytest.mark.timeout(60)
def test_modes_owner_and_statvfs(served: tuple[Dataset, Path]) -> None:
    """Modes 0444/0555, the mounting user's; a directory's st_nlink is 2 + its subdirectories
    (in the images, val regrouped), a file's 1; statfs: the files' total size (the root's
    files too) rounded up to its block, the entry count, nothing free, read-only."""
    data, mp = served
    subdirs = collections.Counter(d.rpartition("/")[0] for d in data.dirs)
    for rel, st in {"": os.lstat(mp), **walk(mp)}.items():
        expected = 0o040555 if (rel in data.dirs or rel == "") else 0o100444
        assert st.st_mode == expected, (rel, oct(st.st_mode))
        assert not st.st_mode & 0o111 or stat.S_ISDIR(st.st_mode), rel
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), rel
        links = 2 + subdirs[rel] if stat.S_ISDIR(st.st_mode) else 1
        assert st.st_nlink == links, (rel, st.st_nlink)
    assert os.lstat(mp).st_nlink == 2 + len(SPLITS)
    vfs = os.statvfs(mp)
    assert vfs.f_files == data.entries
    assert vfs.f_namemax == 255
    assert vfs.f_flag & os.ST_RDONLY
    assert vfs.f_bsize == vfs.f_frsize == 4096
    # (meta.bin's bytes are checked against the devkit by test_tree_and_stat_match_unsquashfs)
    total = sum(len(b) for b in data.files.values()) + (mp / "meta.bin").stat().st_size
    assert vfs.f_blocks == -(-total // vfs.f_frsize), (vfs.f_blocks * vfs.f_frsize, total)
    assert vfs.f_bavail == vfs.f_bfree == vfs.f_ffree == vfs.f_favail == 0
    assert "ro," in (mount_line(mp) or "") and " fuse.imagenetfs " in (mount_line(mp) or "")


@pytest.mark.parametrize("served", ["realistic"], indirect=True)
@pytest.mark.timeout(60)
def test_every_write_fails_with_erofs(served: tuple[Dataset, Path], tmp_path: Path) -> None:
    data, mp = served
    rel = data.images[0]
    before = {p: (st.st_mode, st.st_size, st.st_mtime_ns) for p, st in walk(mp).items()}
    out = Mounter(tmp_path).python(WRITES, str(mp / rel), str(mp / rel).rsplit("/", 1)[0])
    assert_all_erofs(out)
    assert {p: (st.st_mode, st.st_size, st.st_mtime_ns) for p, st in walk(mp).items()} == before
    assert (mp / rel).read_bytes() == data.files[rel]
    # and nothing reached the source either
    assert sorted(p.name for p in data.root.iterdir()) == [
        "test.squashfs",
        "test_files.txt",
        "train.squashfs",
        "train_files.txt",
        "val.squashfs",
        "val_files.txt",
        "val_labels.txt",
    ]


@pytest.mark.timeout(60)
def test_data_unchanged_across_remount(mounter: Mounter, realistic: Dataset) -> None:
    mp = mounter.mkdir("mp")
    digests = []
    for _ in range(2):
        mounter.mount(mp, realistic.root, index=realistic.index)
        digests.append({rel: sha((mp / rel).read_bytes()) for rel in sorted(realistic.files)})
        result = mounter.cli("umount", mp)
        assert result.returncode == 0, result.stderr
        assert not is_mounted(mp)
    assert digests[0] == digests[1] == {k: sha(v) for k, v in realistic.files.items()}


# --- 3. killed daemons and stale mounts, as root ------------------------------------------

HOLD_AND_READ = """
import errno, json, os, sys
fd = os.open(json.loads(sys.argv[1]), os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no readahead: the next pread needs the daemon
os.pread(fd, 10, 0)
print('open', flush=True)
sys.stdin.readline()  # the daemon is killed meanwhile
try:
    os.pread(fd, 4096, 8192)
    print(json.dumps('read succeeded'))
except OSError as e:
    print(json.dumps(errno.errorcode[e.errno]))
"""


@contextlib.contextmanager
def reader_holding(path: Path) -> Iterator[Callable[[], str]]:
    """A process that holds `path` open (one read done, readahead off), for as long as the
    block runs; the block gets `read_again()`: one more read of uncached bytes, and the errno
    name it met ('read succeeded' if none)."""
    holder = subprocess.Popen(
        [PY, "-c", HOLD_AND_READ, json.dumps(str(path))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline() == "open\n"

        def read_again() -> str:
            assert holder.stdin is not None
            holder.stdin.write("go\n")
            holder.stdin.flush()
            out, _ = holder.communicate(timeout=20)
            return str(json.loads(out))

        yield read_again
    finally:
        holder.kill()
        holder.wait(timeout=10)


def kill_and_umount_stale(runner: Mounter, mp: Path, pid: int) -> None:
    """SIGKILL the daemon `pid`, then `imagenetfs umount` clears the stale point it leaves."""
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not alive(pid), 10)
    result = runner.cli("umount", mp)
    assert result.returncode == 0, result.stderr
    assert "stale" in result.stdout
    assert not is_mounted(mp)


def check_stale_access(runner: Mounter, mp: Path, rel: str) -> None:
    """Every access to a stale mount point fails promptly, with ENOTCONN unless the kernel
    answers from its cache without asking the daemon."""
    out = runner.python(ACCESS, [str(mp), str(mp / rel)], timeout=20)
    for key, value in out.items():
        if key.startswith("stat "):  # attributes the kernel has cached (timeout: a year)
            assert value in ("ok", "ENOTCONN"), value
        elif key == f"listdir {mp / rel}":  # a file the kernel knows: opendir fails at once
            assert value in ("ENOTDIR", "ENOTCONN"), value
        else:
            assert value == "ENOTCONN", (key, value)


@pytest.mark.timeout(120)
def test_sigkill_leaves_stale_mount_that_mount_and_umount_clear(
    mounter: Mounter, realistic: Dataset
) -> None:
    mp = mounter.mkdir("mp")
    rel = max(realistic.files, key=lambda r: len(realistic.files[r]))
    pid = mounter.mount(mp, realistic.root, index=realistic.index).pid
    with reader_holding(mp / rel) as read_again:
        workers = children(pid)  # (they die with it, a moment later: PR_SET_PDEATHSIG)
        os.kill(pid, signal.SIGKILL)
        # Until the last worker is gone the connection lives, and a read sent to a dying
        # worker gets ECONNABORTED; once all are gone, every read gets ENOTCONN.
        assert wait_until(lambda: not any(alive(p) for p in [pid, *workers]), 10)
        assert read_again() == "ENOTCONN", "a reader of an open file of a killed daemon"
    assert is_mounted(mp), "stale: no auto_unmount after SIGKILL"
    check_stale_access(mounter, mp, rel)
    status = mounter.cli("status", mp)
    assert status.returncode == 0, status
    assert f"{mp}: stale -- its daemon (pid {pid}) died" in status.stdout, status.stdout

    # mount over the stale point: cleared, then mounted and serving
    pid2 = mounter.mount(mp, realistic.root, index=realistic.index).pid
    assert pid2 != pid
    assert (mp / rel).read_bytes() == realistic.files[rel]
    assert [line for line in mount_points() if line == str(mp)] == [str(mp)], "one mount only"

    kill_and_umount_stale(mounter, mp, pid2)
    assert mounter.state(mp) is None
    assert os.listdir(mp) == []


# --- device nodes, fifos, sockets and hard links in an image --------------------------------

SPECIAL = ("chr-null", "blk-loop", "fifo", "socket")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", ["2", "0"])
def test_special_files_are_left_out_and_hard_links_served_apart(
    mounter: Mounter, tmp_path: Path, workers: str
) -> None:
    """A train image made by mksquashfs holding, beside its JPEGs, a character and a block
    device, a fifo, a socket and a JPEG hard-linked under a second name: `index` builds it
    without a word; on the mount the four special files are not there (not listed, ENOENT,
    not in the file lists) and the two names of the hard link are two files, each with the
    image's bytes, each with its own inode number and one link -- as `unsquashfs -lls`
    lists the image."""
    root = tmp_path / "source"
    generate.generate(root, Spec(classes=2, train_per_class=3, val_per_class=1, test=1,
                                 tiny=True, progress=False))  # fmt: skip
    tree = tmp_path / "tree"
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(tree), str(root / "train.squashfs")],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    wnid = sorted(p.name for p in tree.iterdir())[0]
    folder = tree / wnid
    original = sorted(folder.iterdir())[0]
    os.link(original, folder / "linked.JPEG")
    os.mknod(folder / "chr-null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(folder / "blk-loop", stat.S_IFBLK | 0o660, os.makedev(7, 0))
    os.mkfifo(folder / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(folder / "socket"))
    (root / "train.squashfs").unlink()
    subprocess.run(["mksquashfs", str(tree), str(root / "train.squashfs"), "-quiet",
                    "-no-progress"], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    listed = subprocess.run(["unsquashfs", "-lls", "-d", "", str(root / "train.squashfs")],
                            check=True, capture_output=True, text=True).stdout  # fmt: skip
    kinds = {ln.split()[-1].rsplit("/", 1)[-1]: ln[0] for ln in listed.splitlines()
             if f"/{wnid}/" in ln}  # fmt: skip
    assert {kinds[name] for name in SPECIAL} == {"c", "b", "p", "s"}, kinds
    assert kinds["linked.JPEG"] == kinds[original.name] == "-"
    index = tmp_path / "i.lmdb"
    built = mounter.cli("index", "--quiet", "--source", root, "--index", index)
    assert built.returncode == 0 and built.stderr == "", built
    mp = mounter.mkdir("mp")
    mounter.mount(mp, root, "--workers", workers, index=index)
    served = mp / "train" / wnid
    assert sorted(os.listdir(served)) == sorted(n for n, k in kinds.items() if k == "-")
    for name in SPECIAL:
        with pytest.raises(FileNotFoundError):
            os.lstat(served / name)
    first, second = served / original.name, served / "linked.JPEG"
    assert first.read_bytes() == second.read_bytes() == original.read_bytes()
    a, b = os.stat(first), os.stat(second)
    assert a.st_ino != b.st_ino and a.st_nlink == b.st_nlink == 1
    lists = (mp / "train.txt").read_text() + (mp / "train_files.txt").read_text()
    assert f"{wnid}/linked.JPEG" in lists and f"{wnid}/{original.name}" in lists
    assert not any(f"{wnid}/{name}" in lists for name in SPECIAL), lists


# --- 4. signals, umount, foreground -------------------------------------------------------


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name
)
@pytest.mark.timeout(60)
def test_signal_ends_the_daemon_cleanly(
    mounter: Mounter, realistic: Dataset, signum: signal.Signals
) -> None:
    """SIGTERM, SIGINT or SIGHUP to the daemon while a reader holds a file open: it unmounts
    lazily (the open file does not hold it) and exits within seconds, its state file removed,
    its log saying so; the reader's next read fails with ENOTCONN or ECONNABORTED, and a
    later open finds the empty mount point (ENOENT)."""
    mp = mounter.mkdir("mp")
    mounted = mounter.mount(mp, realistic.root, index=realistic.index)
    pid, workers = mounted.pid, children(mounted.pid)
    read = sorted(realistic.files)[-1]
    assert (mp / read).read_bytes() == realistic.files[read]
    rel = max(realistic.files, key=lambda r: len(realistic.files[r]))  # (its pages not cached)
    with reader_holding(mp / rel) as read_again:
        started = time.monotonic()
        os.kill(pid, signum)
        assert wait_until(lambda: not alive(pid) and not is_mounted(mp), 5), "exits within 5 s"
        assert time.monotonic() - started < 5
        assert not any(alive(w) for w in workers)
        said = read_again()
        assert said in ("ENOTCONN", "ECONNABORTED"), said
    assert not mounted.state_path.exists()
    assert os.listdir(mp) == []
    with pytest.raises(FileNotFoundError):
        (mp / rel).open("rb")
    log = mounted.log
    assert f"{signal.Signals(signum).name}: unmounting" in log and f"unmounted {mp}" in log, log
    assert "Traceback" not in log, log


@pytest.mark.timeout(60)
def test_umount_waits_for_the_daemon(mounter: Mounter, realistic: Dataset) -> None:
    mp = mounter.mkdir("mp")
    pid = mounter.mount(mp, realistic.root, index=realistic.index).pid
    state = mounter.state(mp)
    assert state is not None
    (mp / sorted(realistic.files)[0]).read_bytes()
    result = mounter.cli("umount", mp)
    gone = not alive(pid)  # right when umount returned
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"unmounted {mp}"
    assert gone, "umount returned before the daemon exited"
    assert not is_mounted(mp)
    assert not Path(state["state_file"]).exists()


@pytest.mark.timeout(60)
def test_umount_lazy_detaches_a_busy_mount_and_says_what_it_did(
    mounter: Mounter, realistic: Dataset
) -> None:
    """A file held open: a plain `umount` refuses in one line (exit 1), `umount --lazy`
    detaches at once (exit 0, saying the daemon ends when nothing uses it), the open file
    still reads the image's bytes, and the daemon exits when it is closed; `umount --lazy`
    of a point no longer mounted is refused in one line; of a stale mount, clears it."""
    mp = mounter.mkdir("mp")
    mounted = mounter.mount(mp, realistic.root, index=realistic.index)
    rel = max(realistic.files, key=lambda r: len(realistic.files[r]))
    held = os.open(mp / rel, os.O_RDONLY)
    try:
        busy = mounter.cli("umount", mp)
        assert busy.returncode == 1 and is_mounted(mp), busy
        assert busy.stderr == (
            f"imagenetfs: error: {mp} is busy (a process uses it); close it or use --lazy\n"
        )
        lazy = mounter.cli("umount", "--lazy", mp)
        assert lazy.returncode == 0 and lazy.stderr == "", lazy
        assert lazy.stdout == (
            f"detached {mp}; its daemon (pid {mounted.pid}) ends when nothing uses it\n"
        )
        assert not is_mounted(mp) and alive(mounted.pid)
        os.posix_fadvise(held, 0, 0, os.POSIX_FADV_DONTNEED)  # the daemon must serve it
        assert os.pread(held, 1 << 24, 0) == realistic.files[rel]
    finally:
        os.close(held)
    assert wait_until(lambda: not alive(mounted.pid), 15), mounted.log
    assert not mounted.state_path.exists()
    again = mounter.cli("umount", "--lazy", mp)
    assert (again.returncode, again.stdout) == (1, ""), again
    assert again.stderr == f"imagenetfs: error: {mp} is not mounted\n"
    pid = mounter.mount(mp, realistic.root, index=realistic.index).pid
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not alive(pid), 10)
    stale = mounter.cli("umount", "--lazy", mp)
    assert stale.returncode == 0 and not is_mounted(mp), stale
    assert stale.stdout.startswith(f"cleared the stale mount at {mp}"), stale


@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name
)
@pytest.mark.timeout(60)
def test_foreground_mode(mounter: Mounter, realistic: Dataset, signum: signal.Signals) -> None:
    mp = mounter.mkdir("mp")
    mounter.points.append(mp)
    cmd = [CLI, "mount", "-f", "--source", str(realistic.root), "--index", str(realistic.index)]
    proc = subprocess.Popen(
        [*cmd, str(mp)], env=mounter.env(), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    mounter.pids.add(proc.pid)
    try:

        def ready() -> bool:  # mounted by pyfuse3.init(), then the state file, then serving
            return (mounter.state(mp) is not None and is_mounted(mp)) or proc.poll() is not None

        assert wait_until(ready, 30)
        assert proc.poll() is None, "the foreground process serves"
        state = mounter.state(mp)
        assert state is not None and state["pid"] == proc.pid
        rel = sorted(realistic.files)[1]
        assert (mp / rel).read_bytes() == realistic.files[rel]
        proc.send_signal(signum)
        assert proc.wait(timeout=10) == 0
        assert not is_mounted(mp)
        assert not Path(state["state_file"]).exists()
    finally:
        proc.kill()
        proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()


# --- 5. refusals: one line, exit 1 --------------------------------------------------------


def _prepare(case: str, tmp: Path, mounter: Mounter, data: Dataset) -> list[object]:
    empty = tmp / "empty"
    empty.mkdir()
    given = ["--source", data.root, "--index", data.index]
    if case == "mount point's parent missing":
        return ["mount", *given, tmp / "missing" / "mp"]
    if case == "mount point not a directory":
        (tmp / "file").write_text("x")
        return ["mount", *given, tmp / "file"]
    if case == "mount point not empty":
        (empty / "x").write_text("x")
        return ["mount", *given, empty]
    if case == "mount point busy":  # (the same source there would join that mount)
        mounter.mount(empty, data.root, index=data.index)
        return ["mount", "--source", tmp / "elsewhere", empty]
    if case == "umount not mounted":
        return ["umount", empty]
    if case == "umount missing path":
        return ["umount", tmp / "missing"]
    if case == "source missing":
        return ["mount", "--source", tmp / "nowhere", empty]
    if case == "source without images":
        (tmp / "nothing").mkdir()
        return ["mount", "--source", tmp / "nothing", empty]
    if case == "source is a file":
        return ["mount", "--source", data.root / "train.squashfs", empty]
    if case == "corrupt image":
        (tmp / "bad").mkdir()
        (tmp / "bad" / "train.squashfs").write_bytes(b"not squashfs" * 100)
        return ["mount", "--source", tmp / "bad", "--index", tmp / "bad.lmdb", empty]
    if case == "status not mounted":
        return ["status", empty]
    raise AssertionError(case)


REFUSALS = {
    "mount point's parent missing": "does not exist",
    "mount point not a directory": "not a directory",
    "mount point not empty": "not empty",
    "mount point busy": "busy",
    "umount not mounted": "not mounted",
    "umount missing path": "not mounted",
    "source missing": "does not exist",
    "source without images": "no ImageNet found",
    "source is a file": "not a directory",
    "corrupt image": "not a SquashFS image",
    "status not mounted": "not mounted",
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
@pytest.mark.timeout(60)
def test_refusal_is_one_line(
    mounter: Mounter, realistic: Dataset, tmp_path: Path, case: str
) -> None:
    args = _prepare(case, tmp_path, mounter, realistic)
    before = mount_points()
    result = mounter.cli(*args)
    # (a corrupt image is found by the index build that mount begins with, after "indexing ...")
    one_error_line(result, REFUSALS[case], notes=case == "corrupt image")  # (stdout: nothing)
    # (new ones only: a mount that another run left may go away meanwhile)
    assert set(mount_points()) <= set(before), "a refusal mounts nothing"


@pytest.mark.timeout(60)
def test_missing_mount_point_is_created(mounter: Mounter, realistic: Dataset) -> None:
    mp = mounter.work / "new"
    mounter.mount(mp, realistic.root, index=realistic.index)
    assert sorted(os.listdir(mp)) == sorted(SPLITS + ROOT_FILES)
    assert mounter.cli("umount", mp).returncode == 0
    assert mp.is_dir() and os.listdir(mp) == []


@pytest.mark.timeout(60)
def test_bad_mount_point_is_refused_before_indexing(
    mounter: Mounter, realistic: Dataset, tmp_path: Path
) -> None:
    """Indexing full ImageNet takes minutes: a typo in the mount point must not wait for it."""
    index = tmp_path / "new.lmdb"
    result = mounter.cli(
        "mount", "--source", realistic.root, "--index", index, tmp_path / "a" / "b"
    )
    assert one_error_line(result) == (
        f"imagenetfs: error: mount point {tmp_path / 'a' / 'b'}: {tmp_path / 'a'} does not "
        "exist; create it, or give another MOUNTPOINT"
    )
    assert "indexing" not in result.stderr
    assert not index.exists()


# --- 7. status ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_status_lists_source_pid_and_counters(mounter: Mounter, realistic: Dataset) -> None:
    mp = mounter.mkdir("mp")
    relative = realistic.root.parent  # a relative --source
    pid = mounter.mount(mp, realistic.root, index=realistic.index, cwd=relative).pid
    result = mounter.cli("status")
    assert result.returncode == 0, result.stderr
    assert f"{mp}: serving" in result.stdout
    assert f"source {realistic.root}" in result.stdout
    assert f"index {realistic.index}" in result.stdout
    assert f"pid {pid}" in result.stdout
    for rel in sorted(realistic.files)[:5]:  # (as `cp` reads: no IOCTL, no file pushed)
        with open(mp / rel, "rb", buffering=0) as f:
            f.readall()

    def counters() -> str:
        """The status once its counters show the reads (published every 2 s)."""
        out = mounter.cli("status", mp).stdout
        reads = re.search(r"\breads ([\d,]+)", out)
        return out if reads and int(reads.group(1).replace(",", "")) >= 5 else ""

    assert wait_until(lambda: bool(counters()), 8, interval=0.5), "counters published"
    out = counters()
    assert f"index {realistic.index}" in out, out
    assert mounter.cli("umount", mp).returncode == 0
    assert mounter.cli("status").stdout.strip() == "no imagenetfs mounts"


# --- 8. the built-in sample ---------------------------------------------------------------


@pytest.mark.skipif(os.path.exists("/data/imagenet"), reason="/data/imagenet exists here")
@pytest.mark.timeout(120)
def test_first_mount_generates_the_sample_with_one_notice(mounter: Mounter) -> None:
    mp = mounter.mkdir("mp")
    mounter.points.append(mp)
    result = mounter.cli("mount", mp, timeout=100)
    assert result.returncode == 0, result.stderr
    state = mounter.state(mp)
    assert state is not None
    mounter.pids.add(state["pid"])
    sample = mounter.work / "cache" / "imagenetfs" / "sample"
    notices = [line for line in result.stderr.splitlines() if "built-in sample" in line]
    assert notices == [
        f"imagenetfs: no ImageNet at /data/imagenet; serving the built-in sample from {sample}"
    ], result.stderr
    assert (sample / "train.squashfs").is_file()
    ls = subprocess.run(
        f"ls {mp}/train | head", shell=True, capture_output=True, text=True, timeout=20
    )
    assert ls.stdout.split() == list(synsets.wnids()[: generate.SAMPLE.classes])
    assert all(re.fullmatch(r"n\d{8}", w) for w in ls.stdout.split())
    assert sorted(os.listdir(mp)) == sorted(SPLITS + ROOT_FILES)


# --- 2. an unprivileged user --------------------------------------------------------------


@pytest.fixture
def fuse_conf() -> Iterator[Callable[[bool], None]]:
    """Set or clear `user_allow_other` in /etc/fuse.conf; the file is restored byte for byte."""
    path = Path("/etc/fuse.conf")
    original = path.read_bytes() if path.exists() else None
    lines = [] if original is None else original.decode().splitlines()
    kept = [line for line in lines if line.strip() != "user_allow_other"]

    def allow(on: bool) -> None:
        path.write_text("\n".join([*kept, *(["user_allow_other"] if on else [])]) + "\n")

    yield allow
    if original is None:
        path.unlink(missing_ok=True)
    else:
        path.write_bytes(original)


@pytest.mark.timeout(120)
def test_unprivileged_user_mounts_reads_and_unmounts(
    users: Users, user: Mounter, realistic: Dataset
) -> None:
    mp = user.mkdir("mp-plain")
    pid = user.mount(mp, realistic.root).pid  # a user builds its own index
    line = mount_line(mp) or ""
    assert f"user_id={users.uid}," in line and "allow_other" not in line, line

    rels = sorted(realistic.files)
    image = realistic.images[0]
    out = user.python(READ_FILES, [str(mp / r) for r in rels])
    assert_reads(out, mp, realistic, rels, users.uid)
    # the index was built as this user, in its own cache
    assert list((user.work / "cache" / "imagenetfs").glob("index-*.lmdb"))

    writes = user.python(WRITES, str(mp / image), str(mp / image).rsplit("/", 1)[0])
    assert_all_erofs(writes)

    # without allow_other, nobody else gets in: not another user, and not even root
    probe = [str(mp), str(mp / rels[0])]
    expected = {f"{op} {p}": "EACCES" for op in ("listdir", "stat", "open") for p in probe}
    # ... except statfs of the mount point: the kernel answers it with zeros, no error
    expected |= {f"statvfs {mp}": "ok", f"statvfs {mp / rels[0]}": "EACCES"}
    assert users.other.python(ACCESS, probe) == expected
    for call in (os.stat, os.listdir):
        with pytest.raises(PermissionError):
            call(mp)
    vfs = os.statvfs(mp)
    assert (vfs.f_files, vfs.f_blocks, vfs.f_namemax) == (0, 0, 0), vfs

    status = user.cli("status")
    assert f"{mp}: serving" in status.stdout and f"pid {pid}" in status.stdout

    result = user.cli("umount", mp)
    assert result.returncode == 0, result.stderr
    assert not alive(pid)
    assert not is_mounted(mp)


@pytest.mark.timeout(120)
def test_allow_other_lets_another_user_read(
    users: Users, user: Mounter, realistic: Dataset, fuse_conf: Callable[[bool], None]
) -> None:
    mp = user.mkdir("mp-shared")
    fuse_conf(False)
    refused = user.cli("mount", "--allow-other", "--source", realistic.root, mp)
    assert "user_allow_other" in one_error_line(refused)
    assert not is_mounted(mp)

    fuse_conf(True)
    pid = user.mount(mp, realistic.root, "--allow-other").pid
    assert "allow_other" in (mount_line(mp) or "")
    rels = sample_files(realistic, 10)
    image = realistic.images[-1]
    out = users.other.python(READ_FILES, [str(mp / r) for r in rels])
    assert_reads(out, mp, realistic, rels, users.uid)  # owner: the mounting user
    assert (mp / rels[0]).read_bytes() == realistic.files[rels[0]]  # root too
    writes = users.other.python(WRITES, str(mp / image), str(mp / image).rsplit("/", 1)[0])
    assert_all_erofs(writes)

    assert user.cli("umount", mp).returncode == 0
    assert not alive(pid) and not is_mounted(mp)


@pytest.mark.timeout(120)
def test_unprivileged_stale_mount_is_cleared(user: Mounter, realistic: Dataset) -> None:
    mp = user.mkdir("mp-stale")
    rel = sorted(realistic.files)[0]
    pid = user.mount(mp, realistic.root).pid
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not alive(pid), 10)
    assert is_mounted(mp), "libfuse 3.14: no auto_unmount for users after SIGKILL"
    check_stale_access(user, mp, rel)

    pid2 = user.mount(mp, realistic.root).pid  # clears the stale point first
    out = user.python(READ_FILES, [str(mp / rel)])
    assert out[str(mp / rel)][0] == sha(realistic.files[rel])

    kill_and_umount_stale(user, mp, pid2)
