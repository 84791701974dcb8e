"""The shard view (`mount --shards`): WebDataset tar shards made on the fly, on real mounts.

One small source (real JPEGs, a truncated one, a 65 MiB one, a text file and a symlink beside
them) mounted with `--shards --shard-samples 3` in both serving modes and twice with workers,
and once with another seed. The oracle for every member is the tree the same mount serves and
the files the images were made from; the oracles for the format are Python's `tarfile` (which
writes ustar headers too), GNU tar, and the index files' own definitions (DALI's `wds2idx`
reads member data offsets, wids's index names each shard with its size and sample count).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import io
import json
import mmap
import os
import random
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import (
    Mounted,
    Mounter,
    SmallSource,
    drop_written,
    small_source,
    wait_until,
)
from PIL import Image
from prepared import prepared_module

from imagenetfs import generate, index, source
from imagenetfs.generate import Spec
from imagenetfs.index import Index
from imagenetfs.squashfs import SquashImage
from imagenetfs.views import shards as shards_module
from imagenetfs.views.shards import (
    MTIME,
    READ_AHEAD,
    RECORD,
    Ahead,
    header,
    json_length,
    sample_json,
)
from imagenetfs.views.tree import ShardSettings, Tree

PER_SHARD = 3
SPLITS = {"train": "train", "validation": "val"}
IMAGE = (".jpeg", ".jpg", ".png")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> SmallSource:
    return small_source(tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="module")
def mounts(
    small: SmallSource, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Mounted]]:
    """workers, workers-again (a second mount), pyfuse3 (`--workers 0`), seed1, contiguous
    (`--shard-order contiguous`), plain."""
    harness = Mounter(tmp_path_factory.mktemp("mounts"))
    shards = ["--shards", "--shard-samples", PER_SHARD]
    try:
        out = {}
        for name, extra in {
            "workers": [*shards, "--workers", 2],
            "workers-again": [*shards, "--workers", 2],
            "pyfuse3": [*shards, "--workers", 0],
            "seed1": [*shards, "--shard-seed", 1, "--workers", 2],
            "contiguous": [*shards, "--shard-order", "contiguous", "--workers", 2],
            "plain": ["--workers", 2],
        }.items():
            mp = harness.mkdir(name)
            out[name] = harness.mount(mp, small.root, *extra, index=small.index)
        yield out
    finally:
        harness.cleanup()


def view(mounted: Mounted, seed_dir: str = "wds") -> Path:
    return mounted.mp / "shards" / seed_dir


def shard_paths(directory: Path, split: str) -> list[Path]:
    return sorted(directory.glob(f"imagenet1k-{split}-*.tar"))


def expected_split(small: SmallSource, split: str) -> dict[str, bytes]:
    """key -> bytes of the files that make the split's samples: images (by name) directly in
    a class directory, no symlinks (`SmallSource.served` has the val files regrouped)."""
    out = {}
    for rel, data in small.served().items():
        parts = rel.split("/")
        if parts[0] == SPLITS[split] and len(parts) == 3 and parts[2].lower().endswith(IMAGE):
            out[parts[2].rsplit(".", 1)[0]] = data
    return out


def labels_of(mp: Path) -> dict[str, int]:
    """wnid -> label, as the mount's LOC_synset_mapping.txt numbers them (line i: label i)."""
    lines = (mp / "LOC_synset_mapping.txt").read_text().splitlines()
    return {line.split()[0]: i for i, line in enumerate(lines)}


def members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def test_members_are_the_tree_files_each_sample_once(
    small: SmallSource, mounts: dict[str, Mounted]
) -> None:
    """Every member of every shard, read with `tarfile` from each mount, is what the module
    promises: `<key>.cls/.jpg/.json` in that order, plain ustar (no pax or GNU records), mode
    0444, uid/gid 0, the one mtime; the .jpg the tree's file byte for byte, the .cls its
    label, the .json its label and name; and the samples of all shards are the split's image
    files, each once. Shard sizes are whole 10,240-byte records ending in zeros."""
    for mode in ("workers", "pyfuse3"):
        mp = mounts[mode].mp
        labels = labels_of(mp)
        for split, directory in SPLITS.items():
            expected = expected_split(small, split)
            seen: list[str] = []
            paths = shard_paths(view(mounts[mode]), split)
            assert len(paths) == -(-len(expected) // PER_SHARD)
            for path in paths:
                raw = path.read_bytes()
                assert len(raw) == path.stat().st_size and len(raw) % RECORD == 0
                found = members(path)
                assert len(found) % 3 == 0
                for cls, jpg, js in zip(found[::3], found[1::3], found[2::3], strict=True):
                    key = cls.name.removesuffix(".cls")
                    assert [cls.name, jpg.name, js.name] == [f"{key}.cls", f"{key}.jpg",
                                                             f"{key}.json"]  # fmt: skip
                    for m in (cls, jpg, js):
                        assert m.type == tarfile.REGTYPE and m.mode == 0o444, m.name
                        assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "", ""), m.name
                        assert m.mtime == MTIME and m.pax_headers == {}, m.name
                        block = raw[m.offset : m.offset + 512]
                        assert block[257:265] == b"ustar\x0000", m.name  # ustar, not GNU
                    meta = json.loads(raw[js.offset_data : js.offset_data + js.size])
                    wnid = next(w for w in labels if labels[w] == meta["label"])
                    tree_file = mp / directory / wnid / meta["filename"]
                    data = raw[jpg.offset_data : jpg.offset_data + jpg.size]
                    assert data == tree_file.read_bytes() == expected[key], key
                    assert raw[cls.offset_data : cls.offset_data + cls.size] == (
                        str(labels[wnid]).encode()
                    )
                    assert meta["filename"].rsplit(".", 1)[0] == key
                    assert set(meta) == {"label", "filename"}  # no size pass: no width/height
                    seen.append(key)
                end = found[-1].offset_data + found[-1].size
                assert raw[-(-end // 512) * 512 :] == bytes(len(raw) - (-(-end // 512) * 512))
                assert len(raw) - end >= 1024  # two zero blocks at least
            assert sorted(seen) == sorted(expected), split  # the split, each sample once


def test_gnu_tar_lists_and_extracts_every_shard(
    small: SmallSource, mounts: dict[str, Mounted], tmp_path: Path
) -> None:
    """GNU tar lists each whole shard (`tar tvf`, quietly: no warning about headers or the
    end) in the order of the samples, and `tar xf` extracts files equal to the tree's."""
    for split in SPLITS:
        expected = expected_split(small, split)
        for path in shard_paths(view(mounts["workers"]), split):
            listed = subprocess.run(
                ["tar", "tvf", str(path)], capture_output=True, text=True, check=True
            )
            assert listed.stderr == ""
            names = [line.split()[-1] for line in listed.stdout.splitlines()]
            assert all(line.startswith("-r--r--r-- 0/0 ") for line in listed.stdout.splitlines())
            keys = [n.rsplit(".", 1)[0] for n in names]
            assert names == [f"{k}.{e}" for k in keys[::3] for e in ("cls", "jpg", "json")]
            out = tmp_path / path.name
            out.mkdir()
            subprocess.run(["tar", "xf", str(path), "-C", str(out)], check=True)
            for key in keys[::3]:
                assert (out / f"{key}.jpg").read_bytes() == expected[key]
                meta = json.loads((out / f"{key}.json").read_bytes())
                assert (out / f"{key}.cls").read_bytes() == str(meta["label"]).encode()


def expected_shard(path: Path, small: SmallSource, labels: dict[str, int]) -> bytes:
    """What the shard at `path` must be, made independently: Python's `tarfile` writing, in
    its ustar format with the view's mode, owner and mtime, the members the view lists, in its
    order, with the tree's files as `.jpg`, the labels of LOC_synset_mapping.txt as `.cls` and
    `{"label": ..., "filename": ...}` as `.json` (tarfile ends with two zero blocks and pads
    to 10,240 bytes, as GNU tar does)."""
    files = {}
    for rel, data in small.served().items():
        parts = rel.split("/")
        if len(parts) == 3 and parts[0] in SPLITS.values():
            files[parts[2].rsplit(".", 1)[0]] = (parts[1], parts[2], data)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for m in members(path):
            key, ext = m.name.split(".", 1)
            wnid, name, data = files[key]
            body = {
                "cls": str(labels[wnid]).encode(),
                "jpg": data,
                "json": json.dumps({"label": labels[wnid], "filename": name}).encode(),
            }[ext]
            info = tarfile.TarInfo(m.name)
            info.size, info.mode, info.mtime = len(body), 0o444, MTIME
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def test_reads_at_any_offset_and_length(small: SmallSource, mounts: dict[str, Mounted]) -> None:
    """Each whole shard is byte for byte what `tarfile` writes for its members
    (`expected_shard`), and reads at random offsets and lengths (across member boundaries,
    past the end) answer its slices: `pread` with O_DIRECT (so each goes to the daemon at that
    offset, not through the page cache) and `mmap`, in both serving modes."""
    rng = random.Random(7)
    for mode in ("workers", "pyfuse3"):
        labels = labels_of(mounts[mode].mp)
        for path in sorted(view(mounts[mode]).glob("*.tar")):
            whole = expected_shard(path, small, labels)
            assert path.read_bytes() == whole, path
            direct = os.open(path, os.O_RDONLY | os.O_DIRECT)
            fd = os.open(path, os.O_RDONLY)
            try:
                with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as mapped:
                    for _ in range(60):
                        offset = rng.randrange(len(whole) + 600)
                        length = rng.choice([1, 100, 511, 512, 513, 4096, 70_000, 300_000])
                        piece = whole[offset : offset + length]
                        got = os.pread(direct, length, offset)
                        assert got == piece, (path, offset, length)
                        assert mapped[offset : offset + length] == piece, (path, offset, length)
            finally:
                os.close(direct)
                os.close(fd)


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_same_bytes_from_two_mounts_and_both_modes(
    small: SmallSource, mounts: dict[str, Mounted]
) -> None:
    """Every file of the view has the same bytes from two mounts with workers, from pyfuse3
    alone, and as the operation core makes them without FUSE."""
    first = digests(view(mounts["workers"]))
    assert first == digests(view(mounts["workers-again"]))
    assert first == digests(view(mounts["pyfuse3"]))
    with Index.open(small.index) as ix:
        tree = Tree(ix, shards=ShardSettings(0, PER_SHARD))
        wds = tree.lookup(tree.lookup(index.ROOT_INO, b"shards").ino, b"wds")
        made = {
            n.name.decode(): hashlib.sha256(tree.read(n, 0, n.size)).hexdigest()
            for n in tree.readdir(wds.ino)
        }
    assert made == first


def test_sizes_are_known_without_reading(small: SmallSource, mounter: Mounter) -> None:
    """`stat` of every file of a fresh mount's view answers the size its bytes have, and
    reads nothing to know it: no READ request, and no block of an image decompressed (the
    images are gzip: any read of file data inflates blocks) -- until the files are read."""
    mp = mounter.mkdir("fresh")
    mounted = mounter.mount(mp, small.root, "--shards", "--shard-samples", PER_SHARD,
                            "--workers", 0, index=small.index)  # fmt: skip
    sizes = {p.name: p.stat().st_size for p in view(mounted).iterdir()}
    stats = mounted.stats(after=time.time())
    assert stats["fs"]["reads"] == 0 and stats["block_cache"]["misses"] == 0, stats
    assert sizes == {p.name: len(p.read_bytes()) for p in view(mounted).iterdir()}
    assert mounted.stats(after=time.time())["block_cache"]["misses"] > 0


def test_train_is_shuffled_by_seed_val_in_name_order(
    small: SmallSource, mounts: dict[str, Mounted]
) -> None:
    """Train: the same order from every mount of one seed, another order (of the same
    samples) under another seed's directory; the remainder goes to the first shards. Val:
    file-name order. Without --shards the root has no `shards`."""

    def order(directory: Path, split: str) -> list[list[str]]:
        return [[m.name for m in members(p)][::3] for p in shard_paths(directory, split)]

    seed0 = order(view(mounts["workers"]), "train")
    seed1 = order(view(mounts["seed1"], "wds-seed1"), "train")
    assert os.listdir(mounts["seed1"].mp / "shards") == ["tfrecord-seed1", "wds-seed1"]
    flat0, flat1 = [k for s in seed0 for k in s], [k for s in seed1 for k in s]
    assert flat0 != flat1 and sorted(flat0) == sorted(flat1)
    assert flat0 != sorted(flat0)  # shuffled
    lengths = [len(s) for s in seed0]
    assert lengths == sorted(lengths, reverse=True) and lengths[0] - lengths[-1] <= 1
    val = [k for s in order(view(mounts["workers"]), "validation") for k in s]
    assert val == sorted(val)
    assert "shards" not in os.listdir(mounts["plain"].mp)
    assert "shards" in os.listdir(mounts["workers"].mp)


def test_contiguous_order_is_path_order_in_both_splits(
    small: SmallSource, mounts: dict[str, Mounted]
) -> None:
    """`--shard-order contiguous`: its own directories (`wds-contiguous`, `tfrecord-contiguous`),
    both splits in path order -- class directory, then file name: the order mksquashfs stores
    them in -- holding the same samples as the shuffled view, in shards of the same lengths."""
    mounted = mounts["contiguous"]
    assert os.listdir(mounted.mp / "shards") == ["tfrecord-contiguous", "wds-contiguous"]
    wnids = sorted(labels_of(mounted.mp), key=labels_of(mounted.mp).__getitem__)
    for split in SPLITS:
        paths = shard_paths(view(mounted, "wds-contiguous"), split)
        shuffled = shard_paths(view(mounts["workers"]), split)
        assert [p.name for p in paths] == [p.name for p in shuffled]
        samples, lengths = [], []
        for path in paths:
            with tarfile.open(path) as tar:
                classes = [m for m in tar.getmembers() if m.name.endswith(".cls")]
                lengths.append(len(classes))
                for member in classes:
                    label = int(tar.extractfile(member).read())  # type: ignore[union-attr]
                    samples.append((wnids[label], member.name[: -len(".cls")]))
        assert samples == sorted(samples), split  # (wnid, key): path order
        assert len(samples) > 3, split
        expected = sorted(m.name for p in shuffled for m in members(p) if m.name.endswith(".cls"))
        assert sorted(f"{key}.cls" for _, key in samples) == expected
        assert lengths == [len(members(p)) // 3 for p in shuffled]


# --- the index files ----------------------------------------------------------------------


def test_info_json_is_timms_and_agrees_with_the_shards(mounts: dict[str, Mounted]) -> None:
    """`_info.json` has timm's schema (splits `train` and `validation`, each with its
    `filenames`, `shard_lengths` and `num_samples`) and its counts are the shards'."""
    directory = view(mounts["workers"])
    info = json.loads((directory / "_info.json").read_bytes())
    assert set(info["splits"]) == set(SPLITS)
    for split, entry in info["splits"].items():
        assert entry["name"] == split
        paths = shard_paths(directory, split)
        assert entry["filenames"] == [p.name for p in paths]
        assert entry["shard_lengths"] == [len(members(p)) // 3 for p in paths]
        assert entry["num_samples"] == sum(entry["shard_lengths"])


def test_wids_index_agrees_with_the_shards(mounts: dict[str, Mounted]) -> None:
    """Each split's wids shard index (`wids-shard-index-v1`) names each shard relative to
    itself, with its size and sample count."""
    directory = view(mounts["workers"])
    for split in SPLITS:
        body = json.loads((directory / f"imagenet1k-{split}-wids.json").read_bytes())
        assert body["__kind__"] == "wids-shard-index-v1" and body["wids_version"] == 1
        paths = shard_paths(directory, split)
        assert [s["url"] for s in body["shardlist"]] == [p.name for p in paths]
        for entry, path in zip(body["shardlist"], paths, strict=True):
            assert entry["filesize"] == path.stat().st_size
            assert entry["nsamples"] == len(members(path)) // 3


def dali_index(path: Path) -> bytes:
    """DALI's `wds2idx` index of a tar, made as it makes it (its `tarfile` way): per sample
    (members grouped by the name before the first dot), `<ext> <data offset> <size> <name>`
    a member; a first line `v1.2 <samples>`."""
    samples: list[list[str]] = []
    last = None
    with tarfile.open(path) as tar:
        for m in tar:
            base, ext = m.name.split(".", 1)
            if base != last:
                samples.append([])
                last = base
            samples[-1].append(f"{ext} {m.offset_data} {m.size} {m.name}")
    return "".join([f"v1.2 {len(samples)}\n"] + [" ".join(s) + "\n" for s in samples]).encode()


def test_dali_index_beside_each_shard(mounts: dict[str, Mounted]) -> None:
    """Beside each shard, `<shard>.idx` is the index DALI's `wds2idx` makes of it; its data
    offsets are where GNU tar says each member's data begin (`tar tR`: the header's block)."""
    for path in sorted(view(mounts["workers"]).glob("*.tar")):
        idx = path.with_suffix(".idx").read_bytes()
        assert idx == dali_index(path)
        listed = subprocess.run(["tar", "tRf", str(path)], capture_output=True, text=True,
                                check=True).stdout.splitlines()  # fmt: skip
        blocks = {ln.split(": ", 1)[1]: int(ln.split()[1].rstrip(":")) for ln in listed[:-1]}
        for line in idx.decode().splitlines()[1:]:
            fields = line.split()
            for ext, offset, size, name in zip(*[iter(fields)] * 4, strict=True):
                assert int(offset) == (blocks[name] + 1) * 512, (name, ext, size)


def test_header_is_what_tarfile_writes() -> None:
    """A member header is byte for byte what Python's `tarfile` writes in its ustar format
    for the same name, size, mode, owner and mtime."""
    for name, size in [(b"a.cls", 1), (b"n01440764_10026.jpg", 110_000), (b"k" * 95, 8**11 - 1)]:
        info = tarfile.TarInfo(name.decode())
        info.size, info.mode, info.mtime = size, 0o444, MTIME
        info.uname = info.gname = ""
        assert header(name, size) == info.tobuf(tarfile.USTAR_FORMAT), name


def test_json_length_is_the_members() -> None:
    """The layout's arithmetic length of a `.json` member (which sizes every shard before a
    byte is made) is the length of the member made, for plain, quoted, escaped and non-ASCII
    names, with and without a size."""
    names = [b"n01440764_10026.JPEG", b'a"b.jpg', b"back\\slash.png", b"tab\t.jpg",
             "caf\u00e9.JPEG".encode(), b"\xff\xfe.jpg", b"x" * 90 + b".png"]  # fmt: skip
    for name in names:
        for label in (0, 7, 999):
            for size in (None, (500, 375), (12345, 1)):
                assert json_length(label, name, size) == len(sample_json(label, name, size))


def test_end_is_two_zero_blocks_then_the_record(tmp_path: Path) -> None:
    """A shard ends with exactly two zero blocks and the zeros up to the next multiple of
    10,240 -- also when its members end one block short of a record, on it, or two blocks
    short (where "round the members up to a record" would leave fewer than two zero blocks).
    Sizes made so: a sample is 3 headers, 512 of `.cls`, 512 of `.json` and its image padded."""
    root = tmp_path / "src"
    for i, image in enumerate((7168, 7680, 6656)):  # members end at 9,728, 10,240, 9,216
        d = root / "train" / f"n0000000{i}"
        d.mkdir(parents=True)
        (d / f"n0000000{i}_1.JPEG").write_bytes(jpeg_bytes((8, 8)).ljust(image, b"\0"))
    made = shard_bytes(root, tmp_path, per_shard=1)
    ends = []
    for n in range(3):
        shard = made[f"imagenet1k-train-{n}.tar"]
        with tarfile.open(fileobj=io.BytesIO(shard)) as tar:
            last = tar.getmembers()[-1]
        end = last.offset_data + -(-last.size // 512) * 512
        ends.append(end)
        assert len(shard) == -(-(end + 1024) // RECORD) * RECORD, (n, end, len(shard))
        assert shard[end:] == bytes(len(shard) - end)
    assert sorted(ends) == [9216, 9728, 10240]  # the cases meant


# --- every source layout ------------------------------------------------------------------

LAYOUTS = Spec(classes=3, train_per_class=4, val_per_class=2, test=2, tiny=True)


def shard_bytes(root: Path, tmp: Path, per_shard: int = 2) -> dict[str, bytes]:
    """Every file of the view (seed 0, `per_shard` samples a shard) over an index of `root`."""
    src = source.open_source(root)
    path = tmp / f"{root.name}.lmdb"
    index.build(path, src.image_list, src.placer(), virtual=src.virtual_files, progress=False)
    with Index.open(path) as ix:
        tree = Tree(ix, shards=ShardSettings(0, per_shard))
        wds = tree.lookup(tree.lookup(index.ROOT_INO, b"shards").ino, b"wds")
        return {n.name.decode(): tree.read(n, 0, n.size) for n in tree.readdir(wds.ino)}


def test_every_source_layout_serves_the_same_shards(tmp_path: Path) -> None:
    """Cluster images, Kaggle's zip and ILSVRC/ (image and unpacked), the official tars and
    an unpacked tree of one generated dataset give the same shards, byte for byte."""
    made = {}
    for name, spec in {
        "cluster": LAYOUTS,
        "kaggle-zip": Spec(**{**LAYOUTS.__dict__, "layout": "kaggle", "kaggle_zip": True}),
        "kaggle-image": Spec(**{**LAYOUTS.__dict__, "layout": "kaggle", "kaggle_squashfs": True}),
        "kaggle-unpacked": Spec(**{**LAYOUTS.__dict__, "layout": "kaggle"}),
        "official": Spec(**{**LAYOUTS.__dict__, "layout": "official"}),
    }.items():
        generate.generate(tmp_path / name, spec)
        made[name] = tmp_path / name
    direct = tmp_path / "unpacked"
    direct.mkdir()
    for split in ("train", "val", "test"):
        subprocess.run(["unsquashfs", "-q", "-n", "-d", str(direct / split),
                        str(made["cluster"] / f"{split}.squashfs")], check=True)  # fmt: skip
    (direct / "val_labels.txt").write_bytes((made["cluster"] / "val_labels.txt").read_bytes())
    made["unpacked"] = direct
    reference = shard_bytes(made["cluster"], tmp_path)
    train = [n for n in reference if n.startswith("imagenet1k-train-") and n.endswith(".tar")]
    assert len(train) == 6  # 12 samples, 2 a shard
    with tarfile.open(fileobj=io.BytesIO(reference[train[0]])) as tar:
        assert len(tar.getmembers()) == 6
    for name, root in made.items():
        assert shard_bytes(root, tmp_path) == reference, name


# --- how the workers send shards: spliced, and read ahead ------------------------------------

#: Real-size JPEGs (the generator's realistic ones, ~110 KB) in images whose data blocks are
#: stored (-noD -noF), in gzip images (stored blocks, compressed fragments), and in tars.
STORED = Spec(
    classes=2, train_per_class=6, val_per_class=1, test=1, mksquashfs_args=("-noD", "-noF")
)


def view_bytes(index_path: Path, per_shard: int) -> dict[str, bytes]:
    """Every shard file of both formats (seed 0, `per_shard` samples a shard), as the
    operation core makes them by copying, over the index at `index_path`."""
    with Index.open(index_path) as ix:
        tree = Tree(ix, shards=ShardSettings(0, per_shard))
        shards = tree.lookup(index.ROOT_INO, b"shards")
        out = {}
        for directory in (b"wds", b"tfrecord"):
            top = tree.lookup(shards.ino, directory)
            for n in tree.readdir(top.ino):
                if n.kind == index.FILE and not n.name.endswith((b".json", b".idx")):
                    out[f"{directory.decode()}/{n.name.decode()}"] = tree.read(n, 0, n.size)
        return out


@pytest.mark.parametrize("layout", ["noD-noF", "gzip", "official"])
def test_worker_sends_shards_spliced_byte_for_byte(
    layout: str, mounter: Mounter, tmp_path: Path
) -> None:
    """A worker sends a READ of a shard -- WebDataset or TFRecord -- as runs spliced from
    the images with the bytes it makes between them (headers, `.cls`, `.json`, a record's
    framing and fields, padding, a decompressed tail): the bytes are the shard the operation
    core makes by copying (`view_bytes`), whole and at random offsets and lengths (O_DIRECT:
    each READ as the reader asks it), and on stored images and tars the READs were spliced
    (`reads_spliced`)."""
    spec = {
        "noD-noF": STORED,
        "gzip": Spec(**{**STORED.__dict__, "mksquashfs_args": ()}),
        "official": Spec(**{**STORED.__dict__, "mksquashfs_args": (), "layout": "official"}),
    }[layout]
    data = tmp_path / "src"
    generate.generate(data, spec)
    src = source.open_source(data)
    index.build(tmp_path / "i", src.image_list, src.placer(), virtual=src.virtual_files,
                progress=False, image_info=True)  # fmt: skip
    expected = view_bytes(tmp_path / "i", 5)
    assert any(name.startswith("tfrecord/train-") for name in expected)
    mounted = mounter.mount(mounter.mkdir("mnt"), data, "--shards", "--shard-samples", 5,
                            "--workers", 2, index=tmp_path / "i")  # fmt: skip
    rng = random.Random(layout)
    for name, whole in sorted(expected.items()):
        path = mounted.mp / "shards" / name
        assert path.read_bytes() == whole, name
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            for _ in range(20):
                offset = rng.randrange(len(whole) + 600)
                length = rng.choice([1, 511, 513, 4096, 70_000, 300_000, 1 << 20])
                assert os.pread(fd, length, offset) == whole[offset : offset + length], (
                    name, offset, length,
                )  # fmt: skip
        finally:
            os.close(fd)
    stats = mounted.stats(after=time.time())
    if layout != "gzip":
        assert stats["fs"]["reads_spliced"] > 0, stats["fs"]
    assert stats["fs"]["errors"] == 0, stats["fs"]


def image_bytes_cached(image: Path, ix: Index, rel: str) -> bool:
    """Whether the page of `image` that holds the middle byte of file `rel` (stored: -noD
    -noF) is in the page cache, by mincore(2) on a mapping of the image -- which starts no
    read (a one-byte RWF_NOWAIT read would: it starts the kernel's read-ahead before it
    answers EAGAIN)."""
    node = ix.getattr(index.ROOT_INO)
    for name in rel.encode().split(b"/"):
        node = ix.lookup(node.ino, name)
    _, extent = node.extent()
    with SquashImage(image) as squash:
        runs = squash.locate(extent, extent.size // 2, 1)
    assert runs, rel
    page = runs[0].offset // mmap.PAGESIZE * mmap.PAGESIZE
    libc = ctypes.CDLL(None, use_errno=True)
    with (
        open(image, "rb") as f,
        mmap.mmap(f.fileno(), mmap.PAGESIZE, access=mmap.ACCESS_COPY, offset=page) as mapped,
    ):
        address = ctypes.addressof(ctypes.c_char.from_buffer(mapped))
        vector = (ctypes.c_ubyte * 1)()
        if libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(mmap.PAGESIZE), vector):
            raise OSError(ctypes.get_errno(), "mincore")
        return bool(vector[0] & 1)


def far_sample(shard: Path, skip: int) -> tuple[str, int]:
    """The tree path of the first sample whose data starts `skip` bytes or more into `shard`,
    and where they start (by the DALI index beside it: `jpg <offset> <size> <name>`)."""
    lines = shard.with_suffix(".idx").read_text().splitlines()[1:]
    for line in lines:
        fields = line.split()
        at = fields.index("jpg")
        if int(fields[at + 1]) >= skip:
            key = fields[at + 3].rsplit(".", 1)[0]
            return f"train/{key.split('_')[0]}/{key}.JPEG", int(fields[at + 1])
    raise AssertionError(f"{shard}: no sample {skip} bytes in")


def test_streaming_reader_gets_the_next_samples_read_ahead(
    mounter: Mounter, tmp_path: Path
) -> None:
    """Two READs that follow each other at a shard's start make the worker ask for the image
    bytes of the samples ahead (`WdsView.read_ahead`): a sample ~2 MiB further is in the page
    cache soon after, without being read. One READ in the middle of another shard (a reader
    seeking, as wids does) asks for nothing: a sample ~1.5 MiB past it stays uncached. A
    second pass over the first shard, once its bytes were dropped, is read ahead again."""
    data = tmp_path / "src"
    generate.generate(data, Spec(**{**STORED.__dict__, "train_per_class": 80}))
    image = data / "train.squashfs"
    mounted = mounter.mount(mounter.mkdir("mnt"), data, "--shards", "--shard-samples", 80,
                            "--workers", 2, index=tmp_path / "i")  # fmt: skip
    streamed, sought = shard_paths(view(mounted), "train")[:2]
    drop_written(image)
    with Index.open(tmp_path / "i") as ix:
        (ahead, at), (past, beyond) = far_sample(streamed, 2 << 20), far_sample(sought, 3 << 20)
        # (both where a read-ahead from the READs below would reach)
        assert at + (1 << 20) < (256 << 10) + READ_AHEAD and beyond < (3 << 19) + READ_AHEAD
        assert not image_bytes_cached(image, ix, ahead)
        assert not image_bytes_cached(image, ix, past)
        fd = os.open(sought, os.O_RDONLY | os.O_DIRECT)
        try:
            os.preadv(fd, [mmap.mmap(-1, 128 << 10)], 3 << 19)
        finally:
            os.close(fd)
        fd = os.open(streamed, os.O_RDONLY | os.O_DIRECT)
        try:
            for offset in (0, 128 << 10):
                os.preadv(fd, [mmap.mmap(-1, 128 << 10)], offset)
        finally:
            os.close(fd)
        assert wait_until(lambda: image_bytes_cached(image, ix, ahead), 10)
        assert not image_bytes_cached(image, ix, past)


@dataclass
class Asked:
    """Stands in for the index in `Ahead.follow`, which only calls `advise`: which image
    nodes were asked for (the asking itself is `Index.advise`, shown on a real mount by
    `test_streaming_reader_gets_the_next_samples_read_ahead`)."""

    nodes: list[int] = field(default_factory=list)

    def advise(self, node: index.Node) -> None:
        self.nodes.append(node.ino)


def test_read_ahead_asks_once_per_pass_and_again_for_the_next(tmp_path: Path) -> None:
    """`Ahead.follow` over a real shard table: a pass of 128 KiB READs from the start asks
    for every sample once, each before a READ reaches it; a READ far from the last one asks
    for nothing; a second pass from the start (its bytes may be gone from the page cache by
    then) asks for every sample again. A READ in the middle of a shard no READ has touched
    asks for nothing."""
    data = tmp_path / "src"
    generate.generate(data, Spec(**{**STORED.__dict__, "train_per_class": 80}))
    src = source.open_source(data)
    index.build(tmp_path / "i", src.image_list, src.placer(), virtual=src.virtual_files,
                progress=False)  # fmt: skip
    with Index.open(tmp_path / "i") as ix:
        view = Tree(ix, shards=ShardSettings(0, 80)).shards
        assert view is not None
        table = view.table(0, 0)
        samples, size = table.samples, table.samples[-1].end
        assert size > 2 * READ_AHEAD
        inos = [sample.node.ino for sample in samples]
        for _ in range(2):
            asked = Asked()
            for offset in range(0, size, 128 << 10):
                table.ahead.follow(asked, samples, table.starts, offset, offset + (128 << 10))
                reached = [s.node.ino for s in samples if s.offset < offset + (128 << 10)]
                assert set(reached) <= set(asked.nodes), offset
            assert asked.nodes == inos  # each once, in order
        asked, fresh = Asked(), Ahead()  # (a shard no READ has touched yet)
        fresh.follow(asked, samples, table.starts, size // 2, size // 2 + (128 << 10))
        assert asked.nodes == []


def test_layout_a_block_of_shards_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The layout computes shard sizes `BLOCK_SHARDS` shards at a time (so that its numpy
    temporaries stay small at ImageNet's count): with blocks of 2 shards of 2 samples, where
    train's 12 samples make 6 shards and 3 blocks, every shard's size and its DALI index's
    size are those of the bytes the view makes, and the index is the one `wds2idx` makes of
    those bytes."""
    monkeypatch.setattr(shards_module, "BLOCK_SHARDS", 2)
    data = tmp_path / "src"
    generate.generate(data, STORED)
    src = source.open_source(data)
    index.build(tmp_path / "i", src.image_list, src.placer(), virtual=src.virtual_files,
                progress=False)  # fmt: skip
    with Index.open(tmp_path / "i") as ix:
        tree = Tree(ix, shards=ShardSettings(0, 2))
        top = tree.lookup(tree.lookup(index.ROOT_INO, b"shards").ino, b"wds")
        files = {n.name.decode(): n for n in tree.readdir(top.ino) if n.kind == index.FILE}
        made = {name: tree.read(n, 0, n.size + 1) for name, n in files.items()}
    assert len([name for name in made if name.startswith("imagenet1k-train-")]) == 2 * 6 + 1
    for name, node in files.items():
        assert len(made[name]) == node.size, name
        if name.endswith(".tar"):
            (tmp_path / name).write_bytes(made[name])
            assert made[name.removesuffix(".tar") + ".idx"] == dali_index(tmp_path / name)


# --- the loaders' own readers -------------------------------------------------------------


def test_webdataset_library_iterates_the_view(
    small: SmallSource, mounts: dict[str, Mounted]
) -> None:
    """The `webdataset` library's own pipeline, given the shards by brace pattern as a user
    writes them, yields each sample of the split once, its `.jpg` the tree's file and its
    `.cls` the `.json`'s label."""
    webdataset = pytest.importorskip("webdataset", reason="pip install -e '.[test]'")
    directory = view(mounts["workers"])
    for split in SPLITS:
        last = shard_paths(directory, split)[-1].name.rsplit("-", 1)[1].removesuffix(".tar")
        pattern = f"{directory}/imagenet1k-{split}-{{{'0' * len(last)}..{last}}}.tar"
        samples = list(webdataset.WebDataset(pattern, shardshuffle=False))
        expected = expected_split(small, split)
        assert sorted(s["__key__"] for s in samples) == sorted(expected)
        for sample in samples:
            assert sample["jpg"] == expected[sample["__key__"]]
            assert int(sample["cls"]) == json.loads(sample["json"])["label"]


def test_wids_reads_samples_by_number(
    small: SmallSource, mounts: dict[str, Mounted], tmp_path: Path
) -> None:
    """wids, given the split's shard index, reads every sample by its number from the shards
    in place (through symlinks in a directory of its own: wids writes a lock file beside each
    shard's local name, and would copy a shard whose local name is not itself): the split,
    each sample once, the tree's bytes."""
    wids = prepared_module("wids")
    directory = view(mounts["workers"])
    for path in directory.glob("*.tar"):
        (tmp_path / path.name).symlink_to(path)
    for split in SPLITS:
        dataset = wids.ShardListDataset(
            str(directory / f"imagenet1k-{split}-wids.json"),
            localname=lambda url: str(tmp_path / os.path.basename(url)),
            transformations=[],  # the members' bytes, not decoded
        )
        expected = expected_split(small, split)
        assert len(dataset) == len(expected)
        keys = []
        for i in range(len(dataset)):
            sample = dataset[i]
            keys.append(sample["__key__"])
            assert sample[".jpg"].read() == expected[sample["__key__"]]
        assert sorted(keys) == sorted(expected)
    assert all(p.is_symlink() for p in tmp_path.glob("*.tar"))  # nothing was copied


def test_timm_reader_iterates_the_view(small: SmallSource, mounts: dict[str, Mounted]) -> None:
    """timm's WebDataset reader (`create_dataset("wds/...", root=<the view>)`) finds the
    splits in `_info.json` and yields every val sample in shard order with its label, and a
    training epoch of the train split as many samples as `_info.json` says."""
    timm_data = prepared_module("timm.data")
    directory = view(mounts["workers"])
    labels = labels_of(mounts["workers"].mp)
    val = timm_data.create_dataset(
        "wds/imagenet", root=str(directory), split="validation", is_training=False
    )
    got = [(image.size, int(target)) for image, target in val]
    by_name = {rel.rsplit("/", 1)[1]: rel for rel in small.served() if rel.startswith("val/")}
    want = []
    for path in shard_paths(directory, "validation"):
        for m in members(path)[1::3]:
            rel = by_name[m.name.removesuffix(".jpg") + ".JPEG"]
            with Image.open(io.BytesIO(small.served()[rel])) as image:
                want.append((image.size, labels[rel.split("/")[1]]))
    assert got == want
    train = timm_data.create_dataset(
        "wds/imagenet", root=str(directory), split="train", is_training=True, batch_size=1
    )
    info = json.loads((directory / "_info.json").read_bytes())
    assert len(train) == info["splits"]["train"]["num_samples"]
    assert len(list(train)) == len(train)


def test_built_in_sample_gets_the_view(mounter: Mounter) -> None:
    """A mount of the built-in sample (no source) with --shards serves the view at the
    default shard size: `_info.json` counts the image files of its train and val, and the
    first train shard's images are the tree's files."""
    mp = mounter.mkdir("sample")
    mounted = mounter.mount(mp, None, "--shards")
    info = json.loads((view(mounted) / "_info.json").read_bytes())
    for split, directory in SPLITS.items():
        files = {p.stem: p for p in (mp / directory).glob("*/*") if p.suffix == ".JPEG"}
        entry = info["splits"][split]
        assert entry["num_samples"] == len(files) == sum(entry["shard_lengths"]) > 0
        assert len(entry["filenames"]) == -(-len(files) // (1252 if split == "train" else 782))
        path = view(mounted) / entry["filenames"][0]
        raw = path.read_bytes()
        for m in members(path)[1::3]:
            data = raw[m.offset_data : m.offset_data + m.size]
            assert data == files[m.name.removesuffix(".jpg")].read_bytes(), m.name


# --- the optional image-size pass ---------------------------------------------------------


def test_image_sizes_pass_puts_width_and_height_in_json(
    small: SmallSource, mounter: Mounter, tmp_path: Path
) -> None:
    """`imagenetfs index --image-sizes` records each image's width and height, and the
    view's `.json` members show them: Pillow's size of the tree's file; a file Pillow cannot
    read (65 MiB of zeros named .JPEG) has none."""
    sized = tmp_path / "sized.lmdb"
    built = mounter.cli("index", "--source", small.root, "--index", sized, "--image-sizes", "-q")
    assert built.returncode == 0, built.stderr
    mp = mounter.mkdir("sized")
    mounted = mounter.mount(mp, small.root, "--shards", "--shard-samples", PER_SHARD,
                            index=sized)  # fmt: skip
    checked = 0
    for path in sorted(view(mounted).glob("*.tar")):
        raw = path.read_bytes()
        found = members(path)
        for jpg, js in zip(found[1::3], found[2::3], strict=True):
            meta = json.loads(raw[js.offset_data : js.offset_data + js.size])
            try:
                with Image.open(
                    io.BytesIO(raw[jpg.offset_data : jpg.offset_data + jpg.size])
                ) as im:
                    size = im.size
            except OSError:
                assert "width" not in meta and "height" not in meta, meta
                continue
            assert (meta["width"], meta["height"]) == size, meta
            checked += 1
    assert checked == 11  # 7 train images Pillow reads (the truncated one's header is whole), 4 val


def test_default_build_reads_no_image_bytes(tmp_path: Path) -> None:
    """The default index build reads no file's bytes (so the size pass costs it nothing):
    over an unpacked tree of 6 MiB of images it reads less than 512 KiB in all; the size pass
    reads at least the start of each."""
    root = tmp_path / "src"
    for i in range(3):
        d = root / "train" / f"n0000000{i}"
        d.mkdir(parents=True)
        head = jpeg_bytes((64 + i, 48))
        (d / f"n0000000{i}_1.JPEG").write_bytes(head + os.urandom(2 << 20))
    src = source.open_source(root)

    def rchar() -> int:
        with open("/proc/self/io") as f:
            return int(next(ln for ln in f if ln.startswith("rchar")).split()[1])

    read = {}
    for sizes in (False, True):
        before = rchar()
        path = tmp_path / f"index-{sizes}.lmdb"
        index.build(path, src.image_list, src.placer(), virtual=src.virtual_files,
                    progress=False, image_info=sizes)  # fmt: skip
        read[sizes] = rchar() - before
        with Index.open(path) as ix:
            assert (ix.image_sizes is not None) == sizes
    assert read[False] < 512 << 10, read
    assert read[True] - read[False] >= 3 * (64 << 10), read


def jpeg_bytes(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(out, "JPEG")
    return out.getvalue()


def test_an_image_cut_short_fails_the_reads_that_touch_it(mounter: Mounter, tmp_path: Path) -> None:
    """An image cut short after it was indexed: a shard whose members' bytes lay in the lost
    part fails its READ with EIO, counted in `errors` and logged; the mount serves on (the
    val shards, whose image is whole, read in full)."""
    data = tmp_path / "src"
    generate.generate(data, Spec(classes=2, train_per_class=4, val_per_class=2, test=1))
    mp = mounter.mkdir("mnt")
    mounted = mounter.mount(mp, data, "--shards", "--shard-samples", 2, index=tmp_path / "i")
    image = data / "train.squashfs"
    os.truncate(image, image.stat().st_size // 4)
    failed = 0
    for path in shard_paths(view(mounted), "train"):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            buffer = mmap.mmap(-1, 1 << 20)
            offset = 0
            while True:
                got = os.preadv(fd, [buffer], offset)
                if not got:
                    break
                offset += got
        except OSError as e:
            assert e.errno == errno.EIO, e
            failed += 1
        finally:
            os.close(fd)
    assert failed > 0
    for path in shard_paths(view(mounted), "validation"):
        assert len(members(path)) > 0
    assert mounted.stats(after=time.time())["fs"]["errors"] >= failed
    assert "train.squashfs" in mounted.log
