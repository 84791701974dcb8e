"""Resized views: spec parsing, the resize itself, and the persistent resize cache.

- `parse_spec("256")` is a shorter-side spec (torchvision `Resize(256)`: the shorter side
  becomes 256, the longer `int(256 * long / short)`; images already at or below it are served
  as their original bytes -- unless they are not RGB JPEGs, which are converted at their size);
  `parse_spec("64x64")` an exact one (Downsampled-ImageNet: exactly
  64×64, aspect ignored). Sides are bounded to 8..4096.
- `resize(data, spec, quality)` decodes with JPEG DCT-domain downscaling (`Image.draft`: the
  decoder itself scales by 1/2, 1/4 or 1/8, so most of the decode is never done), converts any
  source (CMYK, grayscale, palette, a PNG named .JPEG) to RGB, resamples to the exact size
  (bilinear for N, box for WxH) and encodes a baseline JPEG. A hostile or broken input (not an
  image, truncated, more than `MAX_SOURCE_BYTES` or `MAX_PIXELS`) raises `ResizeError`; nothing
  is decoded past the header of an image that claims absurd dimensions.
- `ResizeCache` keeps results in LMDB across mounts and processes: keys hash the image's
  fingerprint, the file's extent, the spec and the quality, so a changed source or spec never
  serves stale bytes; the map size bounds it, and when full the oldest quarter is evicted.
  `size_of(key)` answers a `stat` without copying the bytes out.
  LMDB's own locking makes it safe for several mounts and `imagenetfs warm` at once, and its
  copy-on-write commits survive a killed daemon.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import struct
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import lmdb

from imagenetfs import places
from imagenetfs.errors import ImagenetfsError, UsageError

MIN_SIDE, MAX_SIDE = 8, 4096
#: Larger than any ImageNet photo (the biggest is ~ 12 Mpx); a claim beyond it is refused.
MAX_PIXELS = 64_000_000
#: Larger than any ImageNet file (the biggest is ~ 15 MB); a bigger one is not read to resize.
MAX_SOURCE_BYTES = 64 << 20
DEFAULT_QUALITY = 90
#: Free space a cache's disk must have for the cache to be opened (see `ResizeCache`).
CACHE_MIN_FREE = 1 << 20

_SPEC = re.compile(r"^(\d+)(?:x(\d+))?$")


class ResizeError(ImagenetfsError):
    """An image that cannot be resized: not an image, truncated, or absurdly large."""


@dataclass(frozen=True)
class ResizeSpec:
    width: int | None  # None: shorter-side spec
    height: int

    @property
    def name(self) -> str:
        return f"{self.width}x{self.height}" if self.width else str(self.height)

    def target(self, width: int, height: int) -> tuple[int, int] | None:
        """Output size for a `width`×`height` source; None when served unchanged."""
        if self.width is not None:
            return self.width, self.height
        short, long = min(width, height), max(width, height)
        if short <= self.height:
            return None
        scaled = int(self.height * long / short)
        return (self.height, scaled) if width < height else (scaled, self.height)


def parse_spec(text: str) -> ResizeSpec:
    match = _SPEC.match(text.strip().lower())
    sides = [int(g) for g in match.groups() if g is not None] if match else []
    if not sides or not all(MIN_SIDE <= s <= MAX_SIDE for s in sides):
        raise UsageError(
            f"--resize {text!r}: expected N (shorter side) or WxH (exact), "
            f"each {MIN_SIDE}..{MAX_SIDE}"
        )
    return ResizeSpec(None, sides[0]) if len(sides) == 1 else ResizeSpec(sides[0], sides[1])


def parse_size(text: str) -> int:
    """'10G', '500M', '1.5T', '4096' -> bytes; at least 16 MiB."""
    match = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", text.lower())
    if not match:
        raise UsageError(f"--cache-size {text!r}: expected a size like 500M, 10G or 1T")
    number, unit = float(match.group(1)), match.group(2)
    size = int(number * 1024 ** " kmgt".index(unit or " "))
    if size < 16 << 20:
        raise UsageError(f"--cache-size {text!r}: at least 16M")
    return size


def check_quality(quality: int) -> int:
    if not 1 <= quality <= 100:
        raise UsageError(f"--resize-quality must be 1..100, not {quality}")
    return quality


def resize(data: bytes, spec: ResizeSpec, quality: int = DEFAULT_QUALITY) -> bytes:
    """The resized JPEG of `data`, or `data` itself when a shorter-side spec leaves it as is."""
    from PIL import Image  # imported on first use: mounts without --resize never load it

    if len(data) > MAX_SOURCE_BYTES:
        raise ResizeError(f"{len(data):,} bytes: more than {MAX_SOURCE_BYTES >> 20} MiB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width <= 0 or height <= 0 or width * height > MAX_PIXELS:
                    raise ResizeError(f"image of {width}x{height} pixels is out of bounds")
                target = spec.target(width, height)
                if target is None:
                    if image.format == "JPEG" and image.mode == "RGB":
                        return data  # already small enough: the original bytes
                    target = (width, height)  # small, but CMYK/gray/PNG: re-encoded as RGB
                if image.format == "JPEG":
                    draft_mode = image.mode if image.mode in ("RGB", "L") else None
                    image.draft(draft_mode, target)  # DCT-domain downscaling, >= target
                rgb = image.convert("RGB")
        resample = Image.Resampling.BOX if spec.width else Image.Resampling.BILINEAR
        out = io.BytesIO()
        rgb.resize(target, resample).save(out, "JPEG", quality=quality, progressive=False)
        return out.getvalue()
    except ResizeError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning, MemoryError) as e:  # fmt: skip
        raise ResizeError(f"cannot resize: {e}") from None


# --- the persistent cache -----------------------------------------------------------------


def cache_key(image_fingerprint: str, extent_id: bytes, spec: ResizeSpec, quality: int) -> bytes:
    h = hashlib.blake2b(digest_size=20)
    for part in (image_fingerprint.encode(), extent_id, spec.name.encode(), b"%d" % quality):
        h.update(struct.pack("<I", len(part)) + part)
    return h.digest()


class ResizeCache:
    """Resized bytes in an LMDB environment bounded by `size` bytes, shared between processes."""

    def __init__(self, directory: Path, size: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        # LMDB writes its lock file through a shared map: on a full disk that is SIGBUS (the
        # process dies), not an error. Refuse a disk without room for it, as an OSError.
        st = os.statvfs(directory)
        if st.f_bavail * st.f_frsize < CACHE_MIN_FREE:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
        self.path = directory / "resize-cache.lmdb"
        self.size = size
        self._env = lmdb.open(
            str(self.path), subdir=False, map_size=size, max_dbs=3, sync=False, readahead=False
        )
        self._data = self._env.open_db(b"data")
        self._order = self._env.open_db(b"order")  # sequence (u64 BE) -> key: eviction order
        self._lock = threading.Lock()
        self.hits = self.misses = self.stores = self.evictions = self.failures = 0

    def close(self) -> None:
        self._env.close()

    def get(self, key: bytes) -> bytes | None:
        with self._env.begin(db=self._data, buffers=False) as txn:
            value: bytes | None = txn.get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def size_of(self, key: bytes) -> int | None:
        """The length of a cached value, read in place (no copy of the bytes)."""
        with self._env.begin(db=self._data, buffers=True) as txn:
            value = txn.get(key)
            size = None if value is None else len(value)
        if size is None:
            self.misses += 1
        else:
            self.hits += 1
        return size

    def put(self, key: bytes, value: bytes) -> None:
        """Store; on a full cache evict the oldest quarter and retry; never raises."""
        if len(value) > self.size // 4:
            return
        with self._lock:
            for _ in range(3):
                try:
                    self._put(key, value)
                    self.stores += 1
                    return
                except lmdb.MapFullError:
                    self._evict()
                except lmdb.Error:  # disk full, read-only cache dir...: serve without caching
                    self.failures += 1
                    return
            self.failures += 1

    def _put(self, key: bytes, value: bytes) -> None:
        with self._env.begin(write=True) as txn:
            if txn.get(key, db=self._data) is not None:
                return
            cursor = txn.cursor(db=self._order)
            seq = struct.unpack(">Q", cursor.key())[0] + 1 if cursor.last() else 0
            txn.put(key, value, db=self._data)
            txn.put(struct.pack(">Q", seq), key, db=self._order)

    def _evict(self) -> None:
        with contextlib.suppress(lmdb.Error), self._env.begin(write=True) as txn:
            total = txn.stat(self._order)["entries"]
            cursor = txn.cursor(db=self._order)
            doomed = []
            for n, (seq, key) in enumerate(cursor):
                if n >= max(1, total // 4):
                    break
                doomed.append((seq, key))
            for seq, key in doomed:
                txn.delete(key, db=self._data)
                txn.delete(seq, db=self._order)
            self.evictions += len(doomed)

    def statistics(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "stores": self.stores,
            "evictions": self.evictions,
            "failures": self.failures,
        }


def cache_problem(directory: Path, size: int) -> str | None:
    """Why the resize cache in `directory` cannot be opened, as a mount or warm opens it (the
    cache is created if missing); None when it can."""
    try:
        ResizeCache(directory, size).close()
    except OSError as e:
        return e.strerror or str(e)
    except lmdb.Error as e:  # (LMDB says "<path>: <strerror>")
        return str(e).rsplit(": ", 1)[-1]
    return None


def default_cache_dir() -> Path:
    """The job's node-local scratch inside a Slurm job (places.py), else the user's cache."""
    scratch = places.job_scratch()
    if scratch is not None:
        return scratch / "imagenetfs-cache"
    return places.user_cache_dir() / "resized"
