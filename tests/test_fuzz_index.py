"""Hostile input through the index builder and the whole path to a mount (issue 7, part 3).

tests/test_squashfs.py already fuzzes the SquashFS reader alone (random byte mutations) and
pins crafted images at the reader level: names with `/`, `..`, `.` or NUL, directory loops,
inodes claiming a terabyte, fragment and block pointers out of range, absurd counts. This
module adds:

- a hypothesis fuzz target over `imagenetfs.index.build` (what `imagenetfs index` and the
  first `mount` run): small generated images with mutated or truncated bytes, gzip and
  uncompressed metadata, train/val/test; the build either succeeds -- and then every entry
  of the index has a valid name and every file reads or fails with `CorruptImageError` -- or
  raises an `ImagenetfsError` subclass (one clean line for the CLI). Nothing else: no
  `struct.error`, `IndexError`, `KeyError`, `MemoryError`, hang or crash;
- crafted images and label files through the CLI: `imagenetfs index` and `imagenetfs mount`
  refuse them with one line, and nothing gets mounted.

Longer fuzz runs (not CI), e.g. 100,000 examples:

    IMAGENETFS_FUZZ_EXAMPLES=100000 /opt/imagenetfs/venv/bin/python -m pytest \\
        tests/test_fuzz_index.py -k mutated -p no:cacheprovider

(the test's timeout grows with the count). A coverage-guided harness for the reader is
`scripts/fuzz_reader.py` (atheris, where `pip install atheris` works).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import pytest
from helpers import Mounter, fuse_unusable, mount_points, one_error_line
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from imagenetfs import generate, index, source
from imagenetfs.errors import CorruptImageError, ImagenetfsError
from imagenetfs.generate import Spec

pytestmark = pytest.mark.skipif(
    shutil.which("mksquashfs") is None or shutil.which("unsquashfs") is None,
    reason="needs mksquashfs and unsquashfs (squashfs-tools)",
)

CLI = str(Path(sys.executable).with_name("imagenetfs"))
EXAMPLES = int(os.environ.get("IMAGENETFS_FUZZ_EXAMPLES", "100"))
SPLITS = ("train", "val", "test")
TINY = Spec(classes=2, train_per_class=3, val_per_class=2, test=2, tiny=True, jobs=1,
            progress=False)  # fmt: skip
#: metadata compressed (gzip) or stored as is (-noI: mutations hit the records themselves)
VARIANTS = {"gzip": (), "noI": ("-noI", "-noX"), "plain": ("-noI", "-noD", "-noF", "-noX")}
_SUPERBLOCK = struct.Struct("<5I6H8Q")
_TABLES = ("root_inode", "bytes_used", "id_table_start", "xattr_table_start",
           "inode_table_start", "directory_table_start")  # fmt: skip


def superblock(data: bytes | bytearray) -> dict[str, int]:
    """The superblock's u64 fields that the tests need, by name."""
    return dict(zip(_TABLES, _SUPERBLOCK.unpack_from(data)[11:17], strict=True))


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("fuzz-sources")
    out = {}
    for name, args in VARIANTS.items():
        out[name] = base / name
        generate.generate(out[name], Spec(**{**TINY.__dict__, "mksquashfs_args": args}))
    return out


def build(root: Path, index_path: Path) -> index.IndexStats:
    """What `imagenetfs index` does."""
    src = source.open_source(root)
    return index.build(
        index_path,
        src.image_list,
        src.placer(),
        source=str(root),
        virtual=src.virtual_files,
        progress=False,
    )


def check_index(path: Path) -> int:
    """Walk a built index: valid names only; every file reads or is reported corrupt.
    Returns how many files failed to read."""
    failed = 0
    with index.Index.open(path) as ix:
        stack = [index.ROOT_INO]
        while stack:
            for node in ix.readdir(stack.pop()):
                assert 0 < len(node.name) <= 255 and node.name not in (b".", b"..")
                assert b"/" not in node.name and b"\0" not in node.name
                if node.kind == index.DIR:
                    stack.append(node.ino)
                elif node.kind == index.FILE:
                    try:
                        data = ix.read(node, 0, node.size)
                        assert len(data) == node.size
                    except CorruptImageError:
                        failed += 1
    return failed


@pytest.mark.timeout(max(600, EXAMPLES * 3))
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_mutated_image_indexes_or_refuses_cleanly(
    sources: dict[str, Path], data: st.DataObject
) -> None:
    variant = data.draw(st.sampled_from(sorted(VARIANTS)), label="variant")
    split = data.draw(st.sampled_from(SPLITS), label="split")
    original = (sources[variant] / f"{split}.squashfs").read_bytes()
    sb = superblock(original)
    used, metadata = sb["bytes_used"], sb["inode_table_start"]
    mutated = bytearray(original)
    for _ in range(data.draw(st.integers(0, 8), label="mutations")):
        low = data.draw(st.sampled_from([0, metadata, metadata]))  # mostly the metadata
        pos = data.draw(st.integers(low, used - 1))
        mutated[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans(), label="truncate"):
        del mutated[data.draw(st.integers(0, len(mutated) - 1)) :]
    if mutated == original:
        mutated[data.draw(st.integers(metadata, used - 1))] ^= 0xFF

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in [f"{s}.squashfs" for s in SPLITS if s != split] + ["val_labels.txt"]:
            os.link(sources[variant] / name, root / name)
        (root / f"{split}.squashfs").write_bytes(mutated)
        started = time.monotonic()
        try:
            build(root, root / "index.lmdb")
        except ImagenetfsError as exc:
            message = str(exc)
            assert message and "\n" not in message, message
            event(f"refused: {type(exc).__name__}")
        else:
            failed = check_index(root / "index.lmdb")
            event("built, some files corrupt" if failed else "built, all files read")
        assert time.monotonic() - started < 20, "bounded time per image"


# --- crafted inputs through the CLI --------------------------------------------------------


def fuse_usable() -> str | None:
    return fuse_unusable(("fusermount3",), "needs /dev/fuse and root")


@pytest.fixture
def mountpoint(mounter: Mounter) -> Path:
    """A mount point the harness undoes after the test (a refusal that mounted after all must
    not outlive it)."""
    mp = mounter.mkdir("mp")
    mounter.points.append(mp)
    return mp


def run(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "XDG_CACHE_HOME": tempfile.gettempdir() + "/imagenetfs-fuzz-cache"},
    )


def crafted_source(tmp_path: Path, old: bytes, bad: bytes) -> Path:
    """A source whose train.squashfs holds `train/n01440764/<bad>`: built with a harmless
    name of the same length, then patched in its (uncompressed, -noI) directory table."""
    tree = tmp_path / "tree" / "n01440764"
    tree.mkdir(parents=True)
    for name in (old, b"n01440764_1.JPEG"):
        (tree / os.fsdecode(name)).write_bytes(b"\xff\xd8\xff\xe0 not much of a JPEG")
    root = tmp_path / "src"
    root.mkdir()
    image = root / "train.squashfs"
    subprocess.run(
        ["mksquashfs", str(tree.parent), str(image), "-noI", "-noappend", "-no-progress",
         "-quiet"],
        check=True, stdout=subprocess.DEVNULL, timeout=60,
    )  # fmt: skip
    data = bytearray(image.read_bytes())
    directory_table = superblock(data)["directory_table_start"]
    entry = struct.pack("<H", len(old) - 1) + old  # name_size - 1, then the name
    pos = data.index(entry, directory_table) + 2
    data[pos : pos + len(old)] = bad
    image.write_bytes(data)
    return root


@pytest.mark.timeout(120)
@pytest.mark.skipif(fuse_usable() is not None, reason=str(fuse_usable()))
@pytest.mark.parametrize(
    ("old", "bad"),
    [(b"aa", b".."), (b"b", b"."), (b"ab", b"a/"), (b"ab", b"a\0"), (b"abc", b"../")],
)
def test_crafted_names_are_refused_end_to_end(
    tmp_path: Path, mounter: Mounter, mountpoint: Path, old: bytes, bad: bytes
) -> None:
    """Names that could escape the tree (`..`, `.`, `/`, NUL) in an image: `imagenetfs
    index` and `imagenetfs mount` refuse the image with one line naming it; nothing is
    mounted and no index is left behind."""
    root = crafted_source(tmp_path, old, bad)
    image = root / "train.squashfs"
    built = run("index", "--source", root, "--index", tmp_path / "i.lmdb")
    refused = one_error_line(built, stdout=None)  # (index names the source on stdout first)
    assert str(image) in refused and "invalid name" in refused, refused
    assert not (tmp_path / "i.lmdb").exists()
    refused = one_error_line(
        mounter.cli("mount", "--source", root, "--index", tmp_path / "j.lmdb", mountpoint),
        notes=True,  # (after "indexing ...": the index is built first)
    )
    assert str(image) in refused and "invalid name" in refused, refused
    assert str(mountpoint) not in mount_points() and os.listdir(mountpoint) == []


@pytest.mark.timeout(120)
@pytest.mark.parametrize("label", ["..", "../../etc", "n01440764/..", "."])
def test_hostile_val_labels_are_refused(
    tmp_path: Path, sources: dict[str, Path], label: str
) -> None:
    """val_labels.txt decides directory names under val/: a label that would climb out of
    the tree is refused at index time, with one line."""
    root = tmp_path / "src"
    shutil.copytree(sources["gzip"], root)
    lines = (root / "val_labels.txt").read_text().splitlines()
    lines[0] = f"{lines[0].split()[0]} {label}"
    (root / "val_labels.txt").write_text("\n".join(lines) + "\n")
    built = run("index", "--source", root, "--index", tmp_path / "i.lmdb")
    refused = one_error_line(built, stdout=None)  # (index names the source on stdout first)
    assert "invalid name" in refused, refused
    assert not (tmp_path / "i.lmdb").exists()


# --- metadata that inflates past what the superblock allows ---------------------------------

_ABSENT = 0xFFFFFFFFFFFFFFFF
#: The lookup tables (fragment, export, id), whose lists of metadata block addresses move
#: along when bytes are inserted before them: (superblock field of the start, of the count,
#: bytes per entry), as indices into `_SUPERBLOCK`'s fields.
_LOOKUP_TABLES = ((17, 4, 16), (18, 1, 8), (13, 8, 4))
_STARTS = range(12, 19)  # bytes_used and the tables' starts, in the superblock's fields


def padded(image: Path, table: str, blocks: int) -> int:
    """Pad the inode or directory `table` of a gzip image with `blocks` metadata blocks that
    each inflate to 8 KiB of zeros (33 bytes each on disk), after its real blocks: whatever
    follows moves along, and every address of it in the superblock and the lookup tables'
    lists is patched. The records stay where they were: the image walks as before. Returns
    the image's size."""
    data = bytearray(image.read_bytes())
    fields = list(_SUPERBLOCK.unpack_from(data))
    assert fields[14] == _ABSENT, "no xattr table in these images"
    if table == "inode":
        at = fields[16]  # the directory table's start
    else:  # the directory table ends where the fragment table's first block starts
        at = struct.unpack_from("<Q", data, fields[17])[0]
        assert fields[16] < at < fields[17]
    compressed = zlib.compress(bytes(8192), 9)
    junk = (struct.pack("<H", len(compressed)) + compressed) * blocks
    data[at:at] = junk
    for n in _STARTS:
        if fields[n] != _ABSENT and fields[n] >= at:
            fields[n] += len(junk)
    _SUPERBLOCK.pack_into(data, 0, *fields)
    for start, count_field, entry in _LOOKUP_TABLES:
        if fields[start] == _ABSENT:
            continue
        count = fields[count_field]
        for i in range(-(-count * entry // 8192)):
            pos = fields[start] + 8 * i
            (address,) = struct.unpack_from("<Q", data, pos)
            if address >= at:
                struct.pack_into("<Q", data, pos, address + len(junk))
    data += bytes(-len(data) % 4096)
    image.write_bytes(data)
    return len(data)


def peak_rss(*args: object) -> tuple[subprocess.CompletedProcess[str], int]:
    """`imagenetfs ARGS` run by a fresh Python whose only child it is, and that child's
    peak RSS in bytes (getrusage of the children: the largest one's)."""
    wrapper = (
        "import resource, subprocess, sys\n"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True,"
        " stdin=subprocess.DEVNULL)\n"
        "sys.stderr.write(r.stderr)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(r.returncode)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", wrapper, CLI, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "XDG_CACHE_HOME": tempfile.gettempdir() + "/imagenetfs-fuzz-cache"},
    )
    return result, int(result.stdout.split()[-1]) * 1024


#: What an index build of a crafted image may peak at: the CLI's own ~35 MiB, the image's
#: on-disk tables (3.3 MB) and twice a table's bound (~20 MiB: the blocks, then joined).
#: Measured: 37 MiB; before metadata inflation was bounded, the bombs below took it to
#: 1.66 GB and were indexed.
INDEX_BUILD_RSS = 128 << 20


@pytest.mark.timeout(300)
@pytest.mark.parametrize("table", ["inode", "directory"])
def test_metadata_bomb_is_refused_in_bounded_memory(
    tmp_path: Path, sources: dict[str, Path], table: str
) -> None:
    """A 3.3 MB image whose inode (or directory) table carries 100,000 extra metadata blocks,
    each inflating to 8 KiB (820 MB in all): `imagenetfs index` refuses it in one line naming
    the image and the table, and its peak RSS stays under `INDEX_BUILD_RSS`."""
    root = tmp_path / "src"
    shutil.copytree(sources["gzip"], root)
    image = root / "train.squashfs"
    size = padded(image, table, 100_000)
    assert 3_200_000 < size < 3_500_000
    result, rss = peak_rss("index", "--source", root, "--index", tmp_path / "i.lmdb")
    refused = one_error_line(result, stdout=None)  # (index names the source on stdout first)
    assert str(image) in refused and f"{table} table" in refused, refused
    assert rss < INDEX_BUILD_RSS, f"index build peaked at {rss >> 20} MiB"
    assert not (tmp_path / "i.lmdb").exists()
