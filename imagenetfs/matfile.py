"""Read and write the ILSVRC2012 devkit's ``data/meta.mat``: MATLAB Level-5 MAT files, just enough.

The devkit describes the 1860 synsets of the ILSVRC2012 hierarchy in one variable, ``synsets``: an
N×1 struct array whose fields are ``ILSVRC2012_ID``, ``WNID``, ``words``, ``gloss``,
``num_children``, ``children``, ``wordnet_height`` and ``num_train_images``. The 1000 leaves
(``num_children == 0``) carry IDs 1–1000, which is what torchvision's ``parse_meta_mat`` and the
validation ground truth use. This module turns that variable into `Synset` records and back, so
neither the generator nor the source-layout code needs scipy at run time.

Format (MATLAB "MAT-File Format", Level 5), as used here:

- A 128-byte header: 116 bytes of text ("MATLAB 5.0 MAT-file, ..."), an 8-byte subsystem offset,
  a 16-bit version (0x0100) and a 2-byte endian indicator; the writer stores "MI" in its own byte
  order, so a little-endian file ends its header with the bytes ``IM`` and a big-endian one with
  ``MI``.
- Then data elements, each an 8-byte tag (uint32 type, uint32 byte count) followed by the data,
  padded to a multiple of 8 bytes. A "small" element packs count (upper 16 bits) and type (lower
  16 bits) into the first tag word and its at most 4 bytes of data into the second.
- A variable is a ``miMATRIX`` element holding sub-elements: array flags (class, complex bit),
  dimensions, name, then by class: the real (and imaginary) numbers; the characters; or, for a
  struct, the field-name length, the packed NUL-padded field names, and one ``miMATRIX`` per
  field per element, elements in column-major order. A top-level variable may instead be wrapped
  in a ``miCOMPRESSED`` element: a zlib stream that inflates to the ``miMATRIX`` element (writers
  do not pad the compressed bytes, so the next tag follows directly).

The writer emits one uncompressed ``synsets`` variable, every number as ``miDOUBLE``, ASCII strings
as UTF-16 code units (``miUINT16``, as MATLAB does) and other strings as ``miUTF8`` with one
dimension unit per code point (as ``scipy.io.savemat`` does: ``scipy.io.loadmat`` decodes
``miUINT16`` with a one-byte codec by default, which would mangle them; the format allows
``miUTF8`` char data). The ILSVRC2012 names are ASCII. Empty strings and empty ``children`` are 0×0
(MATLAB's ``''`` and ``[]``). The header carries no date, so the same synsets always give the same
bytes.

The reader accepts what MATLAB and ``scipy.io.savemat`` write for such a variable: compressed or
not, either byte order, numbers stored in any numeric type (MATLAB stores doubles in the smallest
integer type that holds them), characters as ``miUTF8``, ``miUINT8``/``miINT8`` (Latin-1),
``miUINT16``/``miUTF16`` or ``miUTF32``, fields in any order with extra fields ignored. Other
top-level variables are skipped. It treats its input as hostile: every length is checked against
the bytes that remain, nesting is bounded, so is the number of arrays, inflating stops at
`MAX_INFLATED` bytes per file, and text and numbers are decoded only for the fields a `Synset`
needs. Every problem is raised as `MatFileError` with a one-line message; nothing else escapes.

Not supported (raised as `MatFileError` if ``synsets`` needs them): Level 4 and v7.3 (HDF5)
files, sparse arrays, objects, complex numbers.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import BinaryIO, Final

from imagenetfs.errors import MatFileError as MatFileError

__all__ = [
    "MAX_INFLATED",
    "MatFileError",
    "Synset",
    "encode_synsets",
    "read_synsets",
    "write_synsets",
]

#: The most bytes all ``miCOMPRESSED`` elements of one file may inflate to (the devkit's 1860
#: synsets take a few MiB at most).
MAX_INFLATED: Final = 64 * 1024 * 1024
#: The most ``miMATRIX`` elements one file may hold (the devkit has about 15,000).
_MAX_ARRAYS: Final = 200_000
#: The most numbers the ``synsets`` fields may hold in all (the devkit has about 11,000).
_MAX_NUMBERS: Final = 1_000_000
#: The deepest nesting of arrays inside arrays (the devkit needs 2: struct, then its fields).
_MAX_DEPTH: Final = 8
_MAX_DIMS: Final = 32
_MAX_FIELDS: Final = 4096
_MAX_FIELD_NAME: Final = 4096
#: Integers a double holds exactly; the writer refuses anything larger.
_MAX_EXACT: Final = 2**53

_HEADER_SIZE: Final = 128
_HEADER_TEXT: Final = b"MATLAB 5.0 MAT-file, Platform: any, Created by: imagenetfs.matfile"
_FIELD_NAME_LEN: Final = 32  # the classic MATLAB slot size; our longest name is 16

# Data types (the "mi" prefix) and array classes (the "mx" prefix) of the format.
_miINT8: Final = 1
_miUINT8: Final = 2
_miINT16: Final = 3
_miUINT16: Final = 4
_miINT32: Final = 5
_miUINT32: Final = 6
_miSINGLE: Final = 7
_miDOUBLE: Final = 9
_miINT64: Final = 12
_miUINT64: Final = 13
_miMATRIX: Final = 14
_miCOMPRESSED: Final = 15
_miUTF8: Final = 16
_miUTF16: Final = 17
_miUTF32: Final = 18

_mxCELL: Final = 1
_mxSTRUCT: Final = 2
_mxCHAR: Final = 4
_mxDOUBLE: Final = 6
_mxUINT64: Final = 15
_NUMERIC_CLASSES: Final = range(_mxDOUBLE, _mxUINT64 + 1)  # double, single, (u)int8 .. (u)int64
_FLAG_COMPLEX: Final = 0x0800  # in the flags word, above the class byte

# struct format letter for each numeric data type.
_NUMBER_FORMATS: Final = {
    _miINT8: "b",
    _miUINT8: "B",
    _miINT16: "h",
    _miUINT16: "H",
    _miINT32: "i",
    _miUINT32: "I",
    _miSINGLE: "f",
    _miDOUBLE: "d",
    _miINT64: "q",
    _miUINT64: "Q",
}


@dataclass(frozen=True, slots=True)
class Synset:
    """One element of the devkit's ``synsets`` struct array; fields in the devkit's order."""

    ILSVRC2012_ID: int
    WNID: str
    words: str
    gloss: str
    num_children: int
    children: tuple[int, ...]  # ILSVRC2012_IDs of the children; empty for the 1000 leaves
    wordnet_height: int
    num_train_images: int


_FIELDS: Final = tuple(f.name for f in fields(Synset))
_TEXT_FIELDS: Final = frozenset({"WNID", "words", "gloss"})


# --- writing ------------------------------------------------------------------------------------


def write_synsets(target: str | os.PathLike[str] | BinaryIO, synsets: Sequence[Synset]) -> None:
    """Write `synsets` as the variable ``synsets`` of a MAT file at a path or into a binary file.

    Raises `ValueError` for a value the format cannot hold exactly (see `encode_synsets`).
    """
    data = encode_synsets(synsets)
    if isinstance(target, str | os.PathLike):
        with open(target, "wb") as f:
            f.write(data)
    else:
        target.write(data)


def encode_synsets(synsets: Sequence[Synset]) -> bytes:
    """The bytes of a MAT file holding `synsets` as an N×1 struct array named ``synsets``.

    Raises `ValueError` for an integer beyond ±2**53 (a double would round it) or a string that
    does not encode as UTF-16 (lone surrogates).
    """
    header = _HEADER_TEXT.ljust(116, b" ") + bytes(8) + struct.pack("<H", 0x0100) + b"IM"
    names = b"".join(name.encode("ascii").ljust(_FIELD_NAME_LEN, b"\0") for name in _FIELDS)
    body = [
        _element(_miINT32, struct.pack("<i", _FIELD_NAME_LEN)),
        _element(_miINT8, names),
    ]
    for synset in synsets:
        for name in _FIELDS:
            value = getattr(synset, name)
            if name in _TEXT_FIELDS:
                body.append(_char_array(name, value))
            elif name == "children":
                body.append(_double_array(name, value))
            else:
                body.append(_double_array(name, (value,)))
    return header + _matrix(_mxSTRUCT, (len(synsets), 1), "synsets", b"".join(body))


def _element(mi_type: int, payload: bytes) -> bytes:
    """A data element with a full 8-byte tag, padded to 8 bytes."""
    padding = -len(payload) % 8
    return struct.pack("<II", mi_type, len(payload)) + payload + bytes(padding)


def _matrix(mx_class: int, dims: tuple[int, ...], name: str, body: bytes) -> bytes:
    flags = _element(_miUINT32, struct.pack("<II", mx_class, 0))
    shape = _element(_miINT32, struct.pack(f"<{len(dims)}i", *dims))
    label = _element(_miINT8, name.encode("ascii"))
    return _element(_miMATRIX, flags + shape + label + body)


def _char_array(field: str, text: object) -> bytes:
    """ASCII as UTF-16 code units (``miUINT16``), as MATLAB writes; anything else as ``miUTF8``."""
    if not isinstance(text, str):
        raise ValueError(f"synset field {field} must be a str, not {type(text).__name__}")
    if text.isascii():
        mi_type, payload = _miUINT16, text.encode("utf-16-le")
    else:
        try:
            mi_type, payload = _miUTF8, text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"synset field {field} is not valid Unicode: {exc.reason}") from None
    dims = (1, len(text)) if text else (0, 0)
    return _matrix(_mxCHAR, dims, "", _element(mi_type, payload))


def _double_array(field: str, values: tuple[int, ...]) -> bytes:
    for value in values:
        if not isinstance(value, int) or not -_MAX_EXACT <= value <= _MAX_EXACT:
            raise ValueError(f"synset field {field} holds {value!r}, not an integer within ±2**53")
    dims = (1, len(values)) if values else (0, 0)
    payload = struct.pack(f"<{len(values)}d", *values)
    return _matrix(_mxDOUBLE, dims, "", _element(_miDOUBLE, payload))


# --- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Numbers:
    """A numeric array, its data left undecoded until a field needs it."""

    dims: tuple[int, ...]
    format: str  # struct format of one number, byte order included
    raw: bytes
    complex: bool


@dataclass(frozen=True, slots=True)
class _Text:
    """A char array, its data left undecoded until a field needs it."""

    dims: tuple[int, ...]
    codec: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class _Struct:
    dims: tuple[int, ...]
    elements: tuple[dict[str, _Value], ...]  # column-major, field name -> value


@dataclass(frozen=True, slots=True)
class _Cell:
    dims: tuple[int, ...]
    items: tuple[_Value, ...]


@dataclass(frozen=True, slots=True)
class _Other:
    """An array of a class the devkit never uses (sparse, object, function handle...)."""

    mx_class: int


_Value = _Numbers | _Text | _Struct | _Cell | _Other
_EMPTY: Final = _Numbers((0, 0), "<d", b"", False)


def read_synsets(data: bytes | bytearray | memoryview) -> list[Synset]:
    """The ``synsets`` variable of a MAT file's bytes, as `Synset` records in array order.

    Raises `MatFileError` if the bytes are not a Level-5 MAT file, have no ``synsets`` struct
    array, or any element of it lacks a field or holds a value of the wrong kind.
    """
    variable = _Reader(bytes(data)).find_variable("synsets")
    if not isinstance(variable, _Struct):
        raise MatFileError(f"meta.mat: variable 'synsets' is {_describe(variable)}, not a struct")
    converter = _Converter()
    return [converter.synset(i, element) for i, element in enumerate(variable.elements)]


class _Converter:
    """Turns parsed struct elements into `Synset` records, bounding the numbers it decodes."""

    def __init__(self) -> None:
        self._numbers_left = _MAX_NUMBERS

    def synset(self, index: int, element: dict[str, _Value]) -> Synset:
        def field(name: str) -> tuple[str, _Value]:
            where = f"meta.mat: synsets({index + 1}).{name}"
            value = element.get(name)
            if value is None:
                raise MatFileError(f"{where} is missing")
            return where, value

        def scalar(name: str) -> int:
            where, value = field(name)
            numbers = self._integers(where, value)
            if len(numbers) != 1:
                raise MatFileError(f"{where} has {len(numbers)} numbers, expected one")
            return numbers[0]

        return Synset(
            ILSVRC2012_ID=scalar("ILSVRC2012_ID"),
            WNID=_text(*field("WNID")),
            words=_text(*field("words")),
            gloss=_text(*field("gloss")),
            num_children=scalar("num_children"),
            children=self._integers(*field("children")),
            wordnet_height=scalar("wordnet_height"),
            num_train_images=scalar("num_train_images"),
        )

    def _integers(self, where: str, value: _Value) -> tuple[int, ...]:
        if not isinstance(value, _Numbers):
            raise MatFileError(f"{where} is {_describe(value)}, expected numbers")
        if value.complex:
            raise MatFileError(f"{where} is complex, expected real numbers")
        if not _is_vector(value.dims):
            raise MatFileError(f"{where} is a {_shape(value.dims)} matrix, expected a vector")
        count = len(value.raw) // struct.calcsize(value.format)
        self._numbers_left -= count
        if self._numbers_left < 0:
            raise MatFileError(f"meta.mat: synsets hold more than {_MAX_NUMBERS} numbers")
        result: list[int] = []
        for (number,) in struct.iter_unpack(value.format, value.raw):
            if isinstance(number, float):
                if not math.isfinite(number) or number != int(number):
                    raise MatFileError(f"{where} holds {number!r}, not an integer")
                number = int(number)
            result.append(number)
        return tuple(result)


def _text(where: str, value: _Value) -> str:
    if not isinstance(value, _Text):
        raise MatFileError(f"{where} is {_describe(value)}, expected text")
    if not _is_vector(value.dims):
        raise MatFileError(f"{where} is a {_shape(value.dims)} char matrix, expected one string")
    try:
        return value.raw.decode(value.codec)
    except UnicodeDecodeError as exc:
        raise MatFileError(f"{where} is not valid {value.codec}: {exc.reason}") from None


def _is_vector(dims: tuple[int, ...]) -> bool:
    """Empty, or at most one dimension other than 1 (1×N, N×1, 0×0, 1×0...)."""
    return 0 in dims or sum(1 for d in dims if d != 1) <= 1


def _describe(value: _Value) -> str:
    match value:
        case _Numbers():
            return f"a {_shape(value.dims)} numeric array"
        case _Text():
            return f"a {_shape(value.dims)} char array"
        case _Struct():
            return f"a {_shape(value.dims)} struct array"
        case _Cell():
            return f"a {_shape(value.dims)} cell array"
        case _Other():
            return f"an array of unsupported class {value.mx_class}"


def _shape(dims: tuple[int, ...]) -> str:
    return "×".join(str(d) for d in dims)


class _Reader:
    """One pass over one file's bytes; holds the byte order and the budgets shared by all parts."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._inflate_budget = MAX_INFLATED
        self._array_budget = _MAX_ARRAYS
        if len(data) < _HEADER_SIZE:
            raise MatFileError(f"meta.mat: {len(data)} bytes is too short for a MAT file header")
        indicator = data[126:128]
        if indicator == b"IM":
            self._order = "<"
        elif indicator == b"MI":
            self._order = ">"
        else:
            raise MatFileError("meta.mat: not a MATLAB Level-5 MAT file (no endian indicator)")
        (version,) = struct.unpack_from(self._order + "H", data, 124)
        if version != 0x0100:
            raise MatFileError(
                f"meta.mat: MAT file version {version:#06x} is not supported (only Level 5,"
                " 0x0100; save with -v7 rather than -v7.3)"
            )

    def find_variable(self, wanted: str) -> _Value:
        """Parse top-level variables until the one named `wanted`; skip the bodies of others."""
        data, pos, end = self._data, _HEADER_SIZE, len(self._data)
        while end - pos >= 8:
            mi_type, start, stop, following = self._tag(data, pos, end)
            if mi_type == _miCOMPRESSED:
                inner = self._inflate(data[start:stop], pos)
                value = self._variable(inner, 0, len(inner), wanted)
                following = stop  # compressed elements are not padded
            elif mi_type == _miMATRIX:
                value = self._matrix_body(data, start, stop, depth=1, wanted=wanted)
            else:
                raise MatFileError(f"meta.mat: unexpected data type {mi_type} at offset {pos}")
            if value is not None:
                return value
            pos = following
        if pos != end and any(data[pos:end]):
            raise MatFileError(f"meta.mat: truncated data element tag at offset {pos}")
        raise MatFileError(f"meta.mat: no variable named {wanted!r}")

    def _variable(self, data: bytes, pos: int, end: int, wanted: str) -> _Value | None:
        mi_type, start, stop, _ = self._tag(data, pos, end)
        if mi_type != _miMATRIX:
            raise MatFileError(f"meta.mat: compressed element holds data type {mi_type}")
        return self._matrix_body(data, start, stop, depth=1, wanted=wanted)

    def _inflate(self, compressed: bytes, offset: int) -> bytes:
        inflater = zlib.decompressobj()
        try:
            out = inflater.decompress(compressed, self._inflate_budget + 1)
        except zlib.error as exc:
            raise MatFileError(
                f"meta.mat: bad compressed element at offset {offset}: {exc}"
            ) from None
        if len(out) > self._inflate_budget:
            raise MatFileError(
                f"meta.mat: compressed elements inflate to more than {MAX_INFLATED} bytes"
            )
        if not inflater.eof:
            raise MatFileError(f"meta.mat: truncated compressed element at offset {offset}")
        self._inflate_budget -= len(out)
        return out

    def _tag(self, data: bytes, pos: int, end: int) -> tuple[int, int, int, int]:
        """Decode the element tag at `pos`: (type, data start, data end, next element's offset)."""
        if end - pos < 8:
            raise MatFileError(f"meta.mat: truncated data element tag at offset {pos}")
        (first,) = struct.unpack_from(self._order + "I", data, pos)
        if first >> 16:  # small data element
            nbytes, mi_type = first >> 16, first & 0xFFFF
            if nbytes > 4:
                raise MatFileError(f"meta.mat: small data element of {nbytes} bytes at {pos}")
            return mi_type, pos + 4, pos + 4 + nbytes, pos + 8
        (nbytes,) = struct.unpack_from(self._order + "I", data, pos + 4)
        start = pos + 8
        if nbytes > end - start:
            raise MatFileError(
                f"meta.mat: data element at offset {pos} claims {nbytes} bytes,"
                f" {end - start} remain"
            )
        stop = start + nbytes
        return first, start, stop, min(stop + (-nbytes % 8), end)

    def _sub(
        self, data: bytes, pos: int, end: int, types: tuple[int, ...], what: str
    ) -> tuple[int, int, int, int]:
        """The next sub-element of a matrix, which must be of one of `types`."""
        mi_type, start, stop, following = self._tag(data, pos, end)
        if mi_type not in types:
            raise MatFileError(f"meta.mat: {what} at offset {pos} has data type {mi_type}")
        return mi_type, start, stop, following

    def _matrix_body(
        self, data: bytes, pos: int, end: int, depth: int, wanted: str | None = None
    ) -> _Value | None:
        """Parse a miMATRIX's contents in data[pos:end]; None if its name is not `wanted`."""
        if depth > _MAX_DEPTH:
            raise MatFileError(f"meta.mat: arrays nested deeper than {_MAX_DEPTH} levels")
        self._array_budget -= 1
        if self._array_budget < 0:
            raise MatFileError(f"meta.mat: more than {_MAX_ARRAYS} arrays")
        if pos == end:  # MATLAB writes some empty arrays as a bare tag
            return None if wanted is not None else _EMPTY
        _, start, stop, pos = self._sub(data, pos, end, (_miUINT32,), "array flags")
        if stop - start != 8:
            raise MatFileError(f"meta.mat: array flags of {stop - start} bytes at offset {start}")
        (flags,) = struct.unpack_from(self._order + "I", data, start)
        mx_class, is_complex = flags & 0xFF, bool(flags & _FLAG_COMPLEX)

        _, start, stop, pos = self._sub(data, pos, end, (_miINT32,), "dimensions")
        ndims = (stop - start) // 4
        if (stop - start) % 4 or not 2 <= ndims <= _MAX_DIMS:
            raise MatFileError(f"meta.mat: {stop - start} bytes of dimensions at offset {start}")
        dims = struct.unpack_from(f"{self._order}{ndims}i", data, start)
        if min(dims) < 0:
            raise MatFileError(f"meta.mat: negative dimension {_shape(dims)} at offset {start}")
        count = math.prod(dims)

        _, start, stop, pos = self._sub(data, pos, end, (_miINT8, _miUINT8), "array name")
        if wanted is not None and data[start:stop] != wanted.encode("ascii"):
            return None

        if mx_class in _NUMERIC_CLASSES:
            return self._numbers(data, pos, end, dims, count, is_complex)
        if mx_class == _mxCHAR:
            return self._text(data, pos, end, dims, count)
        if mx_class == _mxSTRUCT:
            return self._struct(data, pos, end, dims, count, depth)
        if mx_class == _mxCELL:
            return _Cell(dims, self._arrays(data, pos, end, count, depth))
        return _Other(mx_class)

    def _numbers(
        self, data: bytes, pos: int, end: int, dims: tuple[int, ...], count: int, is_complex: bool
    ) -> _Numbers:
        mi_type, start, stop, pos = self._sub(
            data, pos, end, tuple(_NUMBER_FORMATS), "numeric data"
        )
        code = _NUMBER_FORMATS[mi_type]
        if stop - start != count * struct.calcsize(code):
            raise MatFileError(
                f"meta.mat: {stop - start} bytes of data type {mi_type} at offset {start}"
                f" for a {_shape(dims)} array"
            )
        return _Numbers(dims, self._order + code, data[start:stop], is_complex)

    def _text(self, data: bytes, pos: int, end: int, dims: tuple[int, ...], count: int) -> _Text:
        types = (_miUTF8, _miUINT8, _miINT8, _miUINT16, _miINT16, _miUTF16, _miUTF32)
        mi_type, start, stop, _ = self._sub(data, pos, end, types, "char data")
        raw = data[start:stop]
        big = self._order == ">"
        if mi_type == _miUTF8:
            codec, unit = "utf-8", 0  # scipy counts code points, MATLAB UTF-16 units: no check
        elif mi_type in (_miUINT8, _miINT8):
            codec, unit = "latin-1", 1
        elif mi_type in (_miUINT16, _miINT16, _miUTF16):
            codec, unit = ("utf-16-be" if big else "utf-16-le"), 2
        else:
            codec, unit = ("utf-32-be" if big else "utf-32-le"), 4
        if unit and len(raw) != count * unit:
            raise MatFileError(
                f"meta.mat: {len(raw)} bytes of char data at offset {start}"
                f" for a {_shape(dims)} char array"
            )
        return _Text(dims, codec, raw)

    def _struct(
        self, data: bytes, pos: int, end: int, dims: tuple[int, ...], count: int, depth: int
    ) -> _Struct:
        if count > _MAX_ARRAYS:  # bounds the elements of a struct without fields, too
            raise MatFileError(f"meta.mat: struct array of {count} elements at offset {pos}")
        _, start, stop, pos = self._sub(data, pos, end, (_miINT32,), "field name length")
        if stop - start != 4:
            raise MatFileError(f"meta.mat: field name length of {stop - start} bytes at {start}")
        (slot,) = struct.unpack_from(self._order + "i", data, start)
        if not 1 <= slot <= _MAX_FIELD_NAME:
            raise MatFileError(f"meta.mat: field name length {slot} at offset {start}")
        _, start, stop, pos = self._sub(data, pos, end, (_miINT8, _miUINT8), "field names")
        if (stop - start) % slot or (stop - start) // slot > _MAX_FIELDS:
            raise MatFileError(f"meta.mat: {stop - start} bytes of field names at offset {start}")
        names = []
        for i in range(start, stop, slot):
            name = data[i : i + slot].split(b"\0", 1)[0]
            try:
                names.append(name.decode("ascii"))
            except UnicodeDecodeError:
                raise MatFileError(f"meta.mat: non-ASCII field name at offset {i}") from None
        values = self._arrays(data, pos, end, count * len(names), depth)
        width = len(names)
        elements = tuple(
            dict(zip(names, values[i * width : (i + 1) * width], strict=True)) for i in range(count)
        )
        return _Struct(dims, elements)

    def _arrays(
        self, data: bytes, pos: int, end: int, count: int, depth: int
    ) -> tuple[_Value, ...]:
        """`count` consecutive miMATRIX elements (struct fields or cell contents)."""
        if count * 8 > end - pos:  # each needs a tag at least: refuse absurd counts up front
            raise MatFileError(
                f"meta.mat: {count} arrays cannot fit in the {end - pos} bytes at offset {pos}"
            )
        values: list[_Value] = []
        for _ in range(count):
            _, start, stop, pos = self._sub(data, pos, end, (_miMATRIX,), "array")
            value = self._matrix_body(data, start, stop, depth + 1)
            assert value is not None  # only a named lookup returns None
            values.append(value)
        return tuple(values)
