"""The served tree beyond the images: virtual root files, and the resized views.

Virtual files at the root: meta.bin, LOC_synset_mapping.txt and file lists.

Unmodified ImageNet code expects more than images: `torchvision.datasets.ImageNet` needs
`meta.bin`, DALI and Caffe read `train.txt`-style lists, people grep `*_files.txt`. These are
computed once, at index time, from the files placed in the tree, and stored in the index as
blobs: exact sizes at `stat`, identical bytes on every read, mmap-able like any file.

- Labels are indices in sorted order of the class directories present in `train/` (or, with no
  train, in `val/`): what `ImageFolder` assigns, and ImageNet's sorted-wnid labels when all
  1000 classes are there. `LOC_synset_mapping.txt` line i is label i.
- `train.txt`/`val.txt` hold `<path> <label>`, `test.txt` `<path> 0` (test has no labels; 0 as
  in Caffe's lists), paths relative to the root of the tree; `*_files.txt` hold the paths alone.
- `meta.bin` is what `torch.save((wnid_to_classes, val_wnids))` writes, produced without torch:
  a stored zip holding `meta/data.pkl` (pickle protocol 2), `meta/byteorder`, `meta/version`;
  `torch.load(..., weights_only=True)` accepts it (only tuples, lists, dicts and str inside).

Resized views (`Tree`): `resized/<spec>/` for each `--resize` spec is a full copy of the root,
numbered by shifting the index's inode numbers into a per-view range, so nothing about the
views is stored. Their image files read as resized JPEGs (resize.py); everything else, root
files included, is the base tree's. Listing resizes nothing; a file's size is known once it
has been resized (or found in the resize cache), and until then the FUSE layer hands out its
attributes uncacheable, so the kernel never holds a size that disagrees with the bytes.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import pickle
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path as PathLib

from imagenetfs.errors import ImagenetfsError
from imagenetfs.index import (
    BLOB_IMAGE,
    DIR,
    ROOT_INO,
    Index,
    Node,
    NoSuchEntry,
    directory_node,
)
from imagenetfs.resize import DEFAULT_QUALITY, ResizeCache, ResizeSpec, cache_key, resize

#: The path of a file in the tree, as components: (b"train", b"n01440764", b"x.JPEG").
Path = tuple[bytes, ...]

SPLITS = (b"train", b"val", b"test")
_ZIP_DATE = (2012, 1, 1, 0, 0, 0)


def meta_bin(wnid_to_classes: dict[str, tuple[str, ...]], val_wnids: Sequence[str]) -> bytes:
    """Bytes of torchvision's meta.bin: torch.save((wnid_to_classes, val_wnids))."""
    payload = pickle.dumps((wnid_to_classes, list(val_wnids)), protocol=2)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in (
            ("meta/data.pkl", payload),
            ("meta/byteorder", b"little"),
            ("meta/version", b"3\n"),
        ):
            archive.writestr(zipfile.ZipInfo(name, date_time=_ZIP_DATE), data)
    return out.getvalue()


def _lines(rows: Iterable[str]) -> bytes:
    return "".join(f"{row}\n" for row in rows).encode("utf-8", "surrogateescape")


def _text(name: bytes) -> str:
    return name.decode("utf-8", "surrogateescape")


def root_files(
    files: Iterable[Path], class_names: Callable[[str], tuple[str, ...]]
) -> dict[Path, bytes]:
    """The virtual files for a tree holding `files`; `class_names(wnid)` gives its names."""
    by_split: dict[bytes, list[Path]] = {split: [] for split in SPLITS}
    for path in files:
        if path and path[0] in by_split:
            by_split[path[0]].append(path)
    for paths in by_split.values():
        paths.sort()

    def classes_of(split: bytes) -> list[str]:
        return sorted({_text(p[1]) for p in by_split[split] if len(p) == 3})

    wnids = classes_of(b"train") or classes_of(b"val")
    label = {wnid: i for i, wnid in enumerate(wnids)}

    def rel(path: Path) -> str:
        return _text(b"/".join(path))

    def labelled(split: bytes) -> list[str]:
        rows = []
        for path in by_split[split]:
            if len(path) == 3 and _text(path[1]) in label:
                rows.append(f"{rel(path)} {label[_text(path[1])]}")
        return rows

    val_sorted = sorted((p for p in by_split[b"val"] if len(p) == 3), key=lambda p: p[2])
    val_wnids = [_text(p[1]) for p in val_sorted]
    all_wnids = sorted(set(wnids) | set(val_wnids))
    out: dict[Path, bytes] = {
        (b"meta.bin",): meta_bin({w: class_names(w) for w in all_wnids}, val_wnids),
        (b"LOC_synset_mapping.txt",): _lines(f"{w} {', '.join(class_names(w))}" for w in wnids),
        (b"train.txt",): _lines(labelled(b"train")),
        (b"val.txt",): _lines(labelled(b"val")),
        (b"test.txt",): _lines(f"{rel(p)} 0" for p in by_split[b"test"]),
    }
    for split in SPLITS:
        out[(split + b"_files.txt",)] = _lines(rel(p) for p in by_split[split])
    return out


# --- the served tree, resized views included ----------------------------------------------

RESIZED = b"resized"
#: View v (1-based) numbers its inodes (v << VIEW_SHIFT) | base inode; the index's are < 2**32.
VIEW_SHIFT = 32
#: The `resized/` directory itself.
RESIZED_INO = (0xFFFF << VIEW_SHIFT) | 1
_BASE_MASK = (1 << VIEW_SHIFT) - 1


class Tree:
    """The whole served tree: the index's, plus `resized/<spec>/`, one view per spec.

    A view mirrors the base tree inode for inode, except that image files read as their
    resized JPEGs. Everything here is cheap and non-blocking except `resized_bytes`, which may
    decode and encode an image: callers on an event loop run it in a thread. Free of FUSE types,
    so any front end (pyfuse3 today) can serve it.
    """

    def __init__(
        self,
        index: Index,
        specs: Sequence[ResizeSpec] = (),
        *,
        quality: int = DEFAULT_QUALITY,
        cache: ResizeCache | None = None,
    ) -> None:
        self.index = index
        self.specs = list(specs)
        self.quality = quality
        self.cache = cache
        self._root_count = index.getattr(ROOT_INO).children()[1]
        self._fingerprints = [json.dumps(r, sort_keys=True) for r in index.image_records]
        self._sizes: dict[int, int] = {}  # resized sizes known when the cache cannot keep them
        self.resizes = 0

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

    # queries
    def getattr(self, ino: int) -> Node:
        if ino == RESIZED_INO and self.specs:
            return self._resized_dir()
        view, base = self.split(ino)
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
        if view > len(self.specs):
            raise NoSuchEntry(parent)
        return self._in_view(view, self.index.lookup(base, name))

    def readdir(self, ino: int, offset: int = 0) -> Iterator[Node]:
        """Children from position `offset`; the base root lists `resized` last."""
        if ino == RESIZED_INO and self.specs:
            for view in range(offset + 1, len(self.specs) + 1):
                yield self.getattr((view << VIEW_SHIFT) | ROOT_INO)
            return
        view, base = self.split(ino)
        if view > len(self.specs):
            raise NoSuchEntry(ino)
        for node in self.index.readdir(base, offset):
            yield self._in_view(view, node)
        if view == 0 and base == ROOT_INO and self.specs and offset <= self._root_count:
            yield self._resized_dir()

    def listing(self, ino: int, first: int, size: int) -> bytes | None:
        """The index's precomputed READDIR records (`Index.listing`) where they are right:
        base-tree directories except a root that lists `resized`; None elsewhere."""
        if ino >> VIEW_SHIFT or ino == RESIZED_INO or (ino == ROOT_INO and self.specs):
            return None
        return self.index.listing(ino, first, size)

    def entries(self, ino: int, offset: int = 0) -> Iterator[tuple[int, int, bytes]]:
        """(ino, kind, name) of the same children as `readdir`, without a `Node` each."""
        if ino == RESIZED_INO and self.specs:
            for view in range(offset + 1, len(self.specs) + 1):
                yield (view << VIEW_SHIFT) | ROOT_INO, DIR, self.specs[view - 1].name.encode()
            return
        view, base = self.split(ino)
        if view > len(self.specs):
            raise NoSuchEntry(ino)
        shift = view << VIEW_SHIFT
        for child, kind, name in self.index.entries(base, offset):
            yield shift | child, kind, name
        if view == 0 and base == ROOT_INO and self.specs and offset <= self._root_count:
            yield RESIZED_INO, DIR, RESIZED

    def read(self, node: Node, offset: int, size: int, *, nowait: bool = False) -> bytes:
        """Bytes of a file as stored (not resized), whichever view `node` is in."""
        base = replace(node, ino=node.ino & _BASE_MASK)
        return self.index.read(base, offset, size, nowait=nowait)

    # resized files
    def spec_of(self, node: Node) -> ResizeSpec | None:
        """The spec a file is served through, None for base files and virtual files."""
        view = node.ino >> VIEW_SHIFT
        if view == 0 or node.image in (None, BLOB_IMAGE) or node.ino == RESIZED_INO:
            return None
        return self.specs[view - 1]

    def _key(self, node: Node, spec: ResizeSpec) -> bytes:
        image = node.image
        assert image is not None
        fingerprint = self._fingerprints[image]
        return cache_key(
            fingerprint, node.tail + node.size.to_bytes(8, "little"), spec, self.quality
        )

    def known_size(self, node: Node) -> int | None:
        """The resized size if it is known without resizing (cache or memory)."""
        spec = self.spec_of(node)
        if spec is None:
            return node.size
        if node.ino in self._sizes:
            return self._sizes[node.ino]
        if self.cache is not None:
            data = self.cache.get(self._key(node, spec))
            if data is not None:
                return len(data)
        return None

    def resized_bytes(self, node: Node) -> bytes:
        """The bytes served for a file of a resized view. Blocking: decode + encode on a miss."""
        spec = self.spec_of(node)
        assert spec is not None
        key = self._key(node, spec)
        if self.cache is not None:
            data = self.cache.get(key)
            if data is not None:
                return data
        base = self.index.getattr(node.ino & _BASE_MASK)
        original = self.index.read(base, 0, base.size)
        data = resize(original, spec, self.quality)
        self.resizes += 1
        if self.cache is not None:
            self.cache.put(key, data)
        if len(self._sizes) < 2_000_000:
            self._sizes[node.ino] = len(data)
        return data


# --- warming the resize cache ahead of a job ------------------------------------------------


@dataclass(frozen=True)
class WarmJob:
    index_path: str
    specs: tuple[ResizeSpec, ...]
    quality: int
    cache_dir: str
    cache_size: int


_worker: tuple[Tree, ResizeCache] | None = None


def _warm_init(job: WarmJob) -> None:
    """Per worker process: its own index and cache environments (LMDB envs do not cross fork)."""
    global _worker
    cache = ResizeCache(PathLib(job.cache_dir), job.cache_size)
    tree = Tree(Index.open(PathLib(job.index_path)), job.specs, quality=job.quality, cache=cache)
    _worker = (tree, cache)


def _warm_one(ino: int) -> int:
    """Resize one view file into the cache: 1 if resized now, 0 if cached, -1 if it failed."""
    assert _worker is not None
    tree, _ = _worker
    node = tree.getattr(ino)
    if tree.known_size(node) is not None:
        return 0
    try:
        tree.resized_bytes(node)
    except ImagenetfsError:
        return -1
    return 1


def warm(job: WarmJob, splits: Sequence[str], jobs: int, progress: bool) -> dict[str, int]:
    """Fill the resize cache for every image file of `splits` in every spec, in parallel."""
    with Index.open(PathLib(job.index_path)) as index:
        inos: list[int] = []
        for split in splits:
            try:
                top = index.lookup(ROOT_INO, split.encode())
            except NoSuchEntry:
                continue
            stack = [top.ino]
            while stack:
                for node in index.readdir(stack.pop()):
                    if node.kind == DIR:
                        stack.append(node.ino)
                    elif node.image not in (None, BLOB_IMAGE):
                        inos.extend(
                            (v << VIEW_SHIFT) | node.ino for v in range(1, len(job.specs) + 1)
                        )
    from tqdm import tqdm

    counts = {"resized": 0, "cached": 0, "failed": 0}
    names = {1: "resized", 0: "cached", -1: "failed"}
    context = multiprocessing.get_context("fork")
    with (
        context.Pool(max(1, jobs), _warm_init, (job,)) as pool,
        tqdm(
            total=len(inos), unit="img", desc="warming", disable=None if progress else True
        ) as bar,
    ):
        for result in pool.imap_unordered(_warm_one, inos, chunksize=16):
            counts[names[result]] += 1
            bar.update()
    return counts
