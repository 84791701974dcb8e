"""The TFRecord view (`mount --shards`, `shards/tfrecord/`), on real mounts.

The small source of test_shards.py (real JPEGs, a truncated one, a 65 MiB file of zeros named
.JPEG, a text file and a symlink beside them), indexed with `imagenetfs index --image-info`
(the pass that records each file's CRC32C), mounted with `--shards --shard-samples 3` in both
serving modes and once with another seed; and once over an index without CRCs. The oracle for
the format is a reader written here from the format's definition (`records`: the framing, both
masked CRC32Cs computed over the bytes as read, the protobuf wire format decoded by hand), and
TensorFlow's own reader in the TensorFlow test environment (`test_tensorflow_reads_the_view`);
the oracle for the contents is the tree the same mount serves and the files the images were
made from.
"""

from __future__ import annotations

import errno
import io
import json
import mmap
import os
import random
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import google_crc32c
import pytest
from helpers import Mounted, Mounter, SmallSource, small_source
from PIL import Image

from imagenetfs import generate, index, source
from imagenetfs.generate import Spec
from imagenetfs.index import Index
from imagenetfs.views.tfrecord import crc_combine, example_length, example_parts

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
    """workers, pyfuse3 (`--workers 0`), seed1: over an index with CRCs; nocrc: without."""
    work = tmp_path_factory.mktemp("mounts")
    harness = Mounter(work)
    info = work / "info.lmdb"
    built = harness.cli("index", "--source", small.root, "--index", info, "--image-info", "-q")
    assert built.returncode == 0, built.stderr
    shards = ["--shards", "--shard-samples", PER_SHARD]
    try:
        out = {}
        for name, extra, ix in (
            ("workers", [*shards, "--workers", 2], info),
            ("pyfuse3", [*shards, "--workers", 0], info),
            ("seed1", [*shards, "--shard-seed", 1, "--workers", 2], info),
            ("nocrc", [*shards, "--workers", 2], small.index),
        ):
            mp = harness.mkdir(name)
            out[name] = harness.mount(mp, small.root, *extra, index=ix)
        yield out
    finally:
        harness.cleanup()


def view(mounted: Mounted, seed_dir: str = "tfrecord") -> Path:
    return mounted.mp / "shards" / seed_dir


def shard_paths(directory: Path, split: str) -> list[Path]:
    return sorted(directory.glob(f"{split}-*"))


# --- an independent reader of the format --------------------------------------------------


def masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def records(raw: bytes) -> Iterator[tuple[int, bytes]]:
    """(offset, data) of each record of a whole shard, both CRCs checked."""
    pos = 0
    while pos < len(raw):
        assert pos + 12 <= len(raw), f"a record header cut at {pos}"
        length_bytes = raw[pos : pos + 8]
        (length,) = struct.unpack("<Q", length_bytes)
        (length_crc,) = struct.unpack("<I", raw[pos + 8 : pos + 12])
        assert length_crc == masked_crc(length_bytes), f"length CRC at {pos}"
        data = raw[pos + 12 : pos + 12 + length]
        assert len(data) == length, f"record at {pos} cut"
        (data_crc,) = struct.unpack("<I", raw[pos + 12 + length : pos + 16 + length])
        assert data_crc == masked_crc(data), f"data CRC of the record at {pos}"
        yield pos, data
        pos += 16 + length


def varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value: int or bytes) of a protobuf message, in order."""
    pos = 0
    while pos < len(buf):
        key, pos = varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = varint(buf, pos)
        elif wire == 2:
            length, pos = varint(buf, pos)
            value = buf[pos : pos + length]
            assert len(value) == length
            pos += length
        else:
            raise AssertionError(f"wire type {wire} in an Example")
        yield number, wire, value


def decode_example(data: bytes) -> dict[str, list[Any]]:
    """A serialized tf.train.Example (example.proto, feature.proto): feature name -> values
    (bytes or int), the keys in the order the message holds them."""
    out: dict[str, list[Any]] = {}
    (top,) = list(fields(data))
    assert top[:2] == (1, 2)  # Example.features
    for number, wire, entry in fields(top[2]):
        assert (number, wire) == (1, 2)  # Features.feature: map entries
        parts = dict((n, v) for n, _, v in fields(entry))
        key, feature = parts[1].decode(), parts[2]
        ((kind, _, body),) = list(fields(feature))
        values: list[Any] = []
        if kind == 1:  # bytes_list
            values = [v for _, _, v in fields(body)]
        elif kind == 3:  # int64_list, packed (or not)
            for _, wire_type, v in fields(body):
                if wire_type == 0:
                    values.append(v)
                else:
                    pos = 0
                    while pos < len(v):
                        n, pos = varint(v, pos)
                        values.append(n)
        else:
            raise AssertionError(f"feature kind {kind}")
        out[key] = values
    return out


# --- what the tree says ---------------------------------------------------------------------


def labels_of(mp: Path) -> dict[str, int]:
    """wnid -> 0-based label, as the mount's LOC_synset_mapping.txt numbers them."""
    lines = (mp / "LOC_synset_mapping.txt").read_text().splitlines()
    return {line.split()[0]: i for i, line in enumerate(lines)}


def expected_split(small: SmallSource, split: str) -> dict[str, tuple[str, bytes]]:
    """file name -> (wnid, bytes) of the files that make the split's samples."""
    out = {}
    for rel, data in small.served().items():
        parts = rel.split("/")
        if parts[0] == SPLITS[split] and len(parts) == 3 and parts[2].lower().endswith(IMAGE):
            out[parts[2]] = (parts[1], data)
    return out


def pillow_size(data: bytes) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except OSError:
        return (0, 0)


def test_records_are_the_tree_files_each_sample_once(
    small: SmallSource, mounts: dict[str, Mounted]
) -> None:
    """Every record of every shard, read whole from each serving mode with the reader above
    (both CRCs checked, the Example decoded by hand), holds imagenet_to_gcs.py's features:
    the tree's file byte for byte, the label of LOC_synset_mapping.txt + 1, the wnid of its
    class directory, its name, its width and height as Pillow reads them (0 where Pillow reads
    none), JPEG, RGB, 3 -- with the keys in sorted order, as TensorFlow's deterministic
    serialization writes them; the shards are named TensorFlow's way, their `st_size` is
    their length, and the records of all shards are the split's image files, each once."""
    for mode in ("workers", "pyfuse3"):
        mp = mounts[mode].mp
        labels = labels_of(mp)
        for split, directory in SPLITS.items():
            expected = expected_split(small, split)
            paths = shard_paths(view(mounts[mode]), split)
            count = -(-len(expected) // PER_SHARD)
            assert [p.name for p in paths] == [
                f"{split}-{n:05d}-of-{count:05d}" for n in range(count)
            ]
            seen = []
            for path in paths:
                raw = path.read_bytes()
                assert len(raw) == path.stat().st_size
                for _, data in records(raw):
                    example = decode_example(data)
                    assert list(example) == sorted(example)
                    name = example["image/filename"][0].decode()
                    wnid, stored = expected[name]
                    encoded = example["image/encoded"][0]
                    assert encoded == stored == (mp / directory / wnid / name).read_bytes()
                    assert example == {
                        "image/channels": [3],
                        "image/class/label": [labels[wnid] + 1],
                        "image/class/synset": [wnid.encode()],
                        "image/colorspace": [b"RGB"],
                        "image/encoded": [encoded],
                        "image/filename": [name.encode()],
                        "image/format": [b"JPEG"],
                        "image/height": [pillow_size(stored)[1]],
                        "image/width": [pillow_size(stored)[0]],
                    }, name
                    seen.append(name)
            assert sorted(seen) == sorted(expected), split


def tar_keys(directory: Path, split: str) -> list[str]:
    import tarfile

    keys = []
    for path in sorted(directory.glob(f"imagenet1k-{split}-*.tar")):
        with tarfile.open(path) as tar:
            keys += [m.name.rsplit(".", 1)[0] for m in tar.getmembers()][::3]
    return keys


def record_keys(directory: Path, split: str) -> list[str]:
    return [
        decode_example(data)["image/filename"][0].decode().rsplit(".", 1)[0]
        for path in shard_paths(directory, split)
        for _, data in records(path.read_bytes())
    ]


def test_order_is_the_webdataset_views_for_each_seed(mounts: dict[str, Mounted]) -> None:
    """The records, shard after shard, are the WebDataset view's samples in its order, for
    the default seed (`tfrecord/` beside `wds/`) and for another (`tfrecord-seed1/` beside
    `wds-seed1/`), whose train order differs."""
    shards = mounts["workers"].mp / "shards"
    assert os.listdir(shards) == ["tfrecord", "wds"]
    assert os.listdir(mounts["seed1"].mp / "shards") == ["tfrecord-seed1", "wds-seed1"]
    orders = {}
    for mode, suffix in (("workers", ""), ("seed1", "-seed1")):
        root = mounts[mode].mp / "shards"
        for split in SPLITS:
            keys = record_keys(root / f"tfrecord{suffix}", split)
            assert keys == tar_keys(root / f"wds{suffix}", split), (mode, split)
            orders[mode, split] = keys
    assert orders["workers", "train"] != orders["seed1", "train"]
    assert sorted(orders["workers", "train"]) == sorted(orders["seed1", "train"])


def test_reads_at_any_offset_and_length(mounts: dict[str, Mounted]) -> None:
    """Reads at random offsets and lengths (inside the framing, across record boundaries,
    past the end) answer slices of the whole shard: `pread` with O_DIRECT (each goes to the
    daemon at that offset) and `mmap`, in both serving modes."""
    rng = random.Random(11)
    for mode in ("workers", "pyfuse3"):
        for split in SPLITS:
            for path in shard_paths(view(mounts[mode]), split):
                whole = path.read_bytes()
                direct = os.open(path, os.O_RDONLY | os.O_DIRECT)
                fd = os.open(path, os.O_RDONLY)
                try:
                    with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as mapped:
                        for _ in range(40):
                            offset = rng.randrange(len(whole) + 600)
                            length = rng.choice([1, 7, 12, 100, 4096, 70_000, 300_000])
                            piece = whole[offset : offset + length]
                            assert os.pread(direct, length, offset) == piece, (path, offset)
                            assert mapped[offset : offset + length] == piece, (path, offset)
                finally:
                    os.close(direct)
                    os.close(fd)


def test_dali_index_and_dataset_info_agree_with_the_shards(mounts: dict[str, Mounted]) -> None:
    """`idx/<shard>.idx` is what DALI's `tfrecord2idx` writes for the shard: one line
    `<offset> <size>` per record, the size the whole record's (framing included); the
    `train-*` pattern matches shards only. `dataset_info.json` names each split's shards,
    their record counts and sizes."""
    directory = view(mounts["workers"])
    info = json.loads((directory / "dataset_info.json").read_bytes())
    assert set(info["splits"]) == set(SPLITS)
    for split, entry in info["splits"].items():
        paths = shard_paths(directory, split)
        assert [p.name for p in paths] == entry["filenames"]
        assert all(p.is_file() for p in paths)  # (no index file in the pattern)
        lengths = []
        for path in paths:
            raw = path.read_bytes()
            found = [(offset, 16 + len(data)) for offset, data in records(raw)]
            lines = (directory / "idx" / f"{path.name}.idx").read_text()
            assert lines == "".join(f"{o} {s}\n" for o, s in found), path
            lengths.append(len(found))
        assert entry["shard_lengths"] == lengths
        assert entry["num_examples"] == sum(lengths) and entry["num_shards"] == len(paths)
        assert entry["shard_sizes"] == [p.stat().st_size for p in paths]
        assert entry["file_pattern"] == f"{split}-*"


def test_without_crcs_the_view_says_so(
    small: SmallSource, mounts: dict[str, Mounted], mounter: Mounter, tmp_path: Path
) -> None:
    """Over an index built without the image pass the view serves no records: its directory
    holds `README.txt` alone, one line naming the command that records the CRCs; that
    command, run as written, makes an index whose mount serves the shards."""
    directory = view(mounts["nocrc"])
    assert os.listdir(directory) == ["README.txt"]
    lines = (directory / "README.txt").read_text().splitlines()
    assert len(lines) == 1 and "CRC32C" in lines[0], lines
    command = lines[0].rsplit(": ", 1)[1].split()
    assert command[:2] == ["imagenetfs", "index"] and "--image-info" in command
    copy = tmp_path / "index.lmdb"
    copy.write_bytes(small.index.read_bytes())
    command[command.index("--index") + 1] = str(copy)
    done = mounter.cli(*command[1:], "-q")
    assert done.returncode == 0, done.stderr
    with Index.open(copy) as ix:
        assert ix.file_crcs is not None
    mp = mounter.mkdir("now")
    mounted = mounter.mount(mp, small.root, "--shards", index=copy)
    assert len(shard_paths(view(mounted), "train")) == 1


def test_image_pass_records_each_files_crc32c_default_build_reads_none(tmp_path: Path) -> None:
    """`index.build(image_info=True)` records the CRC32C of every file named like an image,
    read whole (the 5 MiB files are read past the 4 MiB first piece), and the default build
    reads no file's bytes and records none."""
    root = tmp_path / "src"
    files = {}
    for i in range(3):
        d = root / "train" / f"n0000000{i}"
        d.mkdir(parents=True)
        data = os.urandom((5 << 20) + i)
        (d / f"n0000000{i}_1.JPEG").write_bytes(data)
        files[f"n0000000{i}_1.JPEG"] = data
    src = source.open_source(root)

    def rchar() -> int:
        with open("/proc/self/io") as f:
            return int(next(ln for ln in f if ln.startswith("rchar")).split()[1])

    read = {}
    for info in (False, True):
        before = rchar()
        path = tmp_path / f"index-{info}.lmdb"
        index.build(path, src.image_list, src.placer(), virtual=src.virtual_files,
                    progress=False, image_info=info)  # fmt: skip
        read[info] = rchar() - before
        with Index.open(path) as ix:
            train = ix.lookup(index.ROOT_INO, b"train")
            for wnid in ix.readdir(train.ino):
                for ino, _, name in ix.files(wnid.ino):
                    want = google_crc32c.value(files[name.decode()]) if info else None
                    assert ix.file_crc(ino) == want, name
            assert (ix.file_crcs is not None) == info
    assert read[False] < 512 << 10, read
    assert read[True] - read[False] >= sum(map(len, files.values())), read


def test_an_image_cut_short_fails_the_reads_that_touch_it(mounter: Mounter, tmp_path: Path) -> None:
    """An image cut short after it was indexed: a shard whose records lie in the lost part
    fails its READ with EIO -- never bytes that do not match its CRCs -- and the mount serves
    on (the val shards, whose image is whole, read and check in full)."""
    data = tmp_path / "src"
    generate.generate(data, Spec(classes=2, train_per_class=4, val_per_class=2, test=1))
    built = mounter.cli("index", "--source", data, "--index", tmp_path / "i", "--image-info")
    assert built.returncode == 0, built.stderr
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
            while got := os.preadv(fd, [buffer], offset):
                offset += got
        except OSError as e:
            assert e.errno == errno.EIO, e
            failed += 1
        finally:
            os.close(fd)
    assert failed > 0
    for path in shard_paths(view(mounted), "validation"):
        assert len(list(records(path.read_bytes()))) > 0


# --- the pieces, without FUSE ---------------------------------------------------------------


def test_crc_combine_is_the_crc_of_the_concatenation() -> None:
    """`crc_combine(crc(A), crc(B), len(B)) == crc(A + B)` for lengths around every power of
    two a file size may have (0 to 16 MiB) and for empty parts."""
    rng = random.Random(3)
    sizes = [0, 1, 2, 3, 7, 8, 9, 100, 4095, 4096, 65_537, 1 << 20, (16 << 20) + 5]
    for a_size in (0, 1, 57, 1000):
        a = rng.randbytes(a_size)
        for b_size in sizes:
            b = rng.randbytes(b_size)
            assert crc_combine(
                google_crc32c.value(a), google_crc32c.value(b), b_size
            ) == google_crc32c.value(a + b), (a_size, b_size)


def test_example_length_is_the_length_of_the_example() -> None:
    """The length the walk computes of each record (`example_length`) is the length of the
    Example the reads make, for values on both sides of every varint boundary; the Example
    decodes to the values given."""
    edges = [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 1 << 28, (1 << 35) + 1]
    rng = random.Random(5)
    for size in edges:
        for _ in range(4):
            label = rng.choice([0, 126, 127, 999, 20_000])
            dims = rng.choice([None, (rng.choice(edges), rng.choice(edges))])
            name = b"x" * rng.choice([1, 100, 127, 128, 255])
            wnid = b"n" * rng.choice([9, 127, 128])
            before, after = example_parts(label, wnid, name, size, dims)
            assert example_length(label, wnid, name, size, dims) == (
                len(before) + size + len(after)
            )
            if size < 1 << 20:
                got = decode_example(before + b"\0" * size + after)
                width, height = dims or (0, 0)
                assert got["image/class/label"] == [label + 1]
                assert got["image/encoded"] == [b"\0" * size]
                assert (got["image/width"], got["image/height"]) == ([width], [height])
                assert got["image/filename"] == [name] and got["image/class/synset"] == [wnid]


# --- TensorFlow's own reader ------------------------------------------------------------------


@pytest.mark.tensorflow
def test_tensorflow_reads_the_view(small: SmallSource, mounts: dict[str, Mounted]) -> None:
    """`tf.data.TFRecordDataset` (which checks both CRCs of every record) over every shard of
    the view, each record parsed with `tf.io.parse_single_example` and imagenet_to_gcs.py's
    feature spec: every image's bytes, label (+1), synset, name and size are the tree's; the
    records of all shards are the split, each once; and each record's bytes are what
    TensorFlow's own deterministic serialization writes for the Example it parsed.

    TensorFlow is ~1.5 GB for this one test, so the test command does not prepare it (no
    `unprepared` failure under it): it runs in the environment `scripts/test-prepare-tf.sh`
    makes (`/opt/imagenetfs/test-venv-tf/bin/python -m pytest -m tensorflow
    tests/test_tfrecord.py`) and skips, saying so, wherever TensorFlow does not import."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = pytest.importorskip(
        "tensorflow",
        reason="TensorFlow is not in this environment: scripts/test-prepare-tf.sh makes one "
        "that has it (not part of the test command: ~1.5 GB for one test)",
    )
    spec = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/format": tf.io.FixedLenFeature([], tf.string),
        "image/filename": tf.io.FixedLenFeature([], tf.string),
        "image/class/label": tf.io.FixedLenFeature([], tf.int64),
        "image/class/synset": tf.io.FixedLenFeature([], tf.string),
        "image/height": tf.io.FixedLenFeature([], tf.int64),
        "image/width": tf.io.FixedLenFeature([], tf.int64),
        "image/colorspace": tf.io.FixedLenFeature([], tf.string),
        "image/channels": tf.io.FixedLenFeature([], tf.int64),
    }
    mp = mounts["workers"].mp
    labels = labels_of(mp)
    for split, directory in SPLITS.items():
        expected = expected_split(small, split)
        files = tf.io.gfile.glob(str(view(mounts["workers"]) / f"{split}-*"))
        assert sorted(files) == [str(p) for p in shard_paths(view(mounts["workers"]), split)]
        seen = []
        for raw in tf.data.TFRecordDataset(sorted(files)):
            data = raw.numpy()
            parsed = tf.io.parse_single_example(raw, spec)
            name = parsed["image/filename"].numpy().decode()
            wnid, stored = expected[name]
            assert parsed["image/encoded"].numpy() == stored
            assert (mp / directory / wnid / name).read_bytes() == stored
            assert int(parsed["image/class/label"]) == labels[wnid] + 1
            assert parsed["image/class/synset"].numpy() == wnid.encode()
            width, height = pillow_size(stored)
            assert (int(parsed["image/width"]), int(parsed["image/height"])) == (width, height)
            assert parsed["image/format"].numpy() == b"JPEG"
            assert parsed["image/colorspace"].numpy() == b"RGB"
            assert int(parsed["image/channels"]) == 3
            example = tf.train.Example.FromString(data)
            assert example.SerializeToString(deterministic=True) == data, name
            seen.append(name)
        assert sorted(seen) == sorted(expected), split


@pytest.mark.tensorflow
def test_tensorflow_reader_sees_a_bad_crc(tmp_path: Path) -> None:
    """(For the TensorFlow test above: TFRecordDataset does check the data CRC, so that
    test would fail for a wrong one.) A valid record read back, then one with a flipped CRC
    bit refused with DataLossError. Skips without TensorFlow, as that test does."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = pytest.importorskip(
        "tensorflow",
        reason="TensorFlow is not in this environment: scripts/test-prepare-tf.sh makes one",
    )
    before, after = example_parts(0, b"n01440764", b"a.JPEG", 3, (1, 1))
    data = before + b"abc" + after
    length = struct.pack("<Q", len(data))
    good = length + struct.pack("<I", masked_crc(length)) + data
    good += struct.pack("<I", masked_crc(data))
    path = tmp_path / "r"
    path.write_bytes(good)
    assert [r.numpy() for r in tf.data.TFRecordDataset([str(path)])] == [data]
    path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(tf.errors.DataLossError):
        list(tf.data.TFRecordDataset([str(path)]))
