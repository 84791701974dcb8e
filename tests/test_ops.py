"""The operation core (ops.py) without FUSE: every operation and every errno, called directly.

Both ways of serving answer through this core, so what is pinned here holds for both; the
adapters' own tests (tests/test_wire.py, and the mounts of tests/test_mount.py and
tests/test_reliability.py) only check that they convert faithfully. The source is
`helpers.small_source`: real SquashFS images from `mksquashfs`, its staging tree the oracle.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import SMALL_WNIDS, SmallSource, small_source

from imagenetfs import ops, protocol, source
from imagenetfs.errors import (
    Answer,
    CorruptImageError,
    ImagenetfsError,
    NoSuchEntry,
    ReadOnly,
    errno_of,
)
from imagenetfs.index import DIR, DTYPE, FILE, ROOT_INO, SYMLINK, Index, build
from imagenetfs.ops import TIMEOUT, Blocked, Core, Counters
from imagenetfs.views.resize import ResizeCache, ResizeError, parse_spec, resize
from imagenetfs.views.tree import RESIZED_INO, VIEW_SHIFT, Tree

pytestmark = pytest.mark.skipif(
    shutil.which("mksquashfs") is None, reason="needs mksquashfs (squashfs-tools)"
)

UID, GID = 1234, 5678


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> SmallSource:
    return small_source(tmp_path_factory.mktemp("small"))


@pytest.fixture
def index(small: SmallSource) -> Iterator[Index]:
    with Index.open(small.index) as ix:
        yield ix


def core_of(index: Index, *specs: str, **options: object) -> Core:
    tree = Tree(index, [parse_spec(s) for s in specs])
    return Core(tree, uid=UID, gid=GID, **options)  # type: ignore[arg-type]


def path_of(core: Core, path: str, at: int = ROOT_INO) -> ops.Attributes:
    """Attributes of `path` (components looked up one by one from `at`), resizing if asked."""
    attrs = core.getattr(at)
    for name in path.split("/"):
        try:
            attrs = core.lookup(attrs.ino, name.encode())
        except Blocked as blocked:
            attrs = blocked.work()
    return attrs


def answer(call: Callable[[], object]) -> int | str:
    """The errno `call` answers with (by `errno_of`), or "ok"."""
    try:
        call()
    except Exception as exc:
        return errno.errorcode[errno_of(exc)]
    return "ok"


def listing(core: Core, ino: int, offset: int = 0) -> list[ops.Listed]:
    return list(core.readdir(ino, offset))


def walk(core: Core, ino: int = ROOT_INO, prefix: str = "") -> dict[str, ops.Listed]:
    found = {}
    for entry in listing(core, ino, 2):
        path = prefix + entry.name.decode()
        found[path] = entry
        if entry.kind == DIR:
            found |= walk(core, entry.ino, path + "/")
    return found


# --- metadata -----------------------------------------------------------------------------


def test_tree_sizes_modes_and_owner_match_the_images(index: Index, small: SmallSource) -> None:
    core = core_of(index)
    served = small.served()
    entries = walk(core)
    files = {p for p, e in entries.items() if e.kind == FILE}
    assert files == set(served) | {
        "meta.bin", "LOC_synset_mapping.txt", "train.txt", "val.txt", "test.txt",
        "train_files.txt", "val_files.txt", "test_files.txt",
    }  # fmt: skip
    link = f"train/{SMALL_WNIDS[0]}/link.JPEG"
    assert entries[link].kind == SYMLINK
    for path, data in served.items():
        attrs = core.getattr(entries[path].ino)
        assert attrs == path_of(core, path)
        assert (attrs.size, attrs.mode, attrs.nlink) == (len(data), 0o100444, 1), path
        assert (attrs.uid, attrs.gid, attrs.timeout) == (UID, GID, TIMEOUT)
        assert attrs.blocks * 512 >= attrs.size
    root = core.getattr(ROOT_INO)
    assert (root.mode, root.nlink) == (0o040555, 2 + 3), "2 + its subdirectories"
    assert core.lookup(ROOT_INO, b".") == root == core.lookup(ROOT_INO, b"..")
    train = path_of(core, "train")
    assert core.lookup(train.ino, b"..") == root
    assert core.lookup(train.ino, b".") == train
    assert core.readlink(entries[link].ino) == f"{SMALL_WNIDS[0]}_1.JPEG".encode()
    assert core.getattr(entries[link].ino).mode == 0o120777


def test_stored_lookup_answers_as_lookup_does(index: Index) -> None:
    """The workers' fast path (`stored_lookup`, off the index record) gives what `lookup`
    gives for every entry of the base tree, counted once; it leaves the dots, `resized`, the
    views' directories, missing names and non-directories to `lookup`."""
    for specs in ((), ("64",)):
        core = core_of(index, *specs)
        entries = walk(core)
        parents = {
            path_of(core, p).ino if p else ROOT_INO for p in {e.rpartition("/")[0] for e in entries}
        }
        assert len(parents) > 3 + len(SMALL_WNIDS), "every directory, not only a few"
        checked = 0
        for path, entry in entries.items():
            parent = path_of(core, path.rpartition("/")[0]).ino if "/" in path else ROOT_INO
            before = core.counters.values[ops.LOOKUPS]
            fast = core.stored_lookup(parent, entry.name)
            if path.startswith("resized"):
                assert fast is None, path
                continue
            assert core.counters.values[ops.LOOKUPS] == before + 1
            assert fast == path_of(core, path), path
            checked += 1
        assert checked == len([p for p in entries if not p.startswith("resized")])
        view_root = (1 << VIEW_SHIFT) | ROOT_INO
        for parent, name in [
            (ROOT_INO, b"."), (ROOT_INO, b".."), (ROOT_INO, b"missing"),
            (path_of(core, "meta.bin").ino, b"x"), (10**6, b"train"), (view_root, b"train"),
            (ROOT_INO, b"resized"), (0, b"train"), (1 << 40, b"train"),
        ]:  # fmt: skip
            before = core.counters.values[ops.LOOKUPS]
            assert core.stored_lookup(parent, name) is None, (parent, name)
            assert core.counters.values[ops.LOOKUPS] == before, "not counted: lookup will"


def test_every_errno(index: Index) -> None:
    core = core_of(index, "64x64")
    f = path_of(core, f"train/{SMALL_WNIDS[0]}/{SMALL_WNIDS[0]}_1.JPEG").ino
    d = path_of(core, "train").ino
    link = path_of(core, f"train/{SMALL_WNIDS[0]}/link.JPEG").ino
    view_beyond = (9 << VIEW_SHIFT) | ROOT_INO
    cases = {
        "lookup missing": (lambda: core.lookup(d, b"missing"), "ENOENT"),
        "lookup under a file": (lambda: core.lookup(f, b"x"), "ENOTDIR"),
        "lookup in an unknown inode": (lambda: core.lookup(10**6, b"x"), "ENOENT"),
        "getattr unknown": (lambda: core.getattr(10**6), "ENOENT"),
        "getattr of a view that is not there": (lambda: core.getattr(view_beyond), "ENOENT"),
        "getattr 0": (lambda: core.getattr(0), "ENOENT"),
        "readlink of a file": (lambda: core.readlink(f), "EINVAL"),
        "readlink of a symlink": (lambda: core.readlink(link), "ok"),
        "opendir of a file": (lambda: core.opendir(f), "ENOTDIR"),
        "opendir for writing": (lambda: core.opendir(d, os.O_WRONLY), "EROFS"),
        "opendir": (lambda: core.opendir(d), "ok"),
        "readdir of a file": (lambda: core.readdir(f, 0), "ENOTDIR"),
        "readdir unknown": (lambda: core.readdir(10**6, 0), "ENOENT"),
        "open a directory": (lambda: core.open(d, os.O_RDONLY), "EISDIR"),
        "open a symlink": (lambda: core.open(link, os.O_RDONLY), "EINVAL"),
        "open": (lambda: core.open(f, os.O_RDONLY), "ok"),
        "read a directory": (lambda: core.read(d, 0, 10), "EISDIR"),
        "read unknown": (lambda: core.read(10**6, 0, 10), "ENOENT"),
        "access R_OK": (lambda: core.access(f, os.R_OK), "ok"),
        "access W_OK": (lambda: core.access(f, os.W_OK), "EROFS"),
        "access unknown": (lambda: core.access(10**6, os.R_OK), "ENOENT"),
        "getxattr": (lambda: core.getxattr(f, b"user.x"), "ENODATA"),
        "getxattr unknown": (lambda: core.getxattr(10**6, b"user.x"), "ENOENT"),
        "listxattr": (lambda: core.listxattr(f), "ok"),
        "ioctl": (lambda: core.ioctl(f), "ENOTTY"),
    }
    for flag in ("O_WRONLY", "O_RDWR", "O_APPEND", "O_CREAT", "O_TRUNC"):
        cases[f"open {flag}"] = (lambda flag=flag: core.open(f, getattr(os, flag)), "EROFS")
    assert {name: answer(call) for name, (call, _) in cases.items()} == {
        name: expected for name, (_, expected) in cases.items()
    }
    assert core.listxattr(f) == []
    assert core.counters.values[ops.ERRORS] == 0, "answers are not errors"


def test_readdir_cookies_and_stored_listings(index: Index) -> None:
    core = core_of(index)
    for directory in ("train", f"train/{SMALL_WNIDS[0]}", "val"):
        attrs = path_of(core, directory)
        full = listing(core, attrs.ino)
        assert [e.name for e in full[:2]] == [b".", b".."]
        assert [e.cookie for e in full] == list(range(1, len(full) + 1))
        assert full[0].ino == attrs.ino and full[1].ino == core.lookup(attrs.ino, b"..").ino
        names = [e.name for e in full[2:]]
        assert names == sorted(names)
        for entry in full[2:]:
            assert core.lookup(attrs.ino, entry.name).ino == entry.ino
        for k in range(len(full) + 2):  # resuming after every cookie gives the rest
            assert listing(core, attrs.ino, k) == full[k:]
            built = b"".join(
                protocol.dirent(e.ino, e.cookie, DTYPE[e.kind], e.name) for e in full[max(k, 2) :]
            )
            assert core.stored_listing(attrs.ino, max(k, 2), 1 << 20) == built
        records = core.stored_listing(attrs.ino, 2, 100)  # room for two short records only
        assert records is not None and 0 < len(records) <= 100


def test_read_inline_or_blocked(index: Index, small: SmallSource) -> None:
    """A read that needs no waiting is answered at once; one that must decompress a block not
    yet cached raises `Blocked`, whose work gives the bytes; once the block is cached, the
    same read is inline."""
    core = core_of(index)
    served = small.served()
    rel = f"train/{SMALL_WNIDS[1]}/{SMALL_WNIDS[1]}_3.JPEG"
    ino = path_of(core, rel).ino
    data = served[rel]
    with pytest.raises(Blocked) as info:
        core.read(ino, 0, len(data))  # gzip: a block to inflate, not in the block cache yet
    assert info.value.key is None
    assert info.value.work() == data
    assert core.read(ino, 0, len(data)) == data, "now from the block cache, inline"
    assert core.read(ino, 100, 50) == data[100:150]
    assert core.read(ino, len(data), 10) == b"" == core.read(ino, len(data) + 10**6, 10)
    counts = core.statistics()["fs"]
    assert counts["reads"] == 5 and counts["inline_reads"] == 2
    blocking = core_of(index, blocking_reads=True)  # a worker process: never Blocked
    for rel, data in served.items():
        ino = path_of(blocking, rel).ino
        assert blocking.read(ino, 0, len(data) + 1) == data, rel


def test_statfs(index: Index) -> None:
    stats = core_of(index).statfs()
    assert stats.block_size == ops.BLOCK_SIZE == 4096
    assert stats.files == index.stats.entries
    assert stats.blocks == -(-index.stats.bytes // 4096)
    assert stats.name_max == 255


# --- errors: the one rule ------------------------------------------------------------------


def test_failures_are_eio_counted_and_logged_once(
    small: SmallSource, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real failure -- an image truncated under the index -- answers EIO with one log line
    naming the problem; an answer is neither logged nor counted; a bug is EIO with its
    traceback."""
    root = tmp_path / "copy"
    shutil.copytree(small.root, root)
    src = source.open_source(root)
    built = tmp_path / "index.lmdb"
    build(built, src.image_list, src.placer(), virtual=src.virtual_files, progress=False)
    served = small.served()
    rel = max(r for r in served if r.startswith("train/") and r.endswith("_1.JPEG"))
    with Index.open(built) as ix:
        core = core_of(ix, blocking_reads=True)
        ino = path_of(core, rel).ino
        os.truncate(root / "train.squashfs", 100)  # its data is gone; the index is not
        caplog.set_level(logging.ERROR, logger="imagenetfs.ops")
        with pytest.raises(CorruptImageError) as info:
            core.read(ino, 0, len(served[rel]))
        assert core.errno_for(info.value, "read", ino) == errno.EIO
        assert core.errno_for(NoSuchEntry(ino), "lookup", ino) == errno.ENOENT
        assert core.errno_for(ReadOnly(ino), "open", ino) == errno.EROFS
        assert core.errno_for(OSError(errno.EIO, "Input/output error"), "read", ino) == errno.EIO
        assert core.errno_for(ValueError("a bug"), "read", ino) == errno.EIO
    records = [(r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert len(records) == 3, records
    assert "truncated" in records[0][0] and not records[0][1], "one line, no traceback"
    assert "Input/output error" in records[1][0] and not records[1][1]
    assert "failed" in records[2][0] and records[2][1], "a bug keeps its traceback"
    assert core.counters.values[ops.ERRORS] == 3


def test_errno_of_every_exception() -> None:
    for answer_type in Answer.__subclasses__():
        assert errno_of(answer_type("x")) == answer_type.errno != errno.EIO
    for failure in (ImagenetfsError("x"), CorruptImageError("x"), ResizeError("x"),
                    OSError(errno.ENOENT, "x"), KeyError("x")):  # fmt: skip
        assert errno_of(failure) == errno.EIO


# --- resized views ---------------------------------------------------------------------------


def test_view_files_are_resized_once_then_known(
    index: Index, small: SmallSource, tmp_path: Path
) -> None:
    served = small.served()
    cache = ResizeCache(tmp_path / "cache", 64 << 20)
    core = core_of(index, "64x64", "100", cache=cache)
    view = path_of(core, "resized/64x64")
    assert view.ino == (1 << VIEW_SHIFT) | ROOT_INO
    assert core.lookup(RESIZED_INO, b"64x64") == view
    rel = f"train/{SMALL_WNIDS[0]}/{SMALL_WNIDS[0]}_2.JPEG"
    expected = resize(served[rel], parse_spec("64x64"))
    directory = path_of(core, rel.rsplit("/", 1)[0], view.ino)
    listed = {e.name: e for e in listing(core, directory.ino)}
    before = core.listed_attributes(listed[rel.rsplit("/", 1)[1].encode()])
    assert (before.size, before.timeout) == (len(served[rel]), 0), "not known: not cached"
    with pytest.raises(Blocked) as info:
        core.lookup(directory.ino, rel.rsplit("/", 1)[1].encode())
    file_ino = info.value.key
    assert file_ino is not None and file_ino >> VIEW_SHIFT == 1
    attrs = info.value.work()
    assert (attrs.ino, attrs.size, attrs.timeout) == (file_ino, len(expected), TIMEOUT)
    assert core.getattr(file_ino) == attrs, "known now: no Blocked"
    assert core.listed_attributes(listed[rel.rsplit("/", 1)[1].encode()]) == attrs
    core.open(file_ino, os.O_RDONLY)
    assert core.read(file_ino, 0, 1 << 20) == expected
    assert core.read(file_ino, 10, 20) == expected[10:30]
    assert core.statistics()["fs"]["resizes"] == 1
    assert core.statistics()["resize_cache"]["stores"] == 1

    fresh = core_of(index, "64x64", "100", cache=cache)  # another process, the same cache
    assert fresh.getattr(file_ino).size == len(expected), "the size from the cache, at once"
    with pytest.raises(Blocked) as info:
        fresh.read(file_ino, 0, 100)
    assert info.value.work() == expected[:100]
    assert fresh.statistics()["fs"]["resizes"] == 0
    cache.close()


def test_only_images_are_resized(index: Index, small: SmallSource) -> None:
    """In a view, files that do not look like images, symlinks and the root files are served
    as stored; a broken JPEG and one over the size bound fail with EIO (ResizeError)."""
    served = small.served()
    core = core_of(index, "64x64", blocking_reads=True)
    view = path_of(core, "resized/64x64").ino
    notes = f"train/{SMALL_WNIDS[0]}/notes.txt"
    for rel in (notes, "meta.bin", "train.txt"):
        base, attrs = path_of(core, rel), path_of(core, rel, view)
        assert (attrs.size, attrs.timeout) == (base.size, TIMEOUT), rel
        assert core.read(attrs.ino, 0, 1 << 20) == core.read(base.ino, 0, 1 << 20), rel
    assert core.read(path_of(core, notes, view).ino, 0, 1 << 20) == served[notes]
    link = path_of(core, f"train/{SMALL_WNIDS[0]}/link.JPEG", view)
    assert core.readlink(link.ino) == f"{SMALL_WNIDS[0]}_1.JPEG".encode()
    for name, problem in (("broken.JPEG", "cannot resize"), ("big.JPEG", "more than")):
        parent = path_of(core, f"train/{SMALL_WNIDS[0]}", view).ino
        with pytest.raises(Blocked) as info:
            core.lookup(parent, name.encode())
        with pytest.raises(ResizeError, match=problem) as failed:
            info.value.work()
        assert errno_of(failed.value) == errno.EIO
    assert core.statistics()["fs"]["resizes"] == 0


def test_memos_are_bounded_and_thread_safe() -> None:
    memo: ops._Memo[int] = ops._Memo(3)
    for key in range(10):
        memo.put(key, key * 2)
        assert len(memo) <= 3
    assert [memo.get(k) for k in range(10)] == [None] * 7 + [14, 16, 18], "oldest out first"

    def fill(first: int) -> None:
        for key in range(first, first + 2000):
            memo.put(key, key)
            memo.get(key - 1)

    threads = [threading.Thread(target=fill, args=(n * 10_000,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(memo) == 3


def test_a_cached_size_is_learnt_without_copying_the_bytes(tmp_path: Path) -> None:
    cache = ResizeCache(tmp_path / "cache", 64 << 20)
    try:
        value = os.urandom(4 << 20)
        cache.put(b"k" * 20, value)
        tracemalloc.start()
        try:
            assert cache.size_of(b"k" * 20) == len(value)
            size_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            assert cache.get(b"k" * 20) == value
            get_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert size_peak < 64 << 10 and get_peak >= len(value), (size_peak, get_peak)
        assert cache.size_of(b"missing") is None
        assert cache.statistics()["hits"] == 2 and cache.statistics()["misses"] == 1
    finally:
        cache.close()


def test_counters_in_shared_memory_go_on_from_their_slot(index: Index) -> None:
    memory = memoryview(bytearray(8 * Counters.SLOTS)).cast("Q")
    core = core_of(index, counters=Counters(memory))
    core.getattr(ROOT_INO)
    core.lookup(ROOT_INO, b"train")
    assert memory[ops.GETATTRS] == 1 and memory[ops.LOOKUPS] == 1
    again = core_of(index, counters=Counters(memory))  # a worker started again
    again.getattr(ROOT_INO)
    assert memory[ops.GETATTRS] == 2
    stats = again.statistics()
    assert set(stats) == {"fs", "block_cache", "read_latency", "index"}
    assert set(stats["fs"]) == set(ops.FS_COUNTERS)
    assert stats["index"]["entries"] == index.stats.entries


def test_names_that_sort_before_the_dots_are_the_entries_they_name(tmp_path: Path) -> None:
    """A name below `.` in byte order (`-1.txt`, `(copy).txt`, `+`, `!`, `#d`, a leading
    space...) is looked up as the entry it names, in the base tree and in a view (where the
    workers answer every lookup with `lookup`, as pyfuse3 does everywhere) -- never as the
    directory it is looked up in, which only `.` is."""
    staging = tmp_path / "train"
    files = {name: f"{name}\n".encode() * 3 for name in
             ("-1.txt", "(copy).txt", "+", "!", " lead.txt", "-", ",x", "$", "'q'")}  # fmt: skip
    for name, data in files.items():
        (staging / "d").mkdir(parents=True, exist_ok=True)
        (staging / "d" / name).write_bytes(data)
    (staging / "#d").mkdir()
    assert all(name.encode() < b"." for name in [*files, "#d"])
    image = tmp_path / "train.squashfs"
    subprocess.run(["mksquashfs", str(staging), str(image), "-quiet", "-no-progress",
                    "-all-root"], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    build(tmp_path / "index.lmdb", [image], progress=False)
    with Index.open(tmp_path / "index.lmdb") as ix:
        core = core_of(ix, "64x64", blocking_reads=True)
        for at in (ROOT_INO, path_of(core, "resized/64x64").ino):
            top = path_of(core, "train", at)
            d = path_of(core, "train/d", at)
            for name, data in files.items():
                attrs = core.lookup(d.ino, name.encode())
                assert attrs.ino != d.ino and attrs.mode == 0o100444, (at, name)
                assert attrs.size == len(data), (at, name)
                assert core.read(attrs.ino, 0, 1 << 10) == data, (at, name)
            sub = core.lookup(top.ino, b"#d")
            assert sub.ino not in (top.ino, d.ino) and sub.mode == 0o040555
            assert core.lookup(d.ino, b".") == d and core.lookup(d.ino, b"..") == top


@pytest.mark.parametrize("sizes", [(), (0,), (1,), (4095,), (4096,), (4096, 4096), (4097, 8191)])
def test_statfs_counts_the_files_bytes_in_whole_blocks(
    tmp_path: Path, sizes: tuple[int, ...]
) -> None:
    """statfs (what `df` shows) answers the files' total size in 4 KiB blocks rounded up: an
    exact multiple of 4096 takes no block more, one byte over takes one more."""
    staging = tmp_path / "train"
    staging.mkdir()
    (staging / "d").mkdir()
    for n, size in enumerate(sizes):
        (staging / f"f{n}").write_bytes(os.urandom(size))
    image = tmp_path / "train.squashfs"
    subprocess.run(["mksquashfs", str(staging), str(image), "-quiet", "-no-progress",
                    "-all-root"], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    build(tmp_path / "index.lmdb", [image], progress=False)
    with Index.open(tmp_path / "index.lmdb") as ix:
        stats = core_of(ix).statfs()
    assert stats.blocks * 4096 >= sum(sizes) > (stats.blocks - 1) * 4096
    assert (stats.files, stats.block_size) == (len(sizes) + 3, 4096), "root, train, d, files"


def test_views_are_listed_and_climbed_within_themselves(index: Index) -> None:
    """With views, the root lists `resized` once, last, from every resume cookie, and
    `resized` lists one directory per spec; inside a view, `..` -- looked up, and as listed --
    is the view's own directory above, never the base tree's: a view root's is `resized`,
    whose is the root."""
    core = core_of(index, "64x64", "100")
    root = listing(core, ROOT_INO)
    assert [e.name for e in root].count(b"resized") == 1 and root[-1].name == b"resized"
    assert root[-1].ino == RESIZED_INO
    for k in range(len(root) + 2):
        assert listing(core, ROOT_INO, k) == root[k:], k
    assert [e.name for e in listing(core, RESIZED_INO, 2)] == [b"64x64", b"100"]
    assert core.lookup(RESIZED_INO, b"..") == core.getattr(ROOT_INO)
    for number, spec in enumerate(("64x64", "100"), 1):
        view = path_of(core, f"resized/{spec}")
        assert view.ino == (number << VIEW_SHIFT) | ROOT_INO
        assert core.lookup(view.ino, b"..").ino == RESIZED_INO == listing(core, view.ino)[1].ino
        for above, directory in (("", "train"), ("train", f"train/{SMALL_WNIDS[0]}"), ("", "val")):
            d = path_of(core, directory, view.ino)
            parent = path_of(core, above, view.ino) if above else view
            assert d.ino >> VIEW_SHIFT == number and parent.ino >> VIEW_SHIFT == number
            assert core.lookup(d.ino, b"..") == parent, (spec, directory)
            assert listing(core, d.ino)[1].ino == parent.ino, (spec, directory)
