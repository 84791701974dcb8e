"""The shard view: `shards/wds/`, ImageNet as WebDataset tar shards made on the fly.

Streaming loaders (webdataset, wids, timm, DALI's `fn.readers.webdataset`) read large tar
files of samples rather than a million small files. Every byte of such a shard is known from
the index before one is read -- the tar headers from the names and sizes, the file data from
the images -- so the view serves the shards without writing them:

    shards/wds/_info.json                          timm's dataset info (splits, shard lengths)
    shards/wds/imagenet1k-train-{0000..1023}.tar   the train split, globally shuffled
    shards/wds/imagenet1k-train-{0000..1023}.idx   DALI's index of each shard (`v1.2`)
    shards/wds/imagenet1k-train-wids.json          wids's shard index of the split
    shards/wds/imagenet1k-validation-{00..63}.tar  the val split, in file-name order
    ...

Samples. One per image file of `train/<wnid>/` and `val/<wnid>/` (a name ending in .JPEG,
.jpg or .png, any case; other files, symlinks, unlabelled val files and the test split have no
sample). A sample is three members, in this order: `<key>.cls` (the 0-based class index, in
sorted-wnid order as `train.txt` numbers them, ASCII digits), `<key>.jpg` (the file's bytes,
untouched: the few CMYK or PNG files of ImageNet are served as they are stored) and
`<key>.json` (`{"label": ..., "filename": ..., "width": ..., "height": ...}`, width and height
only where `imagenetfs index --image-info` recorded them). The key is the file name without
its extension, any other dot made `_` (webdataset cuts keys at the first dot); a file whose key
is longer than 95 bytes (a member name must fit ustar's 100 bytes) or whose size does not fit
ustar's 8 GiB has no sample -- ImageNet has none.

Order. Train samples are in a global shuffle that depends on the seed and each file's path
only: ordered by the 64-bit BLAKE2b digest of the path under `train/`, keyed by the seed
(`--shard-seed`, default 0; another seed serves `shards/wds-seed<N>/`), ties by path -- the
same order on every machine and Python, whatever else the split holds. Val samples are in
file-name order. `--shard-order contiguous` (served as `shards/wds-contiguous/`) keeps both
splits in path order instead -- the walk's, the images' own -- for passes that need no mixing
(what each order costs cold: docs/bench/shards.md). Each split is cut into contiguous runs:
`ceil(samples / S)` shards, S = 1,252 samples for train and 782 for val (what full ImageNet's
1,024 and 64 shards hold; `--shard-samples` sets S for both), the remainder one more sample
each to the first shards. Shard numbers have as many digits as the last one (full ImageNet:
4 for train, 2 for val).

Bytes. Plain ustar: one 512-byte header per member (mode 0444, uid and gid 0, no user or group
names, mtime `MTIME`, no pax or GNU records), the data padded with zeros to 512, two zero
blocks at the end, the whole padded to a multiple of 10,240 (GNU tar's record): the same bytes
from every mount of every source layout. A shard's size is known from the layout (below)
without reading a byte; a READ at any offset builds the headers it touches and reads the file
bytes it touches from the images (copied: the worker's splice path sends image runs only).

Layout. Every shard's size depends on the order of both splits: one walk of their class
directories in the index (in Python; the sizes and offsets in numpy) makes the order and each
shard's sizes (`Layout.compute`), keeping the inode numbers of the samples in order (4 bytes
each: ~5 MB for full ImageNet) and the sizes. A mount makes it once, at the first request into
the view, in a short-lived process of its own, into a file that every serving process maps
(layoutfile.py): a serving process keeps the file's pages (page cache, shared) and a few
thousand small objects, and never imports numpy. Measured at full ImageNet's entry count
(docs/bench/shards-fullcount.md): the walk takes 3.5 s (6.7 s over an index with CRCs, which
adds the TFRecord view's record lengths), once per mount; its temporaries (the walk's columns,
then the sizes a block of `BLOCK_SHARDS` shards at a time) peak at ~50 MB (~100 MB with CRCs),
in that process. Without the mount's directory (a `Tree` made without one: tools and tests,
or a daemon that could not make it) the view computes its own layout in-process and gives
the temporaries back to the kernel (`release_freed_memory`). A shard's table -- its samples'
names, sizes, offsets -- is computed when it is first read, from the index (a `getattr` per
sample: ~20 ms for 1,252), and the last `TABLES` are kept, per serving process.

Inodes: the view's range `(SHARDS_VIEW << VIEW_SHIFT) | n` (views.py): n = 1 is `shards/`,
2 the seed's directory, 3 + k its k-th child in name order.

Other formats. `shards/` also lists its siblings' directories (`shards/tfrecord/`,
tfrecord.py: its own inode range, its own reads), and the walk that orders the samples computes
a `Companion`'s number per sample too, so the other format has the same samples in the same
order without a walk of its own.
"""

from __future__ import annotations

import array
import bisect
import ctypes
import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from imagenetfs.errors import CorruptImageError, NoSuchEntry, NotADirectory
from imagenetfs.index import (
    DIR,
    FILE,
    IMAGE_SUFFIXES,
    ROOT_INO,
    Index,
    Node,
    directory_node,
    virtual_file_node,
)
from imagenetfs.squashfs import Piece, WouldBlock

SHARDS = b"shards"
#: The view number of `shards/` (views.py: view v holds (v << VIEW_SHIFT) | n).
SHARDS_VIEW = 0xFFFE
#: The one mtime of every member and file of the view: 2012-01-01 00:00 UTC.
MTIME = 1325376000
#: `--shard-order`: train in a global shuffle (the default), or both splits in path order.
ORDERS = ("shuffled", "contiguous")
#: Samples per shard: full ImageNet's 1,281,167 train samples in 1,024 shards, 50,000 val in 64.
TRAIN_SAMPLES = 1252
VAL_SAMPLES = 782
#: The split names of timm's imagenet-1k-wds, and where each comes from in the tree.
SPLITS = (("train", b"train", TRAIN_SAMPLES), ("validation", b"val", VAL_SAMPLES))
PREFIX = "imagenet1k"
BLOCK = 512
RECORD = 10240
#: Longest key: a member name (`<key>.json`) must fit the 100 bytes of a ustar name.
MAX_KEY = 100 - len(".json")
#: Largest member: 11 octal digits.
MAX_SIZE = 8**11 - 1
#: Shard tables kept per serving process.
TABLES = 32
#: How far past a sequential reader's position in a shard its samples' image bytes are asked
#: for (`Index.advise`), and how near the last READ's end a READ must start to continue it.
READ_AHEAD = 4 << 20
SEQUENTIAL = 1 << 20

_SHARDS_DIR, _SEED_DIR, _FIRST_CHILD = 1, 2, 3
_ZEROS = bytes(RECORD)


def variant(base: bytes, seed: int, order: str) -> bytes:
    """The directory name of one order of a format: `wds`, `wds-seed<N>`, `wds-contiguous`."""
    if order == "contiguous":
        return base + b"-contiguous"
    return base if seed == 0 else base + f"-seed{seed}".encode()


def padded(size: int) -> int:
    """`size` rounded up to whole 512-byte blocks."""
    return -(-size // BLOCK) * BLOCK


def header(name: bytes, size: int) -> bytes:
    """The ustar header of a regular file `name` of `size` bytes, as the module says; the same
    bytes as Python's `tarfile.TarInfo.tobuf(tarfile.USTAR_FORMAT)` writes for it. Made from
    the fields that never change (`_FIXED`) and their checksum's share (`_FIXED_SUM`): it is
    made on every READ that touches it."""
    size_field = b"%011o\0" % size
    checksum = b"%06o\0 " % (_FIXED_SUM + sum(name) + sum(size_field))
    return b"".join(
        (name, bytes(100 - len(name)), _MODE_IDS, size_field, _MTIME_FIELD, checksum, _FIXED)
    )


#: A header's fields after the name that never change: mode, uid, gid; mtime; and what
#: follows the checksum (type `0`, no link name, the `ustar` magic and version 00, no owner
#: names, no device numbers, no prefix).
_MODE_IDS = b"0000444\0" + b"0000000\0" * 2
_MTIME_FIELD = b"%011o\0" % MTIME
_FIXED = b"0" + bytes(100) + b"ustar\x0000" + bytes(BLOCK - 265)
#: Their share of the checksum, which counts its own field as eight spaces.
_FIXED_SUM = sum(_MODE_IDS) + sum(_MTIME_FIELD) + 8 * ord(" ") + sum(_FIXED)


def sample_key(name: bytes) -> bytes | None:
    """The key of a file named `name`, or None when it has no sample (see the module)."""
    if not name.lower().endswith(IMAGE_SUFFIXES):
        return None
    key = name[: name.rindex(b".")].replace(b".", b"_")
    if not key or len(key) > MAX_KEY:
        return None
    return key


def sample_json(label: int, name: bytes, size: tuple[int, int] | None) -> bytes:
    """The `.json` member of a sample."""
    fields: dict[str, object] = {"label": label, "filename": name.decode("utf-8", "replace")}
    if size is not None:
        fields["width"], fields["height"] = size
    return json.dumps(fields).encode()


@dataclass(frozen=True)
class Member:
    name: bytes  # <key>.<ext>
    offset: int  # of its header in the shard; its data follow at offset + 512
    size: int


@dataclass(frozen=True)
class Sample:
    """One sample of a shard: where it starts, its members, and the node of its image."""

    offset: int
    end: int  # the next sample's offset
    key: bytes
    cls: bytes
    node: Node
    json: bytes

    def members(self) -> tuple[Member, Member, Member]:
        cls = Member(self.key + b".cls", self.offset, len(self.cls))
        jpg = Member(self.key + b".jpg", cls.offset + BLOCK + padded(cls.size), self.node.size)
        js = Member(self.key + b".json", jpg.offset + BLOCK + padded(jpg.size), len(self.json))
        return cls, jpg, js

    def index_line(self) -> str:
        """The sample's line of DALI's index: `<ext> <data offset> <size> <name>` a member."""
        return " ".join(
            f"{m.name[len(self.key) + 1 :].decode()} {m.offset + BLOCK} {m.size} "
            f"{m.name.decode('utf-8', 'surrogateescape')}"
            for m in self.members()
        )


def sample_size(cls: int, size: int, js: int) -> int:
    return 3 * BLOCK + padded(cls) + padded(size) + padded(js)


class Located(Protocol):
    """A sample or a record of a shard: where it lies in the shard, and its image."""

    @property
    def offset(self) -> int: ...
    @property
    def end(self) -> int: ...
    @property
    def node(self) -> Node: ...


@dataclass
class Ahead:
    """Where a shard's readers are: the end of its last READ, and how far its samples' image
    bytes have been asked for (`follow`)."""

    last_end: int = 0
    advised: int = 0

    def follow(
        self, index: Index, items: Sequence[Located], starts: list[int], offset: int, end: int
    ) -> None:
        """A READ of [offset, end) of a shard of `items` (starting at `starts`). When READs
        follow each other (one starts within `SEQUENTIAL` of the last one's end: a streaming
        reader, whose kernel read-ahead sends them in order to any worker), ask for the image
        bytes of the items up to `READ_AHEAD` past this one's end, a batch at a time
        (`Index.advise`): the disk (or a shared filesystem) then reads them all at once
        instead of one sample per waiting READ. A READ elsewhere (a reader seeking to
        samples: wids, DALI) asks for nothing. A READ at the shard's start begins a pass, and
        a READ elsewhere ends one: the next pass asks afresh (the last one's bytes may be
        gone from the page cache by then). The kernel decides what to read; nothing is kept
        here but two offsets."""
        sequential = offset == 0 or abs(offset - self.last_end) <= SEQUENTIAL
        if offset == 0 or not sequential:
            self.advised = 0
        self.last_end = end
        if not items or not sequential or self.advised >= min(end + READ_AHEAD // 2, items[-1].end):
            return
        i = max(bisect.bisect_right(starts, max(offset, self.advised)) - 1, 0)
        stop = end + READ_AHEAD
        while i < len(items) and items[i].offset < stop:
            if items[i].end > self.advised:
                index.advise(items[i].node)
            i += 1
        self.advised = items[i - 1].end if i else stop


#: What a shard's bytes are made of, in order (`WdsView._spans`): bytes made by the view, or
#: (image node, offset, length) of bytes of an image.
Span = bytes | tuple[Node, int, int]


#: A part of a shard's item, as `spans` takes it: (offset in the shard, length, the bytes,
#: the image's node for its data, or None for bytes `spans`' `made` makes when touched).
Part = tuple[int, int, bytes | Node | None]


def spans(
    items: Sequence[Any],
    starts: list[int],
    offset: int,
    end: int,
    parts: Callable[[Any], Iterable[Part]],
    made: Callable[[Any, int], bytes] | None = None,
) -> Iterator[Span]:
    """Bytes [offset, end) of a shard of `items` (each starting at `starts`), as far as
    the items reach, in order: the slices of each item's `parts` that fall in the range --
    bytes, or (image node, offset, length) of bytes of its image."""
    i = max(bisect.bisect_right(starts, offset) - 1, 0)
    pos = offset
    while pos < end and i < len(items):
        item = items[i]
        for start, length, piece in parts(item):
            if pos >= end:
                break
            if pos >= start + length:
                continue
            a, b = pos - start, min(end, start + length) - start
            if isinstance(piece, Node):
                yield piece, a, b - a
            elif piece is None:
                assert made is not None
                yield made(item, start)[a:b]
            else:
                yield piece[a:b]
            pos = start + b
        i += 1


def read_spans(index: Index, spans: Iterator[Span], nowait: bool) -> bytes:
    """The bytes of `spans`, images read (with `nowait`, `squashfs.WouldBlock` rather than
    wait for image bytes that are not in the page cache); an image shorter than indexed is
    a `CorruptImageError`."""
    parts: list[bytes] = []
    for span in spans:
        if isinstance(span, bytes):
            parts.append(span)
            continue
        image, a, n = span
        data = index.read(image, a, n, nowait=nowait)
        if len(data) != n:
            raise CorruptImageError(
                f"{image.name!r}: {len(data)} bytes at {a} where {n} were "
                "indexed (its image was cut short?)"
            )
        parts.append(data)
    return b"".join(parts)


def locate_spans(index: Index, spans: Iterator[Span]) -> list[Piece] | None:
    """`spans` as a worker sends them (`ops.Core.locate_read`): the runs of image bytes
    stored as they are, with the bytes between them joined -- and image bytes to decompress
    as bytes when they are in memory. None where some would have to wait, or are not all
    there: `read_spans` then answers (or says why)."""
    pieces: list[Piece] = []
    made: list[bytes] = []  # bytes to go before the next run
    for span in spans:
        if isinstance(span, bytes):
            made.append(span)
            continue
        image, a, n = span
        runs = index.locate(image, a, n)
        if runs is None:
            try:
                data = index.read(image, a, n, nowait=True)
            except WouldBlock:
                return None
            if len(data) != n:
                return None
            made.append(data)
            continue
        if made:
            pieces.append(b"".join(made))
            made = []
        pieces.extend(runs)
    if made:
        pieces.append(b"".join(made))
    return pieces


@dataclass(frozen=True)
class Table:
    """One shard, member by member."""

    samples: list[Sample]
    starts: list[int]  # each sample's offset
    size: int  # the whole shard's
    ahead: Ahead = field(default_factory=Ahead)

    def index_text(self) -> bytes:
        lines = [f"v1.2 {len(self.samples)}"] + [s.index_line() for s in self.samples]
        return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


#: (label, wnid, file name, file size, (width, height) or None) of a sample -> a number
LengthOf = Callable[[int, bytes, bytes, int, tuple[int, int] | None], int]


@dataclass(frozen=True)
class Companion:
    """Another format over the same samples in the same order (tfrecord.py): a number per
    sample, computed in the walk that orders them (`length`), and what that format keeps of
    those numbers per split once the order is known (`summarize(split name, the numbers in
    order as an int64 numpy array)`, kept in `Split.companion`)."""

    length: LengthOf
    summarize: Callable[[str, Any], Any]


@dataclass(frozen=True)
class Split:
    """One split of the view, in order and cut into shards."""

    name: str  # train, validation
    digits: int
    inos: Sequence[int]  # the samples' inodes, in order (an array, or a mapped file's)
    first: list[int]  # the first sample of each shard; one more entry: the sample count
    sizes: list[int]  # each shard's size in bytes
    index_sizes: list[int]  # each shard's DALI index's size
    companion: Any = None  # `Companion.summarize`'s result, when there is a companion

    @property
    def shards(self) -> int:
        return len(self.sizes)

    def shard_name(self, n: int, ext: str = "tar") -> str:
        return f"{PREFIX}-{self.name}-{n:0{self.digits}d}.{ext}"

    def lengths(self) -> list[int]:
        return [b - a for a, b in zip(self.first, self.first[1:], strict=False)]


@dataclass(frozen=True)
class _Child:
    name: bytes
    split: int  # index in the layout's splits; -1 for _info.json
    shard: int  # -1 for the split's wids index
    kind: str  # tar, idx, wids, info


class Layout:
    """Both splits' order and shard sizes (`compute`d from the index, or read from a layout
    file: layoutfile.py), the class labels, and the seed directory's children."""

    def __init__(self, labels: dict[int, int], splits: list[Split]) -> None:
        self.labels = labels
        self.splits = splits
        children = [_Child(b"_info.json", -1, -1, "info")]
        for s, split in enumerate(self.splits):
            children.append(_Child(f"{PREFIX}-{split.name}-wids.json".encode(), s, -1, "wids"))
            for n in range(split.shards):
                for ext in ("tar", "idx"):
                    children.append(_Child(split.shard_name(n, ext).encode(), s, n, ext))
        children.sort(key=lambda c: c.name)
        self.children = children
        self.position = {c.name: k for k, c in enumerate(children)}
        self.info = self._info()
        self.wids = [self._wids(split) for split in self.splits]

    @classmethod
    def compute(
        cls,
        index: Index,
        seed: int,
        per_shard: int | None,
        image_size: Callable[[int], tuple[int, int] | None],
        companion: Companion | None = None,
        order: str = "shuffled",
    ) -> Layout:
        """The layout of `index`'s train and val splits: the walk, in this process."""
        labels = labels_of(index)
        splits = []
        for name, directory, default in SPLITS:
            split = _split(
                index,
                name,
                directory,
                labels,
                seed,
                per_shard or default,
                image_size,
                companion,
                order,
            )
            if split is not None:
                splits.append(split)
        return cls(labels, splits)

    def _info(self) -> bytes:
        splits = {
            split.name: {
                "name": split.name,
                "filenames": [split.shard_name(n) for n in range(split.shards)],
                "shard_lengths": split.lengths(),
                "num_samples": split.first[-1],
            }
            for split in self.splits
        }
        return (json.dumps({"name": "imagenet-1k", "splits": splits}, indent=2) + "\n").encode()

    @staticmethod
    def _wids(split: Split) -> bytes:
        shardlist = [
            {"url": split.shard_name(n), "nsamples": length, "filesize": split.sizes[n]}
            for n, length in enumerate(split.lengths())
        ]
        body = {
            "__kind__": "wids-shard-index-v1",
            "wids_version": 1,
            "name": f"{PREFIX}-{split.name}",
            "shardlist": shardlist,
        }
        return (json.dumps(body, indent=2) + "\n").encode()


def labels_of(index: Index) -> dict[int, int]:
    """Class directory inode -> label: sorted wnids of train/ (else val/), as rootfiles.py
    numbers `train.txt`; the other split's directories of the same wnids get the same."""
    wnids: dict[bytes, int] = {}
    for directory in (b"train", b"val"):
        try:
            split = index.lookup(ROOT_INO, directory)
        except (NoSuchEntry, NotADirectory):
            continue
        if split.kind == DIR and not wnids:
            names = sorted(name for _, kind, name in index.entries(split.ino) if kind == DIR)
            wnids = {name: label for label, name in enumerate(names)}
    labels: dict[int, int] = {}
    for directory in (b"train", b"val"):
        try:
            split = index.lookup(ROOT_INO, directory)
        except (NoSuchEntry, NotADirectory):
            continue
        if split.kind == DIR:
            for ino, kind, name in index.entries(split.ino):
                if kind == DIR and name in wnids:
                    labels[ino] = wnids[name]
    return labels


def _split(
    index: Index,
    name: str,
    directory: bytes,
    labels: dict[int, int],
    seed: int,
    per_shard: int,
    image_size: Callable[[int], tuple[int, int] | None],
    companion: Companion | None = None,
    order_by: str = "shuffled",
) -> Split | None:
    """One split's order and shard sizes: a walk of its class directories in the index (one
    pass in Python, ~1 µs a file beyond the index's own), the rest in numpy. The walk is in
    path order (class directories, then files, by name): the order `contiguous` keeps."""
    import numpy as np  # (only once shards are asked for)

    try:
        top = index.lookup(ROOT_INO, directory)
    except (NoSuchEntry, NotADirectory):
        return None
    if top.kind != DIR:
        return None
    inos, sizes, keys, labels_of, jsons = (array.array(t) for t in ("I", "Q", "H", "I", "I"))
    others = array.array("Q")  # (the companion's numbers)
    names: list[bytes] = []  # (val only: ordered by name)
    digests = array.array("Q")  # (train only: the shuffle's sort keys)
    seed_key = seed.to_bytes(8, "little", signed=True)
    contiguous = order_by == "contiguous"
    train = directory == b"train" and not contiguous
    for wnid in index.readdir(top.ino):
        label = labels.get(wnid.ino)
        if wnid.kind != DIR or label is None:
            continue
        prefix = wnid.name + b"/"
        for ino, size, file_name in index.files(wnid.ino):
            if size > MAX_SIZE:
                continue
            key = sample_key(file_name)
            if key is None:
                continue
            inos.append(ino)
            sizes.append(size)
            keys.append(len(key))
            labels_of.append(label)
            dims = image_size(ino)
            jsons.append(json_length(label, file_name, dims))
            if companion is not None:
                others.append(companion.length(label, wnid.name, file_name, size, dims))
            if train:
                digest = hashlib.blake2b(prefix + file_name, digest_size=8, key=seed_key)
                digests.append(int.from_bytes(digest.digest(), "big"))
            elif not contiguous:
                names.append(file_name)
    count = len(inos)
    if contiguous:
        order = np.arange(count, dtype=np.int64)
    elif train:  # by digest; ties (never seen) by path: the walk's order
        order = np.argsort(np.frombuffer(digests, dtype=np.uint64), kind="stable")
    else:
        order = np.array(sorted(range(count), key=names.__getitem__), dtype=np.int64)
    del names, digests
    first = cut(count, per_shard)
    shards = len(first) - 1
    summary = None
    if companion is not None:
        ordered_others = np.frombuffer(others, dtype=np.uint64).astype(np.int64)[order]
        summary = companion.summarize(name, ordered_others)
        del ordered_others, others
    if not count:
        return Split(name, 1, array.array("I"), first, [], [], summary)
    columns = (
        np.frombuffer(sizes, dtype=np.uint64),
        np.frombuffer(labels_of, dtype=np.uint32),
        np.frombuffer(jsons, dtype=np.uint32),
        np.frombuffer(keys, dtype=np.uint16),
    )
    shard_sizes: list[int] = []
    index_sizes: list[int] = []
    for lo in range(0, shards, BLOCK_SHARDS):  # (a block at a time: its temporaries are small)
        hi = min(lo + BLOCK_SHARDS, shards)
        data, lines = _shard_sums(np, columns, order[first[lo] : first[hi]], first[lo : hi + 1])
        shard_sizes += [-(-(int(d) + 2 * BLOCK) // RECORD) * RECORD for d in data]
        index_sizes += [
            len(f"v1.2 {first[n + 1] - first[n]}\n") + int(lines[n - lo]) for n in range(lo, hi)
        ]
    ordered = array.array("I", np.frombuffer(inos, dtype=np.uint32)[order].tobytes())
    return Split(name, len(str(shards - 1)), ordered, first, shard_sizes, index_sizes, summary)


#: Shards whose sizes `_split` computes at once (64: ~80,000 samples, ~10 MB of temporaries).
BLOCK_SHARDS = 64


def _shard_sums(np: Any, columns: tuple[Any, ...], pick: Any, bounds: list[int]) -> Any:
    """(data bytes, DALI index line bytes) of each of a run of consecutive shards: `pick` the
    positions (in the walk's order) of their samples in shard order, `bounds` the first
    sample of each shard and the end, as positions in the split's order."""
    sizes, labels_of, jsons, keys = columns
    file_size = sizes[pick].astype(np.int64)
    cls_len = _ndigits(np, labels_of[pick].astype(np.int64))
    json_len = jsons[pick].astype(np.int64)
    key_len = keys[pick].astype(np.int64)
    sample = 3 * BLOCK + _padded(cls_len) + _padded(file_size) + _padded(json_len)
    starts = np.array(bounds[:-1], dtype=np.int64) - bounds[0]
    # each sample's offset in its shard: the running sum, less the shard's start
    total = np.cumsum(sample) - sample
    offset = total - np.repeat(total[starts], np.diff(bounds))
    line = (_LINE + 3 * key_len + _ndigits(np, cls_len) + _ndigits(np, file_size)
            + _ndigits(np, json_len) + _ndigits(np, offset + BLOCK)
            + _ndigits(np, offset + 2 * BLOCK + _padded(cls_len))
            + _ndigits(np, offset + sample - _padded(json_len)))  # fmt: skip
    return np.add.reduceat(sample, starts), np.add.reduceat(line, starts)


def release_freed_memory() -> None:
    """Give the C heap's free pages back to the kernel (glibc's `malloc_trim(0)`; nothing
    where the C library has none): the layout's temporaries, freed as it goes, otherwise
    partly stay in the serving process's heap, since glibc returns free pages only at the
    heap's top. Measured at the full entry count, anonymous memory the layout leaves behind:
    in a worker (its fixed thresholds, `wire.steady_heap`) 12 MB, 6 MB after the trim; in a
    process with glibc's own (`--workers 0`), which raises its mmap threshold to the size of
    the first freed arrays so the later ones come from the heap, 110 MB, 7 MB after it."""
    global _trim
    if _trim is None:
        try:
            _trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _trim = False
    if _trim:
        _trim(0)


_trim: Any = None  # (libc's malloc_trim, False where there is none; looked up once)


def cut(count: int, per_shard: int) -> list[int]:
    """The first sample of each of the `ceil(count / per_shard)` shards of `count` samples,
    the remainder one more sample each to the first shards; one more entry: `count`."""
    shards = -(-count // per_shard)
    first = [0]
    if shards:
        base, extra = divmod(count, shards)
        for n in range(shards):
            first.append(first[-1] + base + (n < extra))
    return first


#: The characters of a DALI index line other than the key (3x) and the six numbers.
_LINE = len("cls   .cls jpg   .jpg json   .json\n")
_POWERS = [10**k for k in range(1, 19)]  # (int64 holds up to 9.2e18)


def _ndigits(np: Any, values: Any) -> Any:
    """Decimal digits of each of `values` (non-negative int64)."""
    return np.searchsorted(np.array(_POWERS, dtype=np.int64), values, side="right") + 1


def _padded(values: Any) -> Any:
    return (values + BLOCK - 1) // BLOCK * BLOCK


_PLAIN = re.compile(rb"[ !#-\[\]-~]*")


def json_length(label: int, name: bytes, size: tuple[int, int] | None) -> int:
    """`len(sample_json(label, name, size))`, without making it for a plain ASCII name."""
    if not _PLAIN.fullmatch(name):
        return len(sample_json(label, name, size))
    length = len('{"label": , "filename": ""}') + len(str(label)) + len(name)
    if size is not None:
        length += len(', "width": , "height": ') + len(str(size[0])) + len(str(size[1]))
    return length


class Sibling(Protocol):
    """Another directory of `shards/` (tfrecord.py's): its name and its node."""

    dir_name: bytes

    def dir_node(self) -> Node: ...


class WdsView:
    """`shards/` and the one seed directory in it, over `index` (see the module docstring).
    `shards/` lists the `siblings` too (other formats' directories, each serving itself); a
    `companion` rides along in the walk that orders the samples (see `Companion`). The layout
    comes from `make_layout` when given (a serving process's: the mount's layout file,
    layoutfile.py), else it is computed here (`Layout.compute`)."""

    def __init__(
        self,
        index: Index,
        *,
        seed: int = 0,
        per_shard: int | None = None,
        order: str = "shuffled",
        view_shift: int,
        siblings: Sequence[Sibling] = (),
        companion: Companion | None = None,
        make_layout: Callable[[], Layout] | None = None,
    ) -> None:
        self.index = index
        self.seed = seed
        self.per_shard = per_shard
        self.order = order
        self.dir_name = variant(b"wds", seed, order)
        self._shift = view_shift
        self._base = SHARDS_VIEW << view_shift
        self.root_ino = self._base | _SHARDS_DIR
        self.siblings = tuple(siblings)
        self._companion = companion
        self._make_layout = make_layout
        self._layout: Layout | None = None
        self._lock = threading.Lock()
        self._tables: OrderedDict[tuple[int, int], Table] = OrderedDict()

    # --- the layout ------------------------------------------------------------------------

    @property
    def layout_ready(self) -> bool:
        """Whether the layout is made (else the next request into the view waits for it)."""
        return self._layout is not None

    @property
    def layout(self) -> Layout:
        layout = self._layout
        if layout is None:
            with self._lock:
                if self._layout is None:
                    if self._make_layout is not None:
                        self._layout = self._make_layout()
                    else:
                        self._layout = Layout.compute(
                            self.index,
                            self.seed,
                            self.per_shard,
                            self._size_of,
                            self._companion,
                            self.order,
                        )
                        release_freed_memory()
                layout = self._layout
        return layout

    def _size_of(self, ino: int) -> tuple[int, int] | None:
        return self.index.image_size(ino)

    def table(self, s: int, n: int) -> Table:
        """Shard `n` of split `s`, member by member (kept for the last `TABLES` shards)."""
        found = self._tables.get((s, n))
        if found is not None:
            return found
        layout = self.layout
        split = layout.splits[s]
        samples, starts, offset = [], [], 0
        for ino in split.inos[split.first[n] : split.first[n + 1]]:
            node = self.index.getattr(ino)
            key = sample_key(node.name)
            assert key is not None
            label = layout.labels[node.parent]
            js = sample_json(label, node.name, self._size_of(ino))
            cls = str(label).encode()
            end = offset + sample_size(len(cls), node.size, len(js))
            samples.append(Sample(offset, end, key, cls, node, js))
            starts.append(offset)
            offset = end
        table = Table(samples, starts, split.sizes[n])
        with self._lock:
            self._tables[(s, n)] = table
            while len(self._tables) > TABLES:
                self._tables.popitem(last=False)
        return table

    # --- the tree --------------------------------------------------------------------------

    def owns(self, ino: int) -> bool:
        return ino >> self._shift == SHARDS_VIEW

    def root_node(self) -> Node:
        return directory_node(self.root_ino, ROOT_INO, SHARDS, MTIME, 1 + len(self.siblings))

    def _subdirs(self) -> list[tuple[bytes, Callable[[], Node]]]:
        """`shards/`'s directories in name order: this view's and the siblings'."""
        found = [(self.dir_name, self._seed_dir)]
        found += [(sibling.dir_name, sibling.dir_node) for sibling in self.siblings]
        return sorted(found, key=lambda pair: pair[0])

    def _seed_dir(self) -> Node:
        return directory_node(self._base | _SEED_DIR, self.root_ino, self.dir_name, MTIME, 0)

    def getattr(self, ino: int) -> Node:
        n = ino - self._base
        if n == _SHARDS_DIR:
            return self.root_node()
        if n == _SEED_DIR:
            return self._seed_dir()
        layout = self.layout
        k = n - _FIRST_CHILD
        if not 0 <= k < len(layout.children):
            raise NoSuchEntry(ino)
        child = layout.children[k]
        return virtual_file_node(ino, self._base | _SEED_DIR, child.name, self._size(child), MTIME)

    def _size(self, child: _Child) -> int:
        layout = self.layout
        if child.kind == "info":
            return len(layout.info)
        if child.kind == "wids":
            return len(layout.wids[child.split])
        split = layout.splits[child.split]
        if child.kind == "tar":
            return split.sizes[child.shard]
        return split.index_sizes[child.shard]

    def lookup(self, parent: int, name: bytes) -> Node:
        n = parent - self._base
        if n == _SHARDS_DIR:
            for dir_name, node in self._subdirs():
                if name == dir_name:
                    return node()
            raise NoSuchEntry(name)
        if n == _SEED_DIR:
            k = self.layout.position.get(name)
            if k is None:
                raise NoSuchEntry(name)
            return self.getattr(self._base | (_FIRST_CHILD + k))
        self.getattr(parent)  # (ENOENT for no such inode)
        raise NotADirectory(parent)

    def entries(self, ino: int, offset: int = 0) -> Iterator[tuple[int, int, bytes]]:
        n = ino - self._base
        if n == _SHARDS_DIR:
            for dir_name, node in self._subdirs()[max(offset, 0) :]:
                yield node().ino, DIR, dir_name
            return
        if n == _SEED_DIR:
            for k, child in enumerate(self.layout.children[max(offset, 0) :], max(offset, 0)):
                yield self._base | (_FIRST_CHILD + k), FILE, child.name
            return
        self.getattr(ino)
        raise NotADirectory(ino)

    def readdir(self, ino: int, offset: int = 0) -> Iterator[Node]:
        if ino - self._base == _SHARDS_DIR:
            for _, node in self._subdirs()[max(offset, 0) :]:
                yield node()
            return
        for child, _, _ in self.entries(ino, offset):
            yield self.getattr(child)

    # --- bytes -----------------------------------------------------------------------------

    def read(self, node: Node, offset: int, size: int, *, nowait: bool = False) -> bytes:
        """Bytes of a file of the view; with `nowait`, `squashfs.WouldBlock` rather than wait
        for image bytes that are not in the page cache."""
        k = node.ino - self._base - _FIRST_CHILD
        layout = self.layout
        child = layout.children[k]
        end = min(offset + size, node.size)
        if offset >= end:
            return b""
        if child.kind == "tar":
            table = self.table(child.split, child.shard)
            table.ahead.follow(self.index, table.samples, table.starts, offset, end)
            return read_spans(self.index, self._spans(table, offset, end), nowait)
        if child.kind == "info":
            data = layout.info
        elif child.kind == "wids":
            data = layout.wids[child.split]
        else:
            data = self.table(child.split, child.shard).index_text()
        return data[offset:end]

    def locate(self, node: Node, offset: int, size: int) -> list[Piece] | None:
        """A READ of a shard as the worker sends it (`locate_spans`); None for the view's
        other files, and where some bytes would have to wait: `read` answers those."""
        k = node.ino - self._base - _FIRST_CHILD
        child = self.layout.children[k]
        end = min(offset + size, node.size)
        if child.kind != "tar" or offset >= end:
            return None
        table = self.table(child.split, child.shard)
        table.ahead.follow(self.index, table.samples, table.starts, offset, end)
        return locate_spans(self.index, self._spans(table, offset, end))

    @staticmethod
    def _spans(table: Table, offset: int, end: int) -> Iterator[Span]:
        """Bytes [offset, end) of a shard, in order: bytes made here, or (image node,
        offset, length) of bytes of a sample's image; past the last sample, zeros."""
        yield from spans(table.samples, table.starts, offset, end, _pieces, _made)
        pos = max(offset, table.samples[-1].end if table.samples else 0)
        while pos < end:  # the end: zeros
            chunk = min(end - pos, RECORD)
            yield _ZEROS[:chunk]
            pos += chunk


def _pieces(sample: Sample) -> Iterator[tuple[int, int, Node | None]]:
    """(offset in the shard, length, what) of each part of a sample's bytes, in order: the
    image's node for its data, None for bytes `_made` makes when a READ touches them."""
    cls_end = sample.offset + BLOCK + padded(len(sample.cls))
    data = cls_end + BLOCK
    size = sample.node.size
    yield sample.offset, cls_end - sample.offset, None
    yield cls_end, BLOCK, None
    yield data, size, sample.node
    yield data + size, padded(size) - size, None
    yield data + padded(size), sample.end - data - padded(size), None


def _made(sample: Sample, start: int) -> bytes:
    """The bytes of the part of `sample` that starts at `start` (see `_pieces`): `.cls`'s
    header and data, `.jpg`'s header, its padding, or `.json`'s header and data."""
    key, size = sample.key, sample.node.size
    if start == sample.offset:
        cls = sample.cls
        return header(key + b".cls", len(cls)) + cls.ljust(padded(len(cls)), b"\0")
    jpg = sample.offset + BLOCK + padded(len(sample.cls))
    if start == jpg:
        return header(key + b".jpg", size)
    if start == jpg + BLOCK + padded(size):
        js = sample.json
        return header(key + b".json", len(js)) + js.ljust(padded(len(js)), b"\0")
    return bytes(padded(size) - size)
