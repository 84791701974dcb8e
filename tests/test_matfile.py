"""imagenetfs.matfile: round trips, scipy as the oracle both ways, and hostile input.

scipy is a test-only dependency: it stands in for torchvision's ``parse_meta_mat`` (which calls
``scipy.io.loadmat``) and for MATLAB-style files written by someone else.
"""

from __future__ import annotations

import io
import random
import struct
import time
import tracemalloc
import zlib
from collections.abc import Sequence
from dataclasses import astuple, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagenetfs import synsets as classes
from imagenetfs.errors import ImagenetfsError
from imagenetfs.matfile import (
    MAX_INFLATED,
    MatFileError,
    Synset,
    encode_synsets,
    read_synsets,
    write_synsets,
)

try:
    import scipy.io as scipy_io
except ImportError:  # test-only dependency: the other tests still run
    scipy_io = None
needs_scipy = pytest.mark.skipif(scipy_io is None, reason="scipy is not installed")

FIELDS = [f.name for f in fields(Synset)]
TEXT = {"WNID", "words", "gloss"}


def devkit_like() -> list[Synset]:
    """The 1000 real classes as leaves with IDs 1–1000 in a shuffled (not wnid) order, then a
    small hierarchy of internal synsets above them, like the devkit's 1860."""
    wnids = list(classes.wnids())
    random.Random(2012).shuffle(wnids)
    leaves = [
        Synset(
            ILSVRC2012_ID=i + 1,
            WNID=wnid,
            words=classes.words(wnid),
            gloss=f"gloss of {wnid}; a thing (see {classes.words(wnid).split(', ')[0]})",
            num_children=0,
            children=(),
            wordnet_height=0,
            num_train_images=732 + (i * 37) % 569,
        )
        for i, wnid in enumerate(wnids)
    ]
    result = list(leaves)
    level = leaves
    height = 1
    while len(level) > 1:  # groups of 40, then 5, then the root
        size = 40 if height == 1 else 5
        parents = []
        for start in range(0, len(level), size):
            group = level[start : start + size]
            number = len(result) + 1
            parents.append(
                Synset(
                    ILSVRC2012_ID=number,
                    WNID=f"n{90000000 + number:08d}",
                    words=f"group {number}, crème brûlée {height}" if number % 7 == 0 else "",
                    gloss=f"internal synset {number}",
                    num_children=len(group),
                    children=tuple(s.ILSVRC2012_ID for s in group),
                    wordnet_height=height,
                    num_train_images=sum(s.num_train_images for s in group),
                )
            )
            result.append(parents[-1])
        level = parents
        height += 1
    return result


SYNSETS = devkit_like()
SMALL = [*SYNSETS[:3], SYNSETS[-1]]


def loadmat(data: bytes, **options: Any) -> Any:
    return scipy_io.loadmat(io.BytesIO(data), **options)["synsets"]


def check_clean(data: bytes) -> None:
    """Reading `data` either succeeds or raises a one-line MatFileError, nothing else."""
    try:
        result = read_synsets(data)
    except MatFileError as exc:
        assert isinstance(exc, ImagenetfsError)
        assert str(exc) and "\n" not in str(exc)
    else:
        assert all(isinstance(s, Synset) for s in result)


# --- writing and reading our own files ----------------------------------------------------------


def test_fixture_is_devkit_shaped() -> None:
    assert len(SYNSETS) == 1031
    assert sorted(s.ILSVRC2012_ID for s in SYNSETS) == list(range(1, 1032))
    leaves = [s for s in SYNSETS if s.num_children == 0]
    assert [s.ILSVRC2012_ID for s in leaves] == list(range(1, 1001))
    assert [s.WNID for s in leaves] != sorted(s.WNID for s in leaves)
    assert any(not s.words.isascii() for s in SYNSETS)


def test_round_trip() -> None:
    data = encode_synsets(SYNSETS)
    assert read_synsets(data) == SYNSETS
    assert encode_synsets(SYNSETS) == data  # deterministic: no date in the header


def test_write_to_path_and_file_object(tmp_path: Path) -> None:
    path = tmp_path / "meta.mat"
    write_synsets(path, SMALL)
    write_synsets(str(tmp_path / "meta2.mat"), SMALL)
    buffer = io.BytesIO()
    write_synsets(buffer, SMALL)
    assert path.read_bytes() == buffer.getvalue() == (tmp_path / "meta2.mat").read_bytes()
    assert read_synsets(path.read_bytes()) == SMALL


def test_header_and_padding() -> None:
    data = encode_synsets(SMALL)
    assert data.startswith(b"MATLAB 5.0 MAT-file, ")
    assert data[116:124] == bytes(8)
    assert data[124:128] == b"\x00\x01IM"  # version 0x0100 and "MI", both little-endian
    assert len(data) % 8 == 0
    mi_type, nbytes = struct.unpack_from("<II", data, 128)
    assert (mi_type, nbytes) == (14, len(data) - 136)  # one uncompressed miMATRIX


def test_empty_and_odd_values() -> None:
    synsets = [
        Synset(0, "", "", "", 0, (), 0, 0),
        Synset(2**53, "n1", "a", "ü" * 3, 3, (1, 2**40, 7), -1, 1),
        Synset(5, "n2", "smile 😀 ∑", "x" * 1000, 1, (5,), 0, 0),
    ]
    assert read_synsets(encode_synsets(synsets)) == synsets
    assert read_synsets(encode_synsets([])) == []


@pytest.mark.parametrize(
    "bad",
    [
        {"ILSVRC2012_ID": 1.0},
        {"ILSVRC2012_ID": 2**53 + 1},
        {"children": (1, "2")},
        {"words": b"bytes"},
        {"gloss": "lone \ud800 surrogate"},
    ],
)
def test_writer_rejects_values_a_double_or_string_cannot_hold(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        encode_synsets([replace(SYNSETS[0], **bad)])


# --- scipy reads our files as torchvision does --------------------------------------------------


@needs_scipy
def test_scipy_sees_the_devkit_layout() -> None:
    meta = loadmat(encode_synsets(SYNSETS), squeeze_me=False)
    assert meta.shape == (len(SYNSETS), 1)
    assert list(meta.dtype.names) == FIELDS
    for row, synset in zip(meta[:, 0], SYNSETS, strict=True):
        for name in FIELDS:
            value = row[name]
            if name in TEXT:
                text = getattr(synset, name)
                assert value.shape == ((1,) if text else (0,))  # scipy squeezes char rows
                assert (value[0] if text else "") == text
            elif name == "children":
                assert value.dtype == np.float64
                expected = synset.children
                assert value.shape == ((1, len(expected)) if expected else (0, 0))
                assert value.ravel().tolist() == list(expected)
            else:
                assert value.dtype == np.float64 and value.shape == (1, 1)
                assert value[0, 0] == getattr(synset, name)


@needs_scipy
def test_scipy_parse_meta_mat_as_torchvision(tmp_path: Path) -> None:
    path = tmp_path / "meta.mat"
    write_synsets(path, SYNSETS)
    # torchvision.datasets.imagenet.parse_meta_mat, step by step
    meta = scipy_io.loadmat(str(path), squeeze_me=True)["synsets"]
    nums_children = list(zip(*meta, strict=True))[4]
    meta = [meta[idx] for idx, num_children in enumerate(nums_children) if num_children == 0]
    idcs, wnids, names = list(zip(*meta, strict=True))[:3]
    classes_ = [tuple(clss.split(", ")) for clss in names]
    idx_to_wnid = dict(zip(idcs, wnids, strict=True))
    wnid_to_classes = dict(zip(wnids, classes_, strict=True))

    leaves = SYNSETS[:1000]
    assert idx_to_wnid == {s.ILSVRC2012_ID: s.WNID for s in leaves}
    assert wnid_to_classes == {w: classes.class_names(w) for w in classes.wnids()}
    assert all(type(i) is float for i in idcs)  # doubles, as from the real devkit


@needs_scipy
def test_scipy_reads_non_ascii_text() -> None:
    meta = loadmat(encode_synsets(SYNSETS), squeeze_me=True)
    words = [row["words"] if isinstance(row["words"], str) else "" for row in meta]
    assert words == [s.words for s in SYNSETS]
    assert any(not w.isascii() for w in words)


# --- we read files scipy writes -----------------------------------------------------------------


def scipy_struct(synsets: Sequence[Synset], *, typed: bool) -> Any:
    """An N×1 numpy structured array of objects, as scipy users build a struct array; with
    `typed`, integers keep small integer dtypes, so the file holds mxUINT8/mxINT32... classes."""
    array = np.empty((len(synsets), 1), dtype=[(name, object) for name in FIELDS])
    # dtype name -> largest value it holds
    dtypes = {"uint16": 2**16 - 1, "float64": 2**53, "int32": 2**31 - 1, "uint8": 255}
    names = list(dtypes) if typed else ["float64"]
    for i, synset in enumerate(synsets):
        for j, name in enumerate(FIELDS):
            value = getattr(synset, name)
            if name in TEXT:
                array[i, 0][name] = value
            elif name == "children":
                array[i, 0][name] = np.array(value, dtype="int32" if typed else "float64")
            else:
                dtype = names[(i + j) % len(names)]
                array[i, 0][name] = np.array(
                    value, dtype=dtype if value <= dtypes[dtype] else "int32"
                )
    return array


@needs_scipy
@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("typed", [False, True])
def test_reads_scipy_savemat(compress: bool, typed: bool) -> None:
    buffer = io.BytesIO()
    variables = {
        "info": "another variable first, skipped",
        "synsets": scipy_struct(SYNSETS, typed=typed),
        "after": np.arange(12.0).reshape(3, 4),
    }
    scipy_io.savemat(buffer, variables, do_compression=compress)
    assert read_synsets(buffer.getvalue()) == SYNSETS


@needs_scipy
def test_reads_scipy_dict_of_fields() -> None:
    """A 1×1 struct (a dict) whose fields hold a single synset, as the simplest scipy caller."""
    buffer = io.BytesIO()
    synset = SYNSETS[-1]
    record = {name: getattr(synset, name) for name in FIELDS}
    record["children"] = np.array(synset.children, dtype=np.float64)
    scipy_io.savemat(buffer, {"synsets": record})
    assert read_synsets(buffer.getvalue()) == [synset]


# --- MATLAB-style files: small elements, integer storage, compression, either byte order -------


def matlab_style(
    synsets: Sequence[Synset], *, order: str = "<", compress: bool = True, chars: str = "utf-16"
) -> bytes:
    """Encode as MATLAB does: small data elements where they fit, doubles stored in the smallest
    integer type, empty fields as bare miMATRIX tags, each variable in miCOMPRESSED unpadded."""

    def element(mi_type: int, payload: bytes) -> bytes:
        if 0 < len(payload) <= 4:
            word = struct.pack(order + "I", len(payload) << 16 | mi_type)
            return word + payload.ljust(4, b"\0")
        head = struct.pack(order + "II", mi_type, len(payload))
        return head + payload + bytes(-len(payload) % 8)

    def matrix(mx_class: int, dims: tuple[int, ...], name: bytes, body: bytes) -> bytes:
        content = (
            element(6, struct.pack(order + "II", mx_class, 0))
            + element(5, struct.pack(f"{order}{len(dims)}i", *dims))
            + element(1, name)
            + body
        )
        return struct.pack(order + "II", 14, len(content)) + content

    def numbers(values: tuple[int, ...]) -> bytes:
        if not values:
            return struct.pack(order + "II", 14, 0)  # MATLAB's bare empty field
        top = max(values)
        mi_type, code = (2, "B") if top < 256 else (4, "H") if top < 65536 else (5, "i")
        payload = struct.pack(f"{order}{len(values)}{code}", *values)
        return matrix(6, (1, len(values)), b"", element(mi_type, payload))

    def text(value: str) -> bytes:
        codec, mi_type = {
            "utf-16": ("utf-16-be" if order == ">" else "utf-16-le", 4),
            "utf-8": ("utf-8", 16),
            "latin-1": ("latin-1", 2),
            "utf-32": ("utf-32-be" if order == ">" else "utf-32-le", 18),
        }[chars]
        return matrix(
            4, (1, len(value)) if value else (0, 0), b"", element(mi_type, value.encode(codec))
        )

    def variable(payload: bytes) -> bytes:
        if not compress:
            return payload
        packed = zlib.compress(payload)
        return struct.pack(order + "II", 15, len(packed)) + packed

    names = b"".join(name.encode().ljust(32, b"\0") for name in FIELDS)
    body = element(5, struct.pack(order + "i", 32)) + element(1, names)
    for synset in synsets:
        for name in FIELDS:
            value = getattr(synset, name)
            if name in TEXT:
                body += text(value)
            else:
                body += numbers(value if name == "children" else (value,))
    indicator = struct.pack(order + "H", 0x4D49)  # "MI" written as a 16-bit number
    header = b"MATLAB 5.0 MAT-file, Platform: test".ljust(116) + bytes(8)
    header += struct.pack(order + "H", 0x0100) + indicator
    other = variable(matrix(4, (1, 3), b"abc", element(4 if chars == "utf-16" else 16, b"x\0y\0")))
    synsets_var = variable(matrix(2, (len(synsets), 1), b"synsets", body))
    return header + other + synsets_var


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("compress", [False, True])
def test_reads_matlab_style(order: str, compress: bool) -> None:
    data = matlab_style(SYNSETS, order=order, compress=compress)
    assert data[126:128] == (b"IM" if order == "<" else b"MI")
    assert read_synsets(data) == SYNSETS


@pytest.mark.parametrize("chars", ["utf-8", "latin-1", "utf-32"])
def test_reads_other_char_encodings(chars: str) -> None:
    assert read_synsets(matlab_style(SYNSETS, chars=chars)) == SYNSETS


@needs_scipy
def test_scipy_agrees_on_matlab_style() -> None:
    """The test encoder is itself checked against the oracle."""
    meta = loadmat(matlab_style(SMALL, compress=True, chars="utf-8"), squeeze_me=True)
    assert [int(row["ILSVRC2012_ID"]) for row in meta] == [s.ILSVRC2012_ID for s in SMALL]
    assert [row["WNID"] for row in meta] == [s.WNID for s in SMALL]


# --- malformed and hostile input ----------------------------------------------------------------


def header(order: str = "<") -> bytes:
    indicator = struct.pack(order + "H", 0x4D49)
    return (
        b"MATLAB 5.0 MAT-file".ljust(116) + bytes(8) + struct.pack(order + "H", 0x0100) + indicator
    )


def tag(mi_type: int, payload: bytes) -> bytes:
    return struct.pack("<II", mi_type, len(payload)) + payload + bytes(-len(payload) % 8)


def matrix(mx_class: int, dims: tuple[int, ...], name: bytes, body: bytes) -> bytes:
    flags = tag(6, struct.pack("<II", mx_class, 0))
    return tag(14, flags + tag(5, struct.pack(f"<{len(dims)}i", *dims)) + tag(1, name) + body)


def struct_of(
    dims: tuple[int, ...],
    names: Sequence[str],
    values: bytes,
    slot: int = 32,
    packed: bytes | None = None,
) -> bytes:
    if packed is None:
        packed = b"".join(n.encode().ljust(slot, b"\0") for n in names)
    return matrix(2, dims, b"synsets", tag(5, struct.pack("<i", slot)) + tag(1, packed) + values)


def error_of(data: bytes) -> str:
    with pytest.raises(MatFileError) as info:
        read_synsets(data)
    message = str(info.value)
    assert message and "\n" not in message
    return message


def one_synset_with(name: str, value: bytes) -> bytes:
    """A 1×1 synsets struct whose field `name` holds the miMATRIX `value`."""
    good = encode_synsets([SYNSETS[-1]])
    meta = read_synsets(good)[0]
    body = b""
    for field in FIELDS:
        if field == name:
            body += value
        elif field in TEXT:
            text = getattr(meta, field).encode("utf-16-le")
            body += matrix(4, (1, len(text) // 2), b"", tag(4, text))
        else:
            numbers = getattr(meta, field)
            numbers = numbers if field == "children" else (numbers,)
            payload = struct.pack(f"<{len(numbers)}d", *numbers)
            body += matrix(6, (1, len(numbers)), b"", tag(9, payload))
    return header() + struct_of((1, 1), FIELDS, body)


def test_hand_built_file_reads() -> None:
    data = one_synset_with("words", matrix(4, (1, 2), b"", tag(4, "ab".encode("utf-16-le"))))
    assert read_synsets(data) == [replace(SYNSETS[-1], words="ab")]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "too short"),
        (b"x" * 200, "endian"),
        (header()[:124] + b"\x00\x02IM", "0x0200"),  # v7.3 (HDF5)
        (header(), "no variable named 'synsets'"),
        (header() + matrix(6, (1, 1), b"other", tag(9, bytes(8))), "no variable"),
        (header() + matrix(6, (1, 1), b"synsets", tag(9, bytes(8))), "not a struct"),
        (header() + tag(9, bytes(8)), "unexpected data type 9"),
        (header() + b"\x0e\x00\x00\x00", "truncated"),
        (header() + struct.pack("<II", 14, 0xFFFFFFFF), "claims 4294967295 bytes"),
        (header() + struct.pack("<II", 15, 16) + b"not zlib data!!!", "bad compressed"),
        (header() + struct.pack("<II", 15, 8) + zlib.compress(b"x" * 100)[:8], "truncated"),
        (header() + tag(15, zlib.compress(tag(9, bytes(8)))), "holds data type 9"),
        (header() + struct_of((1, 1), ["WNID"], b""), "cannot fit"),
        (header() + struct_of((2**31 - 1, 2**31 - 1), FIELDS, b""), "struct array of"),
        (header() + struct_of((1, 1), [], b"", slot=0, packed=b"abc"), "field name length 0"),
        (header() + struct_of((1, 1), [], b"", slot=10**9, packed=b"abc"), "field name length"),
        (header() + struct_of((1, 1), ["é"], b""), "non-ASCII field name"),
        (header() + struct_of((1, 1), [], b"", slot=2, packed=b"abc"), "bytes of field names"),
        (header() + matrix(2, (1, -1), b"synsets", b""), "negative dimension"),
        (header() + matrix(2, (1,), b"synsets", b""), "dimensions"),
        (header() + matrix(2, (1,) * 33, b"synsets", b""), "dimensions"),
        (
            header()
            + struct_of((1, 1), ["WNID"], matrix(6, (2**31 - 1, 2**31 - 1), b"", tag(9, bytes(8)))),
            "2147483647×2147483647 array",
        ),
        (header() + struct_of((1, 1), ["a"], tag(6, b"")), "array at offset"),
    ],
)
def test_malformed_files_fail_cleanly(data: bytes, expected: str) -> None:
    assert expected in error_of(data)


def test_huge_numeric_dims_are_refused() -> None:
    huge = matrix(6, (2**31 - 1, 2**31 - 1), b"", tag(9, bytes(8)))
    assert "for a 2147483647×2147483647 array" in error_of(one_synset_with("children", huge))
    text = matrix(4, (2**31 - 1, 2**31 - 1), b"", tag(4, b"a\0"))
    assert "char array" in error_of(one_synset_with("WNID", text))


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("WNID", None, "synsets(1).WNID is missing"),
        ("WNID", matrix(6, (1, 1), b"", tag(9, bytes(8))), "expected text"),
        ("WNID", matrix(4, (2, 2), b"", tag(4, "abcd".encode("utf-16-le"))), "2×2 char matrix"),
        ("WNID", matrix(4, (1, 1), b"", tag(4, b"\x00\xd8")), "not valid utf-16-le"),
        ("WNID", matrix(4, (1, 1), b"", tag(16, b"\xff")), "not valid utf-8"),
        ("WNID", matrix(4, (1, 1), b"", tag(9, bytes(8))), "char data"),
        ("WNID", matrix(1, (1, 1), b"", matrix(4, (1, 1), b"", tag(4, b"a\0"))), "cell array"),
        ("WNID", matrix(5, (1, 1), b"", b""), "unsupported class 5"),
        ("ILSVRC2012_ID", matrix(4, (1, 1), b"", tag(4, b"a\0")), "expected numbers"),
        ("ILSVRC2012_ID", matrix(6, (1, 1), b"", tag(9, struct.pack("<d", 1.5))), "1.5"),
        ("ILSVRC2012_ID", matrix(6, (1, 1), b"", tag(9, struct.pack("<d", float("nan")))), "nan"),
        ("ILSVRC2012_ID", matrix(6, (1, 2), b"", tag(9, bytes(16))), "2 numbers, expected one"),
        ("ILSVRC2012_ID", matrix(6, (1, 1), b"", tag(9, bytes(4))), "4 bytes of data type 9"),
        ("ILSVRC2012_ID", matrix(6, (1, 1), b"", tag(4, b"a\0b\0")), "for a 1×1 array"),
        ("ILSVRC2012_ID", matrix(6, (1, 1), b"", tag(14, b"")), "numeric data"),
        ("children", matrix(6, (2, 2), b"", tag(9, bytes(32))), "2×2 matrix"),
        ("children", tag(14, tag(6, struct.pack("<II", 6, 0))), "truncated"),
        ("children", tag(14, tag(6, struct.pack("<II", 6, 0)) + tag(9, bytes(8))), "dimensions"),
    ],
)
def test_wrong_field_values_fail_cleanly(field: str, value: bytes | None, expected: str) -> None:
    if value is None:
        fields_ = [f for f in FIELDS if f != field]
        data = header() + struct_of(
            (1, 1), fields_, b"".join(matrix(6, (1, 1), b"", tag(9, bytes(8))) for _ in fields_)
        )
    else:
        data = one_synset_with(field, value)
    assert expected in error_of(data)


def test_complex_numbers_are_refused() -> None:
    flags = tag(6, struct.pack("<II", 0x0806, 0))  # mxDOUBLE with the complex bit
    body = flags + tag(5, struct.pack("<2i", 1, 1)) + tag(1, b"") + tag(9, bytes(8)) * 2
    assert "complex" in error_of(one_synset_with("num_children", tag(14, body)))


def test_deep_nesting_is_refused() -> None:
    inner = matrix(6, (1, 1), b"", tag(9, bytes(8)))
    for _ in range(50):
        inner = matrix(1, (1, 1), b"", inner)
    assert "nested deeper" in error_of(one_synset_with("gloss", inner))


def test_too_many_arrays_are_refused() -> None:
    empty = tag(14, b"")
    data = header() + matrix(1, (300_000, 1), b"synsets", empty * 300_000)
    started = time.monotonic()
    assert "more than 200000 arrays" in error_of(data)
    assert time.monotonic() - started < 10


def test_struct_without_fields_stays_bounded() -> None:
    assert "struct array of" in error_of(header() + struct_of((10**6, 10**3), [], b""))


def test_zlib_bomb_is_cut_off() -> None:
    compressor = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    inner = struct.pack("<II", 14, 0xFFFF0000)
    bomb = compressor.compress(inner) + b"".join(compressor.compress(chunk) for _ in range(256))
    bomb += compressor.flush()
    data = header() + struct.pack("<II", 15, len(bomb)) + bomb
    tracemalloc.start()
    try:
        message = error_of(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert f"more than {MAX_INFLATED} bytes" in message
    assert peak < 2.5 * MAX_INFLATED  # the inflated bytes, and one copy while zlib trims them


def test_inflate_budget_is_per_file() -> None:
    """Many compressed variables that each fit still cannot inflate past the budget in sum."""
    other = matrix(6, (1, 1 << 22), b"other", tag(9, bytes(8 << 22)))  # 32 MiB of doubles
    packed = zlib.compress(other)
    element = struct.pack("<II", 15, len(packed)) + packed
    assert "inflate to more than" in error_of(header() + element * 3)


@pytest.mark.parametrize("compress", [False, True])
def test_every_truncation_fails_cleanly(compress: bool) -> None:
    data = matlab_style(SMALL, compress=compress) if compress else encode_synsets(SMALL)
    assert read_synsets(data) == SMALL
    for cut in range(len(data)):
        error_of(data[:cut])


@pytest.mark.parametrize("compress", [False, True])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_corruption_fails_cleanly(compress: bool, data: st.DataObject) -> None:
    original = matlab_style(SMALL, compress=True) if compress else encode_synsets(SMALL)
    corrupt = bytearray(original)
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(corrupt) - 1))
        corrupt[position] = data.draw(st.integers(0, 255))
    check_clean(bytes(corrupt))


@settings(max_examples=300, deadline=None)
@given(tail=st.binary(max_size=2048))
def test_random_bytes_after_header_fail_cleanly(tail: bytes) -> None:
    check_clean(header() + tail)


def test_scalar_fields_match_astuple() -> None:
    """Synset's field order is the devkit's, which torchvision's index 4 relies on."""
    assert FIELDS[4] == "num_children"
    assert astuple(SYNSETS[0])[:3] == (1, SYNSETS[0].WNID, SYNSETS[0].words)
