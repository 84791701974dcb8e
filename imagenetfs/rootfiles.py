"""Virtual files at the root of the tree: meta.bin, LOC_synset_mapping.txt and file lists.

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
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections.abc import Callable, Iterable, Sequence

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
