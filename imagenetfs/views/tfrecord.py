"""The TFRecord view: `shards/tfrecord/`, ImageNet as the TFRecord shards TensorFlow's ImageNet
preprocessing writes, made on the fly from the index:

    shards/tfrecord/dataset_info.json                   splits, shard names and lengths
    shards/tfrecord/train-{00000..01023}-of-01024       train, in the WebDataset view's order
    shards/tfrecord/validation-{00000..00127}-of-00128  val, in file-name order
    shards/tfrecord/idx/<shard>.idx                     DALI's index of a shard (`tfrecord2idx`)

Samples and order are the WebDataset view's (shards.py), taken from its layout -- the walk that
orders the samples computes each record's length too (a `shards.Companion`) -- so both views
hold the same samples in the same order; another `--shard-seed` serves `shards/tfrecord-seed<N>/`,
`--shard-order contiguous` `shards/tfrecord-contiguous/`.
Each split is cut into `ceil(samples / S)` shards, S = 1,252 for train and 391 for val (full
ImageNet's 1,024 and 128 shards: `imagenet_to_gcs.py`'s counts; `--shard-samples` sets S for
both), the remainder one more record each to the first shards. Shard numbers have five digits
(more only past 99,999 shards), as TensorFlow's names do. The DALI indexes are in `idx/`, not
beside the shards, so that the `train-*` pattern TensorFlow's input code globs matches shards
only.

Records. Each sample is one record: `uint64 length` (little-endian), the masked CRC32C of those
8 bytes, a serialized `tf.train.Example`, the masked CRC32C of the Example. The Example has
`imagenet_to_gcs.py`'s features, written by `example_parts` below with the keys in sorted
order (as TensorFlow's deterministic serialization writes a map): `image/channels` 3,
`image/class/label` the 0-based class index + 1, `image/class/synset` the wnid,
`image/colorspace` `RGB`, `image/encoded` the file's bytes untouched (the few CMYK and PNG files
of ImageNet as stored: TensorFlow's script re-encodes them), `image/filename` the file name,
`image/format` `JPEG`, `image/height`, `image/width` (from the JPEG's header; 0 for a file
whose header gave none).

CRCs. A record's CRCs must be right before a byte of its image is read. The image pass of the
index build (`imagenetfs index --image-info`, which reads every file once) records each file's
CRC32C (4 bytes in the index, beside its width and height); a record's data CRC is that CRC
combined with the CRCs of the Example's bytes before and after the image (`crc_combine`: CRC
arithmetic on 32-bit values, as zlib's `crc32_combine` does, no pass over the image). An index
without CRCs serves no records: the view's directory holds only `README.txt`, one line naming
the command that records them. A file whose CRC is missing from an index that has them fails
the reads of its shard (EIO) rather than serve a wrong one.

Layout and reads. Shard sizes and index sizes come from the record lengths of the layout's walk
(numpy); a shard's table -- each record's offset, framing bytes and image -- is made when the
shard is first read, from the index (a `getattr` per record, the Example's bytes, the CRC
combination: ~18 µs a record, ~25 ms for 1,252), and the last `TABLES` are kept. The record
lengths add ~1.2 µs a file to the layout's walk (~1.6 s for full ImageNet, once per mount:
layoutfile.py), and a shard's table holds ~200 bytes a record. A READ at any offset copies the
bytes it touches: the made bytes from the table, the image bytes from the index (`Index.read`).

Inodes: the view's range `(TFRECORD_VIEW << VIEW_SHIFT) | n`: n = 1 the seed directory, 2 its
`idx/`, 3 + k the k-th of `Layout.files` (`dataset_info.json`, then the shards in name order;
`README.txt` alone when there are no CRCs), 3 + len(files) + k the k-th index file.
"""

from __future__ import annotations

import functools
import json
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from imagenetfs.errors import CorruptImageError, NoSuchEntry, NotADirectory
from imagenetfs.index import (
    DIR,
    FILE,
    Index,
    Node,
    directory_node,
    rebuild_command,
    virtual_file_node,
)
from imagenetfs.squashfs import Piece
from imagenetfs.views.shards import (
    MTIME,
    Ahead,
    Companion,
    Part,
    Span,
    Split,
    cut,
    locate_spans,
    read_spans,
    spans,
    variant,
)

TFRECORD = b"tfrecord"
#: The view number of `shards/tfrecord/` (tree.py: view v holds (v << VIEW_SHIFT) | n).
TFRECORD_VIEW = 0xFFFD
#: Samples per shard: full ImageNet's 1,281,167 train samples in 1,024 shards, 50,000 val in 128.
PER_SHARD = {"train": 1252, "validation": 391}
DIGITS = 5
#: Shard tables kept per serving process.
TABLES = 32
INFO = b"dataset_info.json"
IDX = b"idx"
README = b"README.txt"

_SEED_DIR, _IDX_DIR, _FIRST = 1, 2, 3

# --- the Example ----------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _vlen(n: int) -> int:
    """`len(_varint(n))`."""
    return max(1, (n.bit_length() + 6) // 7)


def _field(payload: bytes) -> bytes:
    """Field 1, length-delimited (tag byte 0x0a), holding `payload`."""
    return b"\n" + _varint(len(payload)) + payload


def _feature_entry(key: bytes, feature: bytes) -> bytes:
    """One entry of `Features.feature` (a map<string, Feature>: key field 1, value field 2)."""
    return _field(_field(key) + b"\x12" + _varint(len(feature)) + feature)


def _bytes_feature(key: bytes, value: bytes) -> bytes:
    return _feature_entry(key, _field(_field(value)))  # Feature.bytes_list = BytesList{value}


_SMALL = [bytes((n,)) for n in range(0x80)]


@functools.lru_cache(maxsize=8192)  # (labels, widths, heights repeat)
def _int_feature(key: bytes, value: int) -> bytes:
    # Feature.int64_list (field 3) = Int64List{value (field 1, packed)}
    packed = _field(_varint(value))
    return _feature_entry(key, b"\x1a" + _varint(len(packed)) + packed)


@functools.lru_cache(maxsize=2048)
def _synset_feature(wnid: bytes) -> bytes:
    return _bytes_feature(_SYNSET_KEY, wnid)


_ENCODED = b"image/encoded"
_BEFORE_FIXED = _int_feature(b"image/channels", 3)
_COLORSPACE = _bytes_feature(b"image/colorspace", b"RGB")
_FORMAT = _bytes_feature(b"image/format", b"JPEG")


def _L(n: int) -> int:
    """Bytes of a length-delimited field with a one-byte tag and `n` bytes of payload."""
    return 1 + _vlen(n) + n


def _int_entry_len(key_len: int, value: int) -> int:
    return _L(_L(key_len) + _L(_L(_L(_vlen(value)))))


def _bytes_entry_len(key_len: int, value_len: int) -> int:
    return _L(_L(key_len) + _L(_L(_L(value_len))))


_FIXED_LEN = len(_BEFORE_FIXED) + len(_COLORSPACE) + len(_FORMAT)
_LABEL_KEY, _SYNSET_KEY, _FILENAME_KEY = (
    b"image/class/label",
    b"image/class/synset",
    b"image/filename",
)


def _by_vlen(key: bytes) -> list[int]:
    """An int feature's entry length, by the varint length (1..10) of its value."""
    return [0] + [_int_entry_len(len(key), 1 << (7 * (v - 1))) for v in range(1, 11)]


#: Entry lengths, looked up by the varint length of an int value or by the length of a short
#: bytes value: the walk's per-file arithmetic (~1 µs a file).
_SHORT = 1024
_LABEL_BY_VLEN = _by_vlen(_LABEL_KEY)
_HEIGHT_BY_VLEN = _by_vlen(b"image/height")
_WIDTH_BY_VLEN = _by_vlen(b"image/width")
_SYNSET_BY_LEN = [_bytes_entry_len(len(_SYNSET_KEY), n) for n in range(_SHORT)]
_FILENAME_BY_LEN = [_bytes_entry_len(len(_FILENAME_KEY), n) for n in range(_SHORT)]


def example_length(
    label: int, wnid: bytes, name: bytes, size: int, dims: tuple[int, int] | None
) -> int:
    """`len` of the Example `example_parts` makes (with the image's `size` bytes), computed
    without making it: the walk asks it of every file. `label` 0-based."""
    width, height = dims or (0, 0)
    synset, filename = len(wnid), len(name)
    features = (
        _FIXED_LEN
        + _LABEL_BY_VLEN[((label + 1).bit_length() + 6) // 7 or 1]
        + (
            _SYNSET_BY_LEN[synset]
            if synset < _SHORT
            else _bytes_entry_len(len(_SYNSET_KEY), synset)
        )
        + _bytes_entry_len(len(_ENCODED), size)
        + (
            _FILENAME_BY_LEN[filename]
            if filename < _SHORT
            else _bytes_entry_len(len(_FILENAME_KEY), filename)
        )
        + _HEIGHT_BY_VLEN[(height.bit_length() + 6) // 7 or 1]
        + _WIDTH_BY_VLEN[(width.bit_length() + 6) // 7 or 1]
    )
    return _L(features)


def record_length(
    label: int, wnid: bytes, name: bytes, size: int, dims: tuple[int, int] | None
) -> int:
    """Bytes of the record of a sample: framing (16) and its Example."""
    return 16 + example_length(label, wnid, name, size, dims)


def example_parts(
    label: int, wnid: bytes, name: bytes, size: int, dims: tuple[int, int] | None
) -> tuple[bytes, bytes]:
    """The serialized Example of a sample, less its image: (the bytes before the image's
    `size` bytes, the bytes after them). `label` 0-based (the Example holds it + 1)."""
    width, height = dims or (0, 0)
    before = (
        _BEFORE_FIXED + _int_feature(_LABEL_KEY, label + 1) + _synset_feature(wnid) + _COLORSPACE
    )
    bytes_list = _L(size)
    feature = _L(bytes_list)
    entry = _L(len(_ENCODED)) + 1 + _vlen(feature) + feature
    encoded_head = (
        b"\n" + _varint(entry) + _field(_ENCODED) + b"\x12" + _varint(feature)
        + b"\n" + _varint(bytes_list) + b"\n" + _varint(size)
    )  # fmt: skip
    after = (
        _bytes_feature(_FILENAME_KEY, name)
        + _FORMAT
        + _int_feature(b"image/height", height)
        + _int_feature(b"image/width", width)
    )
    features = len(before) + len(encoded_head) + size + len(after)
    return b"\n" + _varint(features) + before + encoded_head, after


# --- CRC32C -----------------------------------------------------------------------------------

_POLY = 0x82F63B78  # Castagnoli, bit-reflected
_X0 = 1 << 31  # the polynomial 1 (x^0), reflected


def _multmodp(a: int, b: int) -> int:
    """a(x) * b(x) modulo the CRC polynomial (both reflected; `a` non-zero)."""
    m, p = _X0, 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


_X2N = [_X0 >> 1]  # x^(2^k) mod p, k = 0..63
for _ in range(63):
    _X2N.append(_multmodp(_X2N[-1], _X2N[-1]))


def _x8n(n: int) -> int:
    """x^(8n) mod p: the operator that appends n zero bytes to a CRC."""
    p, k = _X0, 3
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 63], p)
        n >>= 1
        k += 1
    return p


#: Per k, the operator that appends 2^k zero bytes to a CRC, as four tables of 256 (one per
#: byte of the CRC: the operator is linear), made when first needed (~0.2 ms each).
_ZEROS_OPS: list[tuple[list[int], ...] | None] = [None] * 64


def _zeros_op(k: int) -> tuple[list[int], ...]:
    op = _ZEROS_OPS[k]
    if op is None:
        shift = _x8n(1 << k)
        tables = []
        for byte in range(4):
            table = [0] * 256
            for bit in range(8):
                table[1 << bit] = _multmodp(shift, 1 << (8 * byte + bit))
            for v in range(3, 256):
                low = v & -v
                if v != low:
                    table[v] = table[v ^ low] ^ table[low]
            tables.append(table)
        op = _ZEROS_OPS[k] = tuple(tables)
    return op


def crc_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC32C of A + B from crc1 = CRC32C(A), crc2 = CRC32C(B) and len2 = len(B): crc1 with
    len2 zero bytes appended (a table step per set bit of len2), xor crc2."""
    crc, k = crc1, 0
    while len2:
        if len2 & 1:
            t0, t1, t2, t3 = _zeros_op(k)
            crc = t0[crc & 0xFF] ^ t1[(crc >> 8) & 0xFF] ^ t2[(crc >> 16) & 0xFF] ^ t3[crc >> 24]
        len2 >>= 1
        k += 1
    return crc ^ crc2


def masked(crc: int) -> int:
    """The masked CRC of TFRecord framing."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def framing(data_length: int) -> bytes:
    """A record's first 12 bytes: the length and its masked CRC."""
    import google_crc32c  # (only once records are made)

    length = _U64.pack(data_length)
    return length + _U32.pack(masked(google_crc32c.value(length)))


# --- the layout -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TfSplit:
    """One split's TFRecord shards: `Companion.summarize`'s result (the order is the WebDataset
    split's `inos`)."""

    name: str  # train, validation
    first: list[int]  # the first record of each shard; one more entry: the record count
    sizes: list[int]  # each shard's size in bytes
    index_sizes: list[int]  # each shard's DALI index's size

    @property
    def shards(self) -> int:
        return len(self.sizes)

    def shard_name(self, n: int) -> str:
        digits = max(DIGITS, len(str(self.shards)))
        return f"{self.name}-{n:0{digits}d}-of-{self.shards:0{digits}d}"

    def lengths(self) -> list[int]:
        return [b - a for a, b in zip(self.first, self.first[1:], strict=False)]


def summarize(per_shard: int | None) -> Callable[[str, Any], TfSplit]:
    """`Companion.summarize` for `per_shard` records a shard (None: `PER_SHARD`'s)."""

    def summary(name: str, lengths: Any) -> TfSplit:
        import numpy as np

        first = cut(len(lengths), per_shard or PER_SHARD[name])
        if len(lengths) == 0:
            return TfSplit(name, first, [], [])
        starts = np.array(first[:-1], dtype=np.int64)
        total = np.cumsum(lengths) - lengths
        offset = total - np.repeat(total[starts], np.diff(first))
        digits = np.array([10**k for k in range(1, 19)], dtype=np.int64)
        line = (
            np.searchsorted(digits, offset, side="right") + 1
            + np.searchsorted(digits, lengths, side="right") + 1
            + 2
        )  # fmt: skip
        sizes = np.add.reduceat(lengths, starts)
        lines = np.add.reduceat(line, starts)
        return TfSplit(name, first, [int(s) for s in sizes], [int(n) for n in lines])

    return summary


def companion_of(index: Index, per_shard: int | None) -> Companion | None:
    """What this view adds to the WebDataset layout's walk over `index`: the record lengths
    and their summary (`summarize`), when the index has CRCs (else the view serves no
    records)."""
    if index.file_crcs is None:
        return None
    return Companion(record_length, summarize(per_shard))


@dataclass(frozen=True)
class _File:
    name: bytes
    split: int  # index in the layout's splits; -1 for dataset_info.json and README.txt
    shard: int
    kind: str  # shard, idx, info, readme


@dataclass(frozen=True)
class Record:
    offset: int  # in the shard
    head: bytes  # framing, the Example up to the image
    node: Node  # the image
    tail: bytes  # the Example after the image, the data's masked CRC

    @property
    def end(self) -> int:
        return self.offset + len(self.head) + self.node.size + len(self.tail)


@dataclass(frozen=True)
class Table:
    records: list[Record]
    starts: list[int]
    ahead: Ahead = field(default_factory=Ahead)  # (where its readers are: `Ahead.follow`)

    def index_text(self) -> bytes:
        return "".join(f"{r.offset} {r.end - r.offset}\n" for r in self.records).encode()


def _parts(record: Record) -> tuple[Part, Part, Part]:
    """A record's parts, for `shards.spans`: its head, its image, its tail."""
    image = record.offset + len(record.head)
    return (
        (record.offset, len(record.head), record.head),
        (image, record.node.size, record.node),
        (image + record.node.size, len(record.tail), record.tail),
    )


class Layout:
    """The view's files over the WebDataset layout's splits (or `README.txt` alone)."""

    def __init__(
        self, splits: list[tuple[Split, TfSplit]], readme: bytes | None, seed: int, order: str
    ) -> None:
        self.splits = splits
        files = [_File(README, -1, -1, "readme")] if readme is not None else []
        idx: list[_File] = []
        if readme is None:
            files.append(_File(INFO, -1, -1, "info"))
            for s, (_, tf) in enumerate(splits):
                for n in range(tf.shards):
                    files.append(_File(tf.shard_name(n).encode(), s, n, "shard"))
                    idx.append(_File(tf.shard_name(n).encode() + b".idx", s, n, "idx"))
        self.files = sorted(files, key=lambda f: f.name)
        self.idx = sorted(idx, key=lambda f: f.name)
        self.position = {f.name: k for k, f in enumerate(self.files)}
        self.idx_position = {f.name: k for k, f in enumerate(self.idx)}
        self.readme = readme
        self.info = self._info(seed, order) if readme is None else b""

    def _info(self, seed: int, order: str) -> bytes:
        splits = {
            tf.name: {
                "num_examples": tf.first[-1],
                "num_shards": tf.shards,
                "file_pattern": f"{tf.name}-*",
                "filenames": [tf.shard_name(n) for n in range(tf.shards)],
                "shard_lengths": tf.lengths(),
                "shard_sizes": tf.sizes,
            }
            for _, tf in self.splits
        }
        body = {
            "name": "imagenet-1k",
            "format": "tfrecord",
            "record": "tf.train.Example",
            "features": {
                "image/encoded": "bytes: the file as stored (JPEG; a few CMYK or PNG files)",
                "image/format": "bytes: JPEG",
                "image/filename": "bytes: the file's name",
                "image/class/label": "int64: 1..1000, the 0-based sorted-wnid index + 1",
                "image/class/synset": "bytes: the wnid",
                "image/height": "int64 (0: unknown)",
                "image/width": "int64 (0: unknown)",
                "image/colorspace": "bytes: RGB",
                "image/channels": "int64: 3",
            },
            "order": order,
            "train_shuffle_seed": seed if order == "shuffled" else None,
            "dali_index_dir": "idx",
            "splits": splits,
        }
        return (json.dumps(body, indent=2) + "\n").encode()


class TfrecordView:
    """`shards/tfrecord/` (see the module docstring); `layout` gives the WebDataset view's
    layout, whose splits carry this view's `TfSplit`s (`companion`)."""

    def __init__(
        self,
        index: Index,
        wds_layout: Callable[[], Any],
        *,
        seed: int = 0,
        per_shard: int | None = None,
        order: str = "shuffled",
        parent: int,
        view_shift: int,
    ) -> None:
        self.index = index
        self.seed = seed
        self.order = order
        self.dir_name = variant(TFRECORD, seed, order)
        self.parent = parent
        self._wds_layout = wds_layout
        self._shift = view_shift
        self._base = TFRECORD_VIEW << view_shift
        self.has_crcs = index.file_crcs is not None
        self.companion = companion_of(index, per_shard)
        self._layout: Layout | None = None
        self._lock = threading.Lock()
        self._tables: OrderedDict[tuple[int, int], Table] = OrderedDict()
        self._wnids: dict[int, bytes] = {}

    @property
    def layout(self) -> Layout:
        layout = self._layout
        if layout is None:
            if not self.has_crcs:
                layout = Layout([], self._readme(), self.seed, self.order)
            else:
                wds = self._wds_layout()
                layout = Layout([(s, s.companion) for s in wds.splits], None, self.seed, self.order)
            with self._lock:
                if self._layout is None:
                    self._layout = layout
                layout = self._layout
        return layout

    def _readme(self) -> bytes:
        command = rebuild_command(self.index.path, str(self.index.source))
        return (
            "No TFRecord shards here: their framing needs the CRC32C of every image file, which "
            f"this index does not hold; record them (reads every file once): {command} "
            "--image-info\n"
        ).encode()

    # --- the tree --------------------------------------------------------------------------

    def owns(self, ino: int) -> bool:
        return ino >> self._shift == TFRECORD_VIEW

    def dir_node(self) -> Node:
        subdirs = 0 if not self.has_crcs else 1
        return directory_node(self._base | _SEED_DIR, self.parent, self.dir_name, MTIME, subdirs)

    def _idx_dir(self) -> Node:
        return directory_node(self._base | _IDX_DIR, self._base | _SEED_DIR, IDX, MTIME, 0)

    def getattr(self, ino: int) -> Node:
        n = ino - self._base
        if n == _SEED_DIR:
            return self.dir_node()
        layout = self.layout
        if n == _IDX_DIR and layout.readme is None:
            return self._idx_dir()
        k = n - _FIRST
        if 0 <= k < len(layout.files):
            f, parent = layout.files[k], self._base | _SEED_DIR
        elif 0 <= k - len(layout.files) < len(layout.idx):
            f, parent = layout.idx[k - len(layout.files)], self._base | _IDX_DIR
        else:
            raise NoSuchEntry(ino)
        return virtual_file_node(ino, parent, f.name, self._size(f), MTIME)

    def _size(self, f: _File) -> int:
        layout = self.layout
        if f.kind == "readme":
            assert layout.readme is not None
            return len(layout.readme)
        if f.kind == "info":
            return len(layout.info)
        tf = layout.splits[f.split][1]
        return tf.sizes[f.shard] if f.kind == "shard" else tf.index_sizes[f.shard]

    def lookup(self, parent: int, name: bytes) -> Node:
        n = parent - self._base
        layout = self.layout
        if n == _SEED_DIR:
            if name == IDX and layout.readme is None:
                return self._idx_dir()
            k = layout.position.get(name)
            if k is None:
                raise NoSuchEntry(name)
            return self.getattr(self._base | (_FIRST + k))
        if n == _IDX_DIR and layout.readme is None:
            k = layout.idx_position.get(name)
            if k is None:
                raise NoSuchEntry(name)
            return self.getattr(self._base | (_FIRST + len(layout.files) + k))
        self.getattr(parent)  # (ENOENT for no such inode)
        raise NotADirectory(parent)

    def entries(self, ino: int, offset: int = 0) -> Iterator[tuple[int, int, bytes]]:
        n = ino - self._base
        layout = self.layout
        if n == _SEED_DIR:
            listing = [
                (self._base | (_FIRST + k), FILE, f.name) for k, f in enumerate(layout.files)
            ]
            if layout.readme is None:
                listing.append((self._base | _IDX_DIR, DIR, IDX))
                listing.sort(key=lambda entry: entry[2])
            yield from listing[max(offset, 0) :]
            return
        if n == _IDX_DIR and layout.readme is None:
            first = _FIRST + len(layout.files)
            for k in range(max(offset, 0), len(layout.idx)):
                yield self._base | (first + k), FILE, layout.idx[k].name
            return
        self.getattr(ino)
        raise NotADirectory(ino)

    def readdir(self, ino: int, offset: int = 0) -> Iterator[Node]:
        for child, _, _ in self.entries(ino, offset):
            yield self.getattr(child)

    # --- bytes -----------------------------------------------------------------------------

    def _file(self, ino: int) -> _File:
        layout = self.layout
        k = ino - self._base - _FIRST
        return layout.files[k] if k < len(layout.files) else layout.idx[k - len(layout.files)]

    def _wnid(self, parent: int) -> bytes:
        wnid = self._wnids.get(parent)
        if wnid is None:
            wnid = self._wnids[parent] = self.index.getattr(parent).name
        return wnid

    def table(self, s: int, n: int) -> Table:
        """Shard `n` of split `s`, record by record (kept for the last `TABLES` shards)."""
        found = self._tables.get((s, n))
        if found is not None:
            return found
        import google_crc32c  # (only once records are made)

        split, tf = self.layout.splits[s]
        labels = self._wds_layout().labels
        records, starts, offset = [], [], 0
        for ino in split.inos[tf.first[n] : tf.first[n + 1]]:
            node = self.index.getattr(ino)
            crc = self.index.file_crc(ino)
            if crc is None:
                raise CorruptImageError(
                    f"{node.name!r}: no CRC32C in the index {self.index.path} for a file of the "
                    "TFRecord view; record them again with `imagenetfs index --image-info`"
                )
            before, after = example_parts(
                labels[node.parent],
                self._wnid(node.parent),
                node.name,
                node.size,
                self.index.image_size(ino),
            )
            data_crc = crc_combine(google_crc32c.value(before), crc, node.size)
            data_crc = google_crc32c.extend(data_crc, after)
            length = len(before) + node.size + len(after)
            head = framing(length) + before
            record = Record(offset, head, node, after + _U32.pack(masked(data_crc)))
            records.append(record)
            starts.append(offset)
            offset = record.end
        if offset != tf.sizes[n]:
            raise CorruptImageError(
                f"TFRecord shard {tf.shard_name(n)}: {offset} bytes made where the layout "
                f"says {tf.sizes[n]}"
            )
        table = Table(records, starts)
        with self._lock:
            self._tables[(s, n)] = table
            while len(self._tables) > TABLES:
                self._tables.popitem(last=False)
        return table

    def read(self, node: Node, offset: int, size: int, *, nowait: bool = False) -> bytes:
        """Bytes of a file of the view; with `nowait`, `squashfs.WouldBlock` rather than wait
        for image bytes that are not in the page cache."""
        end = min(offset + size, node.size)
        if offset >= end:
            return b""
        f = self._file(node.ino)
        layout = self.layout
        if f.kind == "shard":
            table = self.table(f.split, f.shard)
            table.ahead.follow(self.index, table.records, table.starts, offset, end)
            return read_spans(self.index, self._spans(table, offset, end), nowait)
        if f.kind == "readme":
            data = layout.readme or b""
        elif f.kind == "info":
            data = layout.info
        else:
            data = self.table(f.split, f.shard).index_text()
        return data[offset:end]

    def locate(self, node: Node, offset: int, size: int) -> list[Piece] | None:
        """A READ of a shard as the worker sends it (`shards.locate_spans`): runs of the
        images with the records' framing and fields between them; None for the view's other
        files, and where some bytes would have to wait: `read` answers those."""
        end = min(offset + size, node.size)
        f = self._file(node.ino)
        if f.kind != "shard" or offset >= end:
            return None
        table = self.table(f.split, f.shard)
        table.ahead.follow(self.index, table.records, table.starts, offset, end)
        return locate_spans(self.index, self._spans(table, offset, end))

    @staticmethod
    def _spans(table: Table, offset: int, end: int) -> Iterator[Span]:
        """Bytes [offset, end) of a shard, in order: bytes made here (a record's head, its
        tail), or (image node, offset, length) of bytes of a record's image."""
        return spans(table.records, table.starts, offset, end, _parts)
