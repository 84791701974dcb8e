"""The tar and zip readers (archive.py) against their oracles, `tar x` and `unzip`.

Tars are written by Python's tarfile (GNU, PAX, USTAR) and by GNU tar (gnu, posix, ustar,
oldgnu, v7), with long names, pax headers, symlinks, empty files and directories, and class
tars nested in an outer tar as ImageNet's train tar has them; zips by zipfile (stored, deflated,
ZIP64) and by the `zip` command. Every file's bytes from `read()` must equal the extracted
file's at many offsets and sizes (past the end too), every name and symlink must be there.
Files that cannot be served (compressed, sparse, hard links, truncated, damaged, escaping
names, encrypted or bzip2 members...) are refused in one line naming the file and member, and a
file damaged after indexing fails the reads of the members it damaged, only those.
"""

from __future__ import annotations

import calendar
import contextlib
import errno
import io
import os
import random
import shutil
import subprocess
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prepared import unprepared

from imagenetfs import archive, dirtree, generate, index, source, squashfs
from imagenetfs.archive import TarImage, ZipImage
from imagenetfs.errors import CorruptImageError, ImagenetfsError, NoSuchEntry, errno_of
from imagenetfs.index import Index, IndexError_

KiB, MiB = 1 << 10, 1 << 20
BLOCK = archive.BLOCK
LONG = "long-" + "x" * 120  # a component longer than a ustar name field
Tree = dict[str, bytes]  # relative path -> bytes (files), b"->target" for symlinks


@pytest.fixture(scope="module")
def zip_tools() -> None:
    """`zip` and `unzip` (Debian's zip and unzip), which the test command installs."""
    absent = [tool for tool in ("zip", "unzip") if shutil.which(tool) is None]
    if absent:
        unprepared(f"no {' and '.join(absent)} here (Debian's zip, unzip)")


def source_tree(root: Path, *, ustar: bool = False) -> Path:
    """Files of many sizes (0, around 512, up to 300 KB), names > 100 bytes (not for ustar:
    a component over 100 bytes does not fit it), a UTF-8 name, an empty directory, a symlink."""
    rng = random.Random(7)
    files = {
        "empty": b"",
        "one": b"1",
        "n01/n01_1.JPEG": rng.randbytes(511),
        "n01/n01_2.JPEG": rng.randbytes(512),
        "n01/n01_3.JPEG": rng.randbytes(513),
        "n02/deep/er/big.bin": rng.randbytes(300 * KiB + 7),
        "caf\u00e9/na\u00efve.txt": b"utf-8 names\n" * 50,
        ("a" * 90 + "/" + "b" * 90 + "/c.txt"): b"a path over 100 bytes, ustar prefix\n",
    }
    if not ustar:
        files[f"{LONG}/{LONG}.bin"] = rng.randbytes(5000)
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "empty-dir").mkdir()
    (root / "link").symlink_to("n01/n01_1.JPEG")
    return root


def extracted(root: Path) -> Tree:
    """What a directory holds: files' bytes, symlinks as b"->target", directories as None."""
    tree: Tree = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            tree[rel] = b"->" + os.fsencode(os.readlink(path))
        elif path.is_file():
            tree[rel] = path.read_bytes()
        else:
            tree[rel + "/"] = b""
    return tree


def served(image: TarImage | ZipImage) -> Tree:
    """What the reader gives, in the same form; also checks the entries' numbering."""
    tree: Tree = {}
    numbers = {}
    for entry in image.walk():
        assert entry.parent in numbers or entry.path == b"", f"{entry.path!r} before its parent"
        numbers.setdefault(entry.inode_number, entry.path)
        assert numbers[entry.inode_number] == entry.path
        if entry.parent in numbers:
            assert numbers[entry.parent] == entry.path.rpartition(b"/")[0]
        rel = entry.path.decode()
        if entry.kind == squashfs.DIR:
            if rel:
                tree[rel + "/"] = b""
        elif entry.kind == squashfs.SYMLINK:
            assert entry.target is not None
            tree[rel] = b"->" + entry.target
        else:
            assert entry.extent is not None and entry.size == entry.extent.size
            tree[rel] = read_checked(image, entry.extent)
    return tree


def read_checked(image: TarImage | ZipImage, extent: squashfs.Extent) -> bytes:
    """The whole file, after checking pieces at many offsets and sizes against it."""
    data = image.read(extent, 0, extent.size + 100)
    assert len(data) == extent.size
    rng = random.Random(extent.blocks_start)
    size = extent.size
    for offset, length in [(0, 1), (size, 10), (size + 5, 10), (max(size - 1, 0), 5),
                           *((rng.randrange(size + 1), rng.choice((1, 511, 4096, 131072)))
                             for _ in range(6))]:  # fmt: skip
        assert image.read(extent, offset, length) == data[offset : offset + length]
    return data


def untar(tar: Path, dest: Path, *, nested: bool = False) -> Tree:
    """`tar x`, and with `nested`, each class tar extracted into a directory of its name."""
    dest.mkdir()
    subprocess.run(["tar", "-xf", tar, "-C", dest], check=True)
    if nested:
        for inner in sorted(dest.rglob("*.tar")):
            directory = inner.with_suffix("")
            directory.mkdir(exist_ok=True)
            if subprocess.run(["tar", "-xf", inner, "-C", directory]).returncode == 0:
                inner.unlink()
            else:  # not a tar: stays a file
                directory.rmdir()
    return extracted(dest)


def tarfile_tar(tar: Path, src: Path, fmt: int) -> Path:
    with tarfile.open(tar, "w", format=fmt) as t:
        for path in sorted(src.rglob("*")):
            t.add(path, str(path.relative_to(src)), recursive=False)
    return tar


# --- tar: the bytes and names tar x gives ---------------------------------------------------


@pytest.mark.parametrize("fmt", ["GNU", "PAX", "USTAR"])
def test_tarfile_tars_read_as_tar_extracts_them(tmp_path: Path, fmt: str) -> None:
    src = source_tree(tmp_path / "src", ustar=fmt == "USTAR")
    tar = tarfile_tar(tmp_path / "t.tar", src, getattr(tarfile, f"{fmt}_FORMAT"))
    assert archive.kind_of(tar) == "tar"
    with dirtree.open_image(tar) as image:
        assert isinstance(image, TarImage)
        assert served(image) == untar(tar, tmp_path / "x")


@pytest.mark.parametrize("fmt", ["gnu", "posix", "ustar", "oldgnu", "v7"])
def test_gnu_tar_tars_read_as_tar_extracts_them(tmp_path: Path, fmt: str) -> None:
    src = source_tree(tmp_path / "src", ustar=fmt in ("ustar", "v7"))
    if fmt == "v7":  # v7: 100-byte names, no UTF-8 guarantee, no prefix
        shutil.rmtree(src / ("a" * 90))
    tar = tmp_path / "t.tar"
    subprocess.run(["tar", f"--format={fmt}", "-cf", tar, "-C", src, "."], check=True)
    with TarImage(tar) as image:
        assert served(image) == untar(tar, tmp_path / "x")


def test_pax_headers_and_base256_numbers(tmp_path: Path) -> None:
    """pax path, size, mtime (fractional, past 2038), linkpath; a global header's mtime;
    base-256 numbers (an mtime too big for octal in GNU format)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"mtime": "1234567890"}) as t:  # fmt: skip
        info = tarfile.TarInfo("p" * 200 + "/file")
        info.size, info.mtime = 3, 4102444800.5
        info.pax_headers = {"comment": "ignored"}
        t.addfile(info, io.BytesIO(b"abc"))
        info = tarfile.TarInfo("link")
        info.type, info.linkname = tarfile.SYMTYPE, "l" * 300
        t.addfile(info)
        t.addfile(tarfile.TarInfo("plain"), io.BytesIO())
    (tmp_path / "t.tar").write_bytes(buf.getvalue())
    with tarfile.open(tmp_path / "gnu.tar", mode="w", format=tarfile.GNU_FORMAT) as t:
        info = tarfile.TarInfo("gnu")
        info.size, info.mtime = 2, 1 << 40
        t.addfile(info, io.BytesIO(b"xy"))
    with TarImage(tmp_path / "t.tar") as image:
        entries = {e.path: e for e in image.walk()}
    file = entries[b"p" * 200 + b"/file"]
    assert file.mtime == 4102444800 and file.size == 3
    assert entries[b"link"].target == b"l" * 300
    assert entries[b"plain"].mtime == 1234567890  # the global header's
    with TarImage(tmp_path / "gnu.tar") as image:
        gnu = next(e for e in image.walk() if e.path == b"gnu")
        assert gnu.mtime == 1 << 40
        assert gnu.extent is not None and image.read(gnu.extent, 0, 9) == b"xy"


def class_tars(tmp_path: Path, fmt: int = tarfile.GNU_FORMAT) -> Path:
    """ImageNet's train tar in small: `<wnid>.tar` members each holding `<wnid>_N.JPEG`; one
    empty class tar, one `.tar` that is not a tar, a plain file beside."""
    rng = random.Random(1)
    outer = tmp_path / "train.tar"
    with tarfile.open(outer, "w", format=fmt) as t:
        for wnid, count in (("n01440764", 5), ("n01443537", 0), ("n15075141", 3)):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w", format=fmt) as inner:
                for n in range(count):
                    data = rng.randbytes(rng.randrange(1, 40 * KiB))
                    info = tarfile.TarInfo(f"{wnid}_{n}.JPEG")
                    info.size = len(data)
                    inner.addfile(info, io.BytesIO(data))
            info = tarfile.TarInfo(f"{wnid}.tar")
            info.size = buf.tell()
            t.addfile(info, io.BytesIO(buf.getvalue()))
        for name, data in (("fake.tar", rng.randbytes(2000)), ("README", b"hello\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return outer


@pytest.mark.parametrize("fmt", ["GNU", "PAX"])
def test_class_tars_are_directories(tmp_path: Path, fmt: str) -> None:
    outer = class_tars(tmp_path, getattr(tarfile, f"{fmt}_FORMAT"))
    with TarImage(outer) as image:
        tree = served(image)
    assert tree == untar(outer, tmp_path / "x", nested=True)
    assert "n01443537/" in tree and "fake.tar" in tree and "n01440764/n01440764_4.JPEG" in tree
    with TarImage(outer) as image:  # data offsets point into the outer file, through the inner
        entry = next(e for e in image.walk() if e.path == b"n15075141/n15075141_2.JPEG")
        assert entry.extent is not None
        with open(outer, "rb") as f:
            f.seek(entry.extent.blocks_start)
            assert f.read(entry.size) == (tmp_path / "x" / entry.path.decode()).read_bytes()


def test_the_generator_official_train_tar(tmp_path: Path) -> None:
    """generate.py's official layout: the same tree as tar x, twice nested."""
    from imagenetfs import generate

    spec = generate.Spec(classes=3, train_per_class=4, val_per_class=2, test=3, tiny=True,
                         layout="official", progress=False)  # fmt: skip
    generate.generate(tmp_path / "data", spec)
    tars = sorted((tmp_path / "data").glob("ILSVRC2012_img_*.tar"))
    assert len(tars) == 3
    for tar in tars:
        with TarImage(tar) as image:
            assert served(image) == untar(tar, tmp_path / tar.name, nested=True)


def test_leading_slash_and_dot_slash_and_implicit_directories(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name in ("./a/b/c.txt", "/abs/file", "x//y/./z", "./", "a/"):
            info = tarfile.TarInfo(name)
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
            t.addfile(info, io.BytesIO())
    (tmp_path / "t.tar").write_bytes(buf.getvalue())
    with TarImage(tmp_path / "t.tar") as image:
        assert served(image) == {
            "a/": b"", "a/b/": b"", "a/b/c.txt": b"", "abs/": b"", "abs/file": b"",
            "x/": b"", "x/y/": b"", "x/y/z": b"",
        }  # fmt: skip


# --- zip: the bytes and names unzip gives ---------------------------------------------------


def unzip(path: Path, dest: Path) -> Tree:
    dest.mkdir()
    subprocess.run(["unzip", "-q", path, "-d", dest], check=True)
    return extracted(dest)


def zipfile_zip(path: Path, src: Path, *, zip64: bool = False) -> Path:
    """Every file of `src` (not symlinks: zipfile stores their targets' bytes), deflated and
    stored in turn, directories as `name/` records."""
    with zipfile.ZipFile(path, "w") as z:
        for n, file in enumerate(sorted(src.rglob("*"))):
            rel = str(file.relative_to(src))
            if file.is_symlink():
                continue
            if file.is_dir():
                z.writestr(rel + "/", b"")
                continue
            info = zipfile.ZipInfo(rel)
            info.compress_type = zipfile.ZIP_DEFLATED if n % 2 else zipfile.ZIP_STORED
            with z.open(info, "w", force_zip64=zip64) as out:
                out.write(file.read_bytes())
    return path


@pytest.mark.parametrize("zip64", [False, True])
def test_zipfile_zips_read_as_unzip_extracts_them(
    tmp_path: Path, zip_tools: None, zip64: bool
) -> None:
    src = source_tree(tmp_path / "src")
    path = zipfile_zip(tmp_path / "z.zip", src, zip64=zip64)
    assert archive.kind_of(path) == "zip"
    with dirtree.open_image(path) as image:
        assert isinstance(image, ZipImage)
        assert served(image) == unzip(path, tmp_path / "x")


def test_zip_command_zips_with_symlinks(tmp_path: Path, zip_tools: None) -> None:
    src = source_tree(tmp_path / "src")
    path = tmp_path / "z.zip"
    subprocess.run(["zip", "-q", "-r", "-y", path, "."], cwd=src, check=True)
    with ZipImage(path) as image:
        tree = served(image)
    assert tree == unzip(path, tmp_path / "x")
    assert tree["link"] == b"->n01/n01_1.JPEG"


def test_zip64_with_more_than_65535_members(tmp_path: Path, zip_tools: None) -> None:
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as z:
        for n in range(65_600):
            z.writestr(f"d{n % 7}/f{n}", b"%d" % n)
    assert (path.read_bytes()[-22 - 20 - 56 :][:4]) == b"PK\x06\x06"  # a zip64 end record
    with ZipImage(path) as image:
        files = {e.path: e for e in image.walk() if e.kind == squashfs.FILE}
        assert len(files) == 65_600
        for n in (0, 65_535, 65_599):
            entry = files[f"d{n % 7}/f{n}".encode()]
            assert entry.extent is not None
            assert image.read(entry.extent, 0, 100) == b"%d" % n


def test_bytes_before_the_zip(tmp_path: Path, zip_tools: None) -> None:
    """A stub before the zip (a self-extractor): every offset is shifted, as unzip finds."""
    src = source_tree(tmp_path / "src")
    plain = zipfile_zip(tmp_path / "plain.zip", src)
    path = tmp_path / "z.zip"
    path.write_bytes(b"#!/bin/sh\nexit 0\n" * 50 + plain.read_bytes())
    with ZipImage(path) as image, ZipImage(plain) as unshifted:
        assert served(image) == served(unshifted)


def test_read_member(tmp_path: Path) -> None:
    path = tmp_path / "k.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("LOC_synset_mapping.txt", b"n01440764 tench, Tinca tinca\n" * 1000)
        z.writestr("LOC_val_solution.csv", b"ImageId,PredictionString\n")
        z.writestr("ILSVRC/Data/CLS-LOC/val/", b"")
    assert archive.read_member(path, "LOC_val_solution.csv") == b"ImageId,PredictionString\n"
    assert archive.read_members(path, ["LOC_synset_mapping.txt", "nope"]) == {
        "LOC_synset_mapping.txt": b"n01440764 tench, Tinca tinca\n" * 1000
    }
    with pytest.raises(NoSuchEntry):
        archive.read_member(path, "nope")
    with pytest.raises(CorruptImageError, match=r"LOC_synset_mapping\.txt.*at most 100"):
        archive.read_member(path, "LOC_synset_mapping.txt", limit=100)


# --- reads: caching, nowait, switching, the index -------------------------------------------


def test_deflated_members_inflate_once_and_serve_nowait_from_the_cache(tmp_path: Path) -> None:
    path = tmp_path / "z.zip"
    data = random.Random(2).randbytes(600 * KiB)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("big", data)
    with ZipImage(path) as image:
        (entry,) = (e for e in image.walk() if e.kind == squashfs.FILE)
        assert entry.extent is not None and entry.extent.block_sizes
        with pytest.raises(squashfs.WouldBlock):
            image.read(entry.extent, 0, 4096, nowait=True)
        pieces = [image.read(entry.extent, o, 128 * KiB) for o in range(0, len(data), 128 * KiB)]
        assert b"".join(pieces) == data
        assert image.read(entry.extent, 5, 10, nowait=True) == data[5:15]
        stats = image.statistics()
        # inflated once: one miss (the first read's, which waited: not also the nowait one's)
        assert stats.cache_misses == 1 and stats.cache_hits == len(pieces)


def test_members_inflate_a_step_at_a_time_into_a_budget_shared_by_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member inflates `INFLATE_STEP` at a time, exact; the cache makes room before a
    member is inflated (the most recent one too); `share_caches` divides `CACHE_BYTES`."""
    monkeypatch.setattr(archive, "INFLATE_STEP", 4 * KiB)
    monkeypatch.setattr(archive, "CACHE_BYTES", 5 * MiB)
    path = tmp_path / "z.zip"
    rng = random.Random(5)
    members = {f"m{n}": rng.randbytes(1000) * (2 * MiB // 1000) for n in range(3)}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    with ZipImage(path) as image:
        extents = {e.path.decode(): e.extent for e in image.walk() if e.extent is not None}
        held: list[int] = []  # members cached when each inflation starts
        inflate = image._inflate

        def counted(extent: squashfs.Extent) -> bytearray:
            held.append(image.statistics().cached_blocks)
            return inflate(extent)

        monkeypatch.setattr(image, "_inflate", counted)
        archive.share_caches([image, object()], 2)  # 2.5 MiB each: one member of ~2 MiB
        for name in ("m0", "m1", "m0", "m2"):
            extent = extents[name]
            assert extent is not None and extent.block_sizes
            assert image.read(extent, 0, extent.size) == members[name], name
        assert held == [0, 0, 0, 0], "room made before inflating: the last member out too"
        assert image.statistics().cache_misses == 4
        archive.share_caches([image], 1)  # 5 MiB: two members; a third evicts the oldest
        for name in ("m0", "m1", "m0", "m2", "m0"):
            extent = extents[name]
            assert extent is not None
            assert image.read(extent, extent.size - 7, 100) == members[name][-7:]
        assert image.statistics().cached_blocks == 2
        assert image.statistics().cache_misses == 4 + 3  # m0, m1 (m2 out), m2 (m1 out)
        assert held[4:] == [1, 1, 1]


def test_nowait_tar_reads(tmp_path: Path) -> None:
    outer = class_tars(tmp_path)
    with TarImage(outer) as image:
        entry = next(e for e in image.walk() if e.kind == squashfs.FILE)
        assert entry.extent is not None
        data = image.read(entry.extent, 0, entry.size)
        with contextlib.suppress(squashfs.WouldBlock):  # a filesystem without RWF_NOWAIT
            assert image.read(entry.extent, 0, entry.size, nowait=True) == data


def test_switch_to_a_copy(tmp_path: Path) -> None:
    outer = class_tars(tmp_path)
    copy = tmp_path / "copy.tar"
    shutil.copy(outer, copy)
    other = tmp_path / "other.tar"
    other.write_bytes(outer.read_bytes()[:-BLOCK] + bytes(BLOCK - 1) + b"\1")
    with TarImage(outer) as image:
        before = image.fingerprint()
        entry = next(e for e in image.walk() if e.kind == squashfs.FILE)
        assert entry.extent is not None
        data = image.read(entry.extent, 0, entry.size)
        with pytest.raises(ImagenetfsError, match="not a copy"):
            image.switch(str(other))
        image.switch(str(copy))
        assert image.path == str(copy) and image.fingerprint() == before
        outer.unlink()
        assert image.read(entry.extent, 0, entry.size) == data


def test_index_over_a_tar_and_a_zip(tmp_path: Path) -> None:
    outer = class_tars(tmp_path)
    src = source_tree(tmp_path / "src")
    zipped = zipfile_zip(tmp_path / "kaggle.zip", src)
    expected = {f"train/{k}": v for k, v in untar(outer, tmp_path / "x", nested=True).items()}
    with ZipImage(zipped) as image:
        expected |= {f"kaggle/{k}": v for k, v in served(image).items()}
    built = tmp_path / "i.lmdb"
    index.build(built, [outer, zipped], progress=False)
    found: Tree = {}
    with Index.open(built) as ix:
        assert [type(i) for i in ix.images] == [TarImage, ZipImage]
        stack = [(index.ROOT_INO, "")]
        while stack:
            ino, prefix = stack.pop()
            for node in ix.readdir(ino):
                path = prefix + node.name.decode()
                if node.kind == index.DIR:
                    found[path + "/"] = b""
                    stack.append((node.ino, path + "/"))
                elif node.kind == index.SYMLINK:
                    found[path] = b"->" + node.target
                else:
                    found[path] = ix.read(node, 0, node.size + 1)
                    assert ix.read(node, 7, 1000) == found[path][7:1007]
    assert {k: v for k, v in found.items() if k not in ("train/", "kaggle/")} == expected
    # the fingerprint survives a copy, and refuses another file
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(outer, moved / outer.name)
    shutil.copy(zipped, moved / zipped.name)
    with Index.open(built, source=moved) as ix:
        assert ix.images[0].path == str(moved / outer.name)
    with (moved / zipped.name).open("r+b") as f:
        f.seek(100)
        f.write(b"\xff")
        f.seek(0, os.SEEK_END)
        f.write(b"\0")
    with pytest.raises(IndexError_, match=r"kaggle.zip is not the one indexed \(file_size"):
        Index.open(built, source=moved)


def test_a_name_twice_is_refused_by_the_tree_builder(tmp_path: Path) -> None:
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w") as t:
        for data in (b"old", b"new"):
            info = tarfile.TarInfo("dir/same")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    with pytest.raises(IndexError_, match="two entries map to the same path b't/dir/same'"):
        index.build(tmp_path / "i.lmdb", [path], progress=False)


# --- refusals ------------------------------------------------------------------------------


def refused(path: Path, *match: str) -> str:
    """The one-line CorruptImageError opening and walking `path` gives; it names the file and
    each of `match`."""
    with pytest.raises(CorruptImageError) as caught, dirtree.open_image(path) as image:
        for _ in image.walk():
            pass
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    for needle in match:
        assert needle in message, message
    return message


def tar_of(
    path: Path, *members: tuple[tarfile.TarInfo, bytes], fmt: int = tarfile.GNU_FORMAT
) -> Path:
    with tarfile.open(path, "w", format=fmt) as t:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            t.addfile(info, io.BytesIO(data))
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz"])
def test_compressed_tar(tmp_path: Path, compression: str) -> None:
    path = tmp_path / f"t.tar.{compression}"
    with tarfile.open(path, f"w:{compression}") as t:
        t.addfile(member("a"), io.BytesIO())
    refused(path, "compressed tars are not supported; decompress it first")


@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_sparse_member(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok").write_bytes(b"fine")
    with open(src / "holes.bin", "wb") as f:
        f.truncate(1 << 20)
        f.seek(300 * KiB)
        f.write(b"data")
    path = tmp_path / "t.tar"
    command = ["tar", f"--format={fmt}", "--sparse", "-cf", path, "-C", src, "ok", "holes.bin"]
    subprocess.run(command, check=True)
    refused(path, "holes.bin", "sparse")


def test_hard_links_and_other_member_types(tmp_path: Path) -> None:
    link = (member("b", tarfile.LNKTYPE, "a"), b"")
    refused(tar_of(tmp_path / "outer.tar", (member("a"), b"x"), link),
            "member 'b': a hard link (to 'a'): not supported")  # fmt: skip
    inner = tar_of(
        tmp_path / "n01.tar", (member("a"), b"x"), (member("b", tarfile.LNKTYPE, "a"), b"")
    )
    outer = tar_of(tmp_path / "train.tar", (member("n01.tar"), inner.read_bytes()))
    refused(outer, "member 'b' in 'n01.tar': a hard link (to 'a')")
    volume = tar_of(tmp_path / "v.tar", (member("a"), b"x"), (member("c", b"M"), b""))
    refused(volume, "member 'c': a multi-volume continuation: not supported")
    odd = tar_of(tmp_path / "q.tar", (member("a"), b"x"), (member("c", b"Q"), b""))
    refused(odd, "member 'c': of unknown type b'Q': not supported")


def test_truncated_tars(tmp_path: Path) -> None:
    flat = tar_of(tmp_path / "flat.tar", (member("a"), b"x" * 5000), (member("b"), b"y" * 5000))
    data = flat.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: 512 * 3 + 5000 + 100])  # in b's data
    refused(cut, "member 'b': truncated: its data ends at byte", "past the end of the file")
    cut.write_bytes(data[: 512 * 2 + 5120])  # after b's header... b's data missing entirely
    refused(cut, "member 'b': truncated")
    cut.write_bytes(data[: 512 + 5120])  # at a header boundary: no end-of-archive block
    refused(cut, "member 'a': truncated: the archive ends after it")
    cut.write_bytes(data[: 512 + 5120 + 100])  # in b's header
    refused(cut, "member 'a': truncated")
    outer = class_tars(tmp_path)
    whole = outer.read_bytes()
    cut.write_bytes(whole[: len(whole) // 3])  # in the first class tar
    refused(cut, "member 'n01440764.tar': truncated: its data ends at byte")
    # a class tar whose own members run past its end (the outer tar is whole)
    inner = io.BytesIO(tar_of(tmp_path / "i.tar", (member("n_1.JPEG"), b"z" * 4000)).read_bytes())
    short = tar_of(tmp_path / "short.tar", (member("n01.tar"), inner.getvalue()[:2048]))
    refused(short, "member 'n_1.JPEG' in 'n01.tar': truncated", "past the end of 'n01.tar'")


def test_bad_checksum_and_garbage(tmp_path: Path) -> None:
    path = tar_of(tmp_path / "t.tar", (member("first"), b"1" * 600), (member("second"), b"2"))
    data = bytearray(path.read_bytes())
    data[512 * 3 + 10] ^= 1  # in the second header's name
    path.write_bytes(bytes(data))
    refused(path, "member 'first': the header after it (byte 1536) has a bad checksum")
    garbage = tmp_path / "garbage.tar"
    noise = bytearray(random.Random(0).randbytes(3000))
    noise[257:263] = b"ustar\0"  # the magic, in a header that does not check
    garbage.write_bytes(bytes(noise))
    refused(garbage, "not a tar file")
    data = bytearray(tar_of(tmp_path / "n.tar", (member("a"), b"")).read_bytes())
    data[124:136] = b"0000000z000\0"  # a size that is not a number; checksum made right
    data[148:156] = b"%06o\0 " % (sum(data[:148]) + 256 + sum(data[156:512]))
    path.write_bytes(bytes(data))
    refused(path, "member 'a': a number field that is not one: b'0000000z000\\x00'")
    long = member("p" * 150)
    data = bytearray(
        tar_of(tmp_path / "pax.tar", (long, b"x"), fmt=tarfile.PAX_FORMAT).read_bytes()
    )
    assert data[512:520] == b"160 path"  # the pax record of the long name
    data[512:515] = b"1x0"
    path.write_bytes(bytes(data))
    refused(path, "first member: a pax record length that is not a number: b'1x0'")
    data[512:515] = b"999"
    path.write_bytes(bytes(data))
    refused(path, "first member: a malformed pax header record at byte 0 of its header")


@pytest.mark.parametrize("name", ["../x", "a/../../x", "ok/../..", "a\0b"])
def test_names_leaving_the_tree(tmp_path: Path, name: str) -> None:
    if "\0" in name:  # only a pax path can hold a NUL
        info = member("placeholder")
        info.pax_headers = {"path": name}
        path = tar_of(tmp_path / "t.tar", (info, b""), fmt=tarfile.PAX_FORMAT)
        refused(path, "NUL")
    else:
        refused(tar_of(tmp_path / "t.tar", (member(name), b"")), f"member {name!r}", "'..'")
        z = tmp_path / "t.zip"
        with zipfile.ZipFile(z, "w") as out:
            out.writestr(name, b"x")
        refused(z, f"member {name!r}", "'..'")


def patch_central(path: Path, name: bytes, edit: Callable[[bytearray, int], None]) -> None:
    """Edit a member's central directory record (at its offset in the file) in place."""
    data = bytearray(path.read_bytes())
    at = data.index(name, data.index(b"PK\x01\x02")) - 46
    edit(data, at)
    path.write_bytes(bytes(data))


def test_zip_refusals(tmp_path: Path) -> None:
    path = tmp_path / "z.zip"
    for method, name in ((zipfile.ZIP_BZIP2, "bzip2"), (zipfile.ZIP_LZMA, "lzma")):
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("fine", b"x")
            z.writestr("squeezed", b"y" * 1000, compress_type=method)
        refused(path, f"member 'squeezed': compressed with {name}: only stored and deflate")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("secret", b"x" * 100)

    def encrypt(data: bytearray, at: int) -> None:
        data[at + 8] |= 1  # general purpose flags, bit 0

    patch_central(path, b"secret", encrypt)
    refused(path, "member 'secret': encrypted")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("wide", b"x" * 100)

    def claim_zip64(data: bytearray, at: int) -> None:
        data[at + 20 : at + 24] = b"\xff" * 4  # compressed size: "in the ZIP64 field"

    patch_central(path, b"wide", claim_zip64)
    refused(path, "member 'wide': sizes or offset in a zip64 extra field it does not have")
    with zipfile.ZipFile(path, "w") as z:
        for n in range(50):
            z.writestr(f"member{n:02d}", b"x")
    whole = path.read_bytes()
    start = whole.index(b"PK\x01\x02")
    path.write_bytes(whole[: start + (len(whole) - start) // 2])  # the central directory cut
    refused(path, "no end-of-central-directory record")
    damaged = bytearray(whole)
    at = whole.index(b"PK\x01\x02", whole.index(b"member20", start))
    damaged[at] = 0
    path.write_bytes(bytes(damaged))
    refused(path, "member 'member20': central directory record 22 after it is damaged")


def test_split_zip_and_members_too_big_to_inflate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A deflated member over `MAX_INFLATED` is left out of the walk, one warning line each
    (the first `LEFT_OUT_SAID`, then a count); a split zip is refused."""
    path = tmp_path / "z.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("small", b"s" * 1000)
        for n in range(12):
            z.writestr(f"big{n:02d}", b"b" * (2 << 20))
    monkeypatch.setattr(archive, "MAX_INFLATED", 1 << 20)
    with ZipImage(path) as image:
        assert [e.path for e in image.walk()] == [b"", b"small"]
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert said == [
        *(f"{path}: 'big{n:02d}' left out: deflated, 2097152 bytes inflated: more than 1 MiB "
          "(store it uncompressed: zip -0)" for n in range(archive.LEFT_OUT_SAID)),
        f"{path}: 2 more members left out",
    ]  # fmt: skip
    data = bytearray(path.read_bytes())
    end = data.rindex(b"PK\x05\x06")
    data[end + 4 : end + 6] = b"\x01\x00"  # the number of this disk
    path.write_bytes(bytes(data))
    refused(path, "a split (multi-disk) zip: not supported")


def test_zip_encrypted_by_the_zip_command(tmp_path: Path, zip_tools: None) -> None:
    (tmp_path / "secret").write_bytes(b"x" * 100)
    subprocess.run(["zip", "-q", "-P", "pw", "s.zip", "secret"], cwd=tmp_path, check=True)
    refused(tmp_path / "s.zip", "member 'secret': encrypted")


# --- damage after indexing: EIO for those reads only ----------------------------------------


def test_truncated_after_indexing_fails_those_reads_only(tmp_path: Path) -> None:
    outer = class_tars(tmp_path)
    built = tmp_path / "i.lmdb"
    index.build(built, [outer], progress=False)
    with Index.open(built) as ix:
        files = sorted(
            (n for n in walk(ix) if n.kind == index.FILE), key=lambda n: n.extent()[1].blocks_start
        )
        contents = [ix.read(n, 0, n.size) for n in files]
        with open(outer, "r+b") as f:
            f.truncate(files[-2].extent()[1].blocks_start + 10)
        for node, data in zip(files[:-2], contents, strict=False):
            assert ix.read(node, 0, node.size) == data
        assert ix.read(files[-2], 0, 10) == contents[-2][:10]
        for node in files[-2:]:
            with pytest.raises(CorruptImageError, match="truncated") as caught:
                ix.read(node, 0, node.size)
            assert errno_of(caught.value) == errno.EIO


def test_deflated_member_damaged_after_indexing(tmp_path: Path) -> None:
    path = tmp_path / "z.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a", random.Random(4).randbytes(10_000))
        z.writestr("b", b"b" * 10_000)
    with ZipImage(path) as image:
        a, b = (e for e in image.walk() if e.kind == squashfs.FILE)
        assert a.extent is not None and b.extent is not None
        with open(path, "r+b") as f:
            f.seek(a.extent.blocks_start + 5000)
            f.write(b"\0" * 8)
        with pytest.raises(CorruptImageError, match=r"inflate|CRC") as caught:
            image.read(a.extent, 0, 100)
        assert errno_of(caught.value) == errno.EIO
        assert image.read(b.extent, 0, 20_000) == b"b" * 10_000


def walk(ix: Index) -> Iterator[index.Node]:
    stack = [index.ROOT_INO]
    while stack:
        for node in ix.readdir(stack.pop()):
            yield node
            if node.kind == index.DIR:
                stack.append(node.ino)


def test_open_image_tells_files_apart_by_their_bytes(tmp_path: Path) -> None:
    tar = class_tars(tmp_path)
    renamed = tmp_path / "data.img"
    shutil.copy(tar, renamed)
    with dirtree.open_image(renamed) as image:
        assert isinstance(image, TarImage)
    z = tmp_path / "z.tar"  # a zip, named .tar
    with zipfile.ZipFile(z, "w") as out:
        out.writestr("a", b"1")
    assert archive.kind_of(z) == "zip"
    other = tmp_path / "other"
    other.write_bytes(b"neither" * 100)
    assert archive.kind_of(other) is None
    with pytest.raises(CorruptImageError, match="not a SquashFS image"):
        dirtree.open_image(other)
    compressed = tmp_path / "z.zst"
    compressed.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(100))
    refused(compressed, "zstd-compressed: compressed tars are not supported")


def test_staging_copies_and_switches_tars_and_zips(tmp_path: Path) -> None:
    """staging.Stager copies a tar and a zip to local disk, checks each copy by its
    fingerprint and switches the image to it: reads go on with the originals gone."""
    from imagenetfs import staging

    outer = class_tars(tmp_path)
    zipped = zipfile_zip(tmp_path / "kaggle.zip", source_tree(tmp_path / "src"))
    built = tmp_path / "i.lmdb"
    index.build(built, [outer, zipped], progress=False)
    with Index.open(built) as ix:
        files = [n for n in walk(ix) if n.kind == index.FILE]
        contents = [ix.read(n, 0, n.size) for n in files]
        (tmp_path / "stage").mkdir()
        stager = staging.Stager(tmp_path / "stage", ix)
        stager.run(lambda number, path: ix.images[number].switch(str(path)))  # type: ignore[union-attr]
        assert [p["state"] for p in stager.report()["images"]] == ["done", "done"]
        outer.unlink()
        zipped.unlink()
        assert [image.path for image in ix.images] == [
            str(stager.staged_path(0)),
            str(stager.staged_path(1)),
        ]
        assert [ix.read(n, 0, n.size) for n in files] == contents


def test_member_mtimes_are_the_ones_tar_and_unzip_restore(tmp_path: Path, zip_tools: None) -> None:
    """Every file's mtime is the one `tar x` and `unzip` give its extracted copy, to the
    second: GNU tar's and the `zip` command's archives of files with odd-second mtimes (a
    zip's DOS time holds even seconds only; the `zip` command's extended-timestamp extra field
    has the exact one, and `unzip` restores that)."""
    src = source_tree(tmp_path / "src")
    stamps = {}
    for k, path in enumerate(
        sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    ):
        stamps[str(path.relative_to(src))] = 1_300_000_001 + 86_399 * k  # odd seconds
        os.utime(path, (stamps[str(path.relative_to(src))],) * 2)
    tar, zipped = tmp_path / "t.tar", tmp_path / "z.zip"
    subprocess.run(["tar", "-cf", tar, "-C", src, "."], check=True)
    subprocess.run(["zip", "-q", "-r", "-y", zipped, "."], cwd=src, check=True)
    for path, extract in (
        (tar, ["tar", "-xf", tar, "-C"]),
        (zipped, ["unzip", "-q", zipped, "-d"]),
    ):
        out = tmp_path / f"x-{path.name}"
        out.mkdir()
        subprocess.run([*extract, out], check=True, stdout=subprocess.DEVNULL)
        restored = {
            str(p.relative_to(out)): int(p.stat().st_mtime)
            for p in out.rglob("*")
            if p.is_file() and not p.is_symlink()
        }
        assert restored == stamps, f"{path.name}: the oracle restores the mtimes"
        with dirtree.open_image(path) as image:
            mtimes = {
                entry.path.decode().removeprefix("./"): entry.mtime
                for entry in image.walk()
                if entry.kind == squashfs.FILE
            }
        assert mtimes == restored, path.name


@pytest.mark.parametrize(
    "name", ["x/../LOC_synset_mapping.txt", "a/b/../../../LOC_val_solution.csv"]
)
def test_a_kaggle_zip_with_a_label_file_leaving_the_tree_is_refused_naming_it(
    tmp_path: Path, name: str
) -> None:
    """A zip in Kaggle's layout holding, besides its real label files, one whose name leaves
    the tree is refused in one line naming that member: the label files are read from the
    zip first (`read_members`), and that read passes over such a name -- it neither crashes on
    it nor takes it for the label file."""
    spec = generate.Spec(classes=2, train_per_class=2, val_per_class=2, test=1, tiny=True,
                         layout="kaggle", kaggle_zip=True, progress=False)  # fmt: skip
    generate.generate(tmp_path, spec)
    with zipfile.ZipFile(tmp_path / source.KAGGLE_ZIP, "a") as z:
        z.writestr(name, b"n00000000 hostile\n")
    src = source.open_source(tmp_path)
    assert "n00000000" not in src.names and len(src.val_labels) == 2 * 2
    with pytest.raises(CorruptImageError) as caught:
        index.build(tmp_path / "i.lmdb", src.image_list, src.placer(), progress=False)
    message = str(caught.value)
    assert "\n" not in message and f"member {name!r}" in message and "'..'" in message


def test_zip_members_without_an_extended_timestamp_have_their_dos_time_as_utc(
    tmp_path: Path,
) -> None:
    """A zip member with no extended-timestamp field (Python's zipfile writes none) has the
    DOS date and time of its header, read as UTC, as its mtime: what zipfile wrote it as,
    for dates across the DOS range and every field's extremes."""
    stamps = [(1980, 1, 1, 0, 0, 0), (1999, 12, 31, 23, 59, 58), (2012, 2, 29, 13, 37, 42),
              (2024, 7, 15, 6, 5, 54), (2107, 12, 31, 23, 59, 58)]  # fmt: skip
    path = tmp_path / "z.zip"
    with zipfile.ZipFile(path, "w") as z:
        for n, stamp in enumerate(stamps):
            z.writestr(zipfile.ZipInfo(f"f{n}", date_time=stamp), b"x" * n)
    with zipfile.ZipFile(path) as z:
        assert [info.date_time for info in z.infolist()] == stamps
        assert all(not info.extra for info in z.infolist()), "no extra field at all"
    with dirtree.open_image(path) as image:
        mtimes = {e.path: e.mtime for e in image.walk() if e.kind == squashfs.FILE}
    assert mtimes == {f"f{n}".encode(): calendar.timegm(s) for n, s in enumerate(stamps)}


def test_members_past_4_gib_are_read_at_their_zip64_offsets(
    tmp_path: Path, zip_tools: None
) -> None:
    """Members whose local headers lie past 4 GiB -- in Kaggle's 155 GB zip, nearly all --
    have their offsets in zip64 extra fields, and are read from there: the bytes and names
    `unzip` extracts. (The 5 GiB before them are a hole: the file takes a few KiB of disk.)"""
    rng = random.Random(4)
    files = {
        "a.txt": b"hello " * 100,
        "b/c.bin": rng.randbytes(5000),
        "b/d/e": rng.randbytes(70_000),
    }
    path = tmp_path / "big.zip"
    with open(path, "wb") as f:
        f.truncate(5 << 30)
        f.seek(5 << 30)
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for name, data in files.items():
                z.writestr(name, data)
    with zipfile.ZipFile(path) as z:
        assert all(info.header_offset > 1 << 32 for info in z.infolist())
    out = tmp_path / "x"
    subprocess.run(["unzip", "-q", path, "-d", out], check=True)
    with dirtree.open_image(path) as image:
        assert served(image) == extracted(out) == {**files, "b/": b"", "b/d/": b""}
