"""The served tree: the index's, plus `resized/<spec>/`, one view per `--resize` spec, and
`shards/` with `--shards`: `shards/wds/` (shards.py) and `shards/tfrecord/` (tfrecord.py).

A view is a full copy of the root, numbered by shifting the index's inode numbers into a
per-view range (view v holds `(v << VIEW_SHIFT) | base inode`; `resized/` itself is
`RESIZED_INO`), so nothing about the views is stored. In a view, a file that looks like an
image (a `.JPEG`, `.jpg` or `.png` name) reads as its resized JPEG; everything else -- the root
files, any other file -- is the base tree's, byte for byte.

`Tree` says where things are and what they are. When a resize happens, how concurrent requests
share one, and what size a file shows until then are the operation core's business (ops.py);
`Tree.resize(node)` is only the blocking work itself: read the original (bounded) and encode.
Free of FUSE types.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

from imagenetfs.errors import NoSuchEntry
from imagenetfs.index import (
    BLOB_IMAGE,
    DIR,
    FILE,
    IMAGE_SUFFIXES,
    ROOT_INO,
    Index,
    Node,
    directory_node,
)
from imagenetfs.squashfs import Piece, Run
from imagenetfs.views.layoutfile import Shared
from imagenetfs.views.resize import (
    DEFAULT_QUALITY,
    MAX_SOURCE_BYTES,
    ResizeError,
    ResizeSpec,
    cache_key,
    resize,
)
from imagenetfs.views.shards import SHARDS, SHARDS_VIEW, WdsView
from imagenetfs.views.tfrecord import TFRECORD_VIEW, TfrecordView

RESIZED = b"resized"
#: View v (1-based) numbers its inodes (v << VIEW_SHIFT) | base inode; the index's are < 2**32.
VIEW_SHIFT = 32
#: The `resized/` directory itself.
RESIZED_INO = (0xFFFF << VIEW_SHIFT) | 1
_BASE_MASK = (1 << VIEW_SHIFT) - 1


@dataclass(frozen=True)
class ShardSettings:
    """What `--shards` serves: the train shuffle's seed, samples per shard (None: full
    ImageNet's), the order (`shards.ORDERS`; see shards.py)."""

    seed: int = 0
    per_shard: int | None = None
    order: str = "shuffled"


class Tree:
    """The whole served tree: the index's, plus one view per spec.

    Everything here is cheap and non-blocking except `read` of bytes that are not in the page
    cache and `resize`.
    """

    def __init__(
        self,
        index: Index,
        specs: Sequence[ResizeSpec] = (),
        *,
        quality: int = DEFAULT_QUALITY,
        shards: ShardSettings | None = None,
        layout_dir: Path | None = None,
    ) -> None:
        """`layout_dir`: the mount's directory for the shard views' layout file, made once
        for every serving process (layoutfile.py); None: this process computes its own."""
        self.index = index
        self.specs = tuple(specs)
        self.quality = quality
        self.shards: WdsView | None = None
        self.tfrecord: TfrecordView | None = None
        if shards is not None:
            self.tfrecord = TfrecordView(
                index,
                lambda: wds.layout,
                seed=shards.seed,
                per_shard=shards.per_shard,
                order=shards.order,
                parent=(SHARDS_VIEW << VIEW_SHIFT) | 1,
                view_shift=VIEW_SHIFT,
            )
            wds = self.shards = WdsView(
                index,
                seed=shards.seed,
                per_shard=shards.per_shard,
                order=shards.order,
                view_shift=VIEW_SHIFT,
                siblings=[self.tfrecord],
                companion=self.tfrecord.companion,
                make_layout=None
                if layout_dir is None
                else Shared(layout_dir, index, shards.seed, shards.per_shard, shards.order),
            )
            assert self.tfrecord.parent == self.shards.root_ino
        self._root_count = index.getattr(ROOT_INO).children()[1]
        self._fingerprints = [json.dumps(r, sort_keys=True) for r in index.image_records]

    def layout_pending(self, ino: int) -> bool:
        """Whether a request about `ino` may first have to make (or wait for) the shard
        views' layout: blocking work (`make_layout`)."""
        view = ino >> VIEW_SHIFT
        return (
            self.shards is not None
            and not self.shards.layout_ready
            and view in (SHARDS_VIEW, TFRECORD_VIEW)
        )

    def make_layout(self) -> None:
        """Make the shard views' layout now, if it is not made (blocking)."""
        if self.shards is not None:
            self.shards.layout  # noqa: B018  (made on first use)

    # inode arithmetic
    @staticmethod
    def split(ino: int) -> tuple[int, int]:
        """(view number, 0 for the base tree; base inode) of `ino`."""
        return ino >> VIEW_SHIFT, ino & _BASE_MASK

    def _in_view(self, view: int, node: Node) -> Node:
        if view == 0:
            return node
        ino = (view << VIEW_SHIFT) | node.ino
        if node.ino == ROOT_INO:
            return replace(
                node, ino=ino, parent=RESIZED_INO, name=self.specs[view - 1].name.encode()
            )
        return replace(node, ino=ino, parent=(view << VIEW_SHIFT) | node.parent)

    def _resized_dir(self) -> Node:
        root = self.index.getattr(ROOT_INO)
        return directory_node(RESIZED_INO, ROOT_INO, RESIZED, root.mtime, len(self.specs))

    def _extras(self) -> list[Node]:
        """The root's directories after the index's: `resized`, `shards` (when served)."""
        extras = [self._resized_dir()] if self.specs else []
        if self.shards is not None:
            extras.append(self.shards.root_node())
        return extras

    # queries
    def getattr(self, ino: int) -> Node:
        if ino == RESIZED_INO and self.specs:
            return self._resized_dir()
        view, base = self.split(ino)
        if view == SHARDS_VIEW and self.shards is not None:
            return self.shards.getattr(ino)
        if view == TFRECORD_VIEW and self.tfrecord is not None:
            return self.tfrecord.getattr(ino)
        if view > len(self.specs):
            raise NoSuchEntry(ino)
        return self._in_view(view, self.index.getattr(base))

    def lookup(self, parent: int, name: bytes) -> Node:
        if parent == RESIZED_INO and self.specs:
            for view, spec in enumerate(self.specs, 1):
                if spec.name.encode() == name:
                    return self.getattr((view << VIEW_SHIFT) | ROOT_INO)
            raise NoSuchEntry(name)
        view, base = self.split(parent)
        if view == 0 and base == ROOT_INO and name == RESIZED and self.specs:
            return self._resized_dir()
        if self.shards is not None:
            if view == SHARDS_VIEW:
                return self.shards.lookup(parent, name)
            if view == TFRECORD_VIEW and self.tfrecord is not None:
                return self.tfrecord.lookup(parent, name)
            if view == 0 and base == ROOT_INO and name == SHARDS:
                return self.shards.root_node()
        if view > len(self.specs):
            raise NoSuchEntry(parent)
        return self._in_view(view, self.index.lookup(base, name))

    def readdir(self, ino: int, offset: int = 0) -> Iterator[Node]:
        """Children from position `offset`; the base root lists `resized`, then `shards`,
        last."""
        if ino == RESIZED_INO and self.specs:
            for view in range(offset + 1, len(self.specs) + 1):
                yield self.getattr((view << VIEW_SHIFT) | ROOT_INO)
            return
        view, base = self.split(ino)
        if view == SHARDS_VIEW and self.shards is not None:
            yield from self.shards.readdir(ino, offset)
            return
        if view == TFRECORD_VIEW and self.tfrecord is not None:
            yield from self.tfrecord.readdir(ino, offset)
            return
        if view > len(self.specs):
            raise NoSuchEntry(ino)
        for node in self.index.readdir(base, offset):
            yield self._in_view(view, node)
        if view == 0 and base == ROOT_INO:
            for k, extra in enumerate(self._extras()):
                if offset <= self._root_count + k:
                    yield extra

    def entries(self, ino: int, offset: int = 0) -> Iterator[tuple[int, int, bytes]]:
        """(ino, kind, name) of the children from position `offset` on, without a `Node` each."""
        if ino == RESIZED_INO and self.specs:
            for view in range(offset + 1, len(self.specs) + 1):
                yield (view << VIEW_SHIFT) | ROOT_INO, DIR, self.specs[view - 1].name.encode()
            return
        view, base = self.split(ino)
        if view == SHARDS_VIEW and self.shards is not None:
            yield from self.shards.entries(ino, offset)
            return
        if view == TFRECORD_VIEW and self.tfrecord is not None:
            yield from self.tfrecord.entries(ino, offset)
            return
        if view > len(self.specs):
            raise NoSuchEntry(ino)
        shift = view << VIEW_SHIFT
        for child, kind, name in self.index.entries(base, offset):
            yield shift | child, kind, name
        if view == 0 and base == ROOT_INO:
            for k, extra in enumerate(self._extras()):
                if offset <= self._root_count + k:
                    yield extra.ino, DIR, extra.name

    def listing(self, ino: int, first: int, size: int) -> bytes | None:
        """The index's stored READDIR records (`Index.listing`) where they are right:
        base-tree directories except a root that lists `resized` or `shards`; None elsewhere."""
        if ino >> VIEW_SHIFT or (ino == ROOT_INO and (self.specs or self.shards is not None)):
            return None
        return self.index.listing(ino, first, size)

    def read(self, node: Node, offset: int, size: int, *, nowait: bool = False) -> bytes:
        """Bytes of a file as stored (not resized), whichever view `node` is in; a shard
        view's file as it makes it."""
        if self.shards is not None and self.shards.owns(node.ino):
            return self.shards.read(node, offset, size, nowait=nowait)
        if self.tfrecord is not None and self.tfrecord.owns(node.ino):
            return self.tfrecord.read(node, offset, size, nowait=nowait)
        base = replace(node, ino=node.ino & _BASE_MASK)
        return self.index.read(base, offset, size, nowait=nowait)

    def locate(self, node: Node, offset: int, size: int) -> list[Piece] | None:
        """Where the bytes `read` returns lie in the image files (`Index.locate`); None where
        they are not stored as they are read. (The view's inode bits do not matter: only a
        virtual file is read by inode, and it is never located; a shard is located by its
        view: runs of its images with the bytes between them, `WdsView.locate`,
        `TfrecordView.locate`.)"""
        view = node.ino >> VIEW_SHIFT
        if view == SHARDS_VIEW and self.shards is not None:
            return self.shards.locate(node, offset, size)
        if view == TFRECORD_VIEW and self.tfrecord is not None:
            return self.tfrecord.locate(node, offset, size)
        return cast("list[Piece] | None", self.index.locate(node, offset, size))

    def cache_visible(self, node: Node) -> bool:
        """Whether the filesystem of the file's image says what it caches (`Index`'s); True
        for a shard view's file (made on read: in no image)."""
        if node.ino >> VIEW_SHIFT in (SHARDS_VIEW, TFRECORD_VIEW):
            return True
        return self.index.cache_visible(node)  # (the view's inode bits do not matter)

    def span(self, node: Node) -> Run | None:
        """Where a base-tree file's stored bytes lie (`Index.span`), for read-ahead; None for
        a shard view's file."""
        if node.ino >> VIEW_SHIFT in (SHARDS_VIEW, TFRECORD_VIEW):
            return None
        return self.index.span(node)

    # resized files
    def spec_of(self, node: Node) -> ResizeSpec | None:
        """The spec a file is resized to; None for everything served as stored: the base tree,
        directories, virtual files, and files of a view that do not look like images."""
        view = node.ino >> VIEW_SHIFT
        if view == 0 or view > len(self.specs) or node.kind != FILE or node.image == BLOB_IMAGE:
            return None
        if not node.name.lower().endswith(IMAGE_SUFFIXES):
            return None
        return self.specs[view - 1]

    def cache_key(self, node: Node, spec: ResizeSpec) -> bytes:
        """The resize cache's key of a view file: its image, its extent, the spec, the
        quality -- a changed source or setting never finds stale bytes."""
        image = node.image
        assert image is not None
        extent_id = node.tail + node.size.to_bytes(8, "little")
        return cache_key(self._fingerprints[image], extent_id, spec, self.quality)

    def resize(self, node: Node) -> bytes:
        """The resized bytes of a view file (blocking: reads the original, decodes, encodes).
        An original larger than `MAX_SOURCE_BYTES` is refused before a byte is read."""
        spec = self.spec_of(node)
        assert spec is not None
        if node.size > MAX_SOURCE_BYTES:
            raise ResizeError(
                f"{node.name!r}: {node.size:,} bytes, more than an image to resize may have "
                f"({MAX_SOURCE_BYTES >> 20} MiB)"
            )
        return resize(self.read(node, 0, node.size), spec, self.quality)
