"""Benchmark data: generated (or reused) image sets, their unpacked trees, and file lists.

A *set* is a directory as the cluster keeps ImageNet (`{train,val,test}.squashfs`, the
`*_files.txt` listings, `val_labels.txt`), made by the project's generator. Each scale has a
gzip set (generated) and a `-noD -noF` set (the gzip set's unpacked files packed again with the
generator's own mksquashfs call: same files, no rendering). The unpacked tree is unsquashfs'd
once into `<work>/unpacked/<gzip set>/{train,val,test}` and serves every variant.

Files are named the same way for every contender by `(split, relpath, wnid)`: `relpath` is the
path inside the split's image (`<wnid>/<file>` for train, `<file>` for val and test); imagenetfs
serves val at `val/<wnid>/<file>` (regrouped by label), the others at `<file>`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from imagenetfs import generate

SPLITS = ("train", "val", "test")
LISTS = ("train_files.txt", "val_files.txt", "test_files.txt", "val_labels.txt")
VARIANTS = {"gzip": (), "noD-noF": ("-noD", "-noF")}


@dataclass(frozen=True)
class Scale:
    name: str  # directory name of the gzip set, e.g. full-tiny-gzip
    spec: generate.Spec

    @property
    def base(self) -> str:
        return self.name.removesuffix("-gzip")


#: Full ImageNet entry count (1,431,167 files), tiny contents: the metadata workloads.
FULL_META = Scale("full-tiny-gzip", generate.Spec(tiny=True, test=100_000))
#: 100 classes x 100 train, 5,000 val, 10,000 test, ImageNet-like sizes (25,000 files, 2.9 GB).
FULL_READ = Scale("real-100x100", generate.Spec(classes=100, train_per_class=100))
#: --quick: 100,000 tiny entries, and 5,000 realistic files.
QUICK_META = Scale(
    "quick100k-tiny-gzip",
    generate.Spec(classes=200, train_per_class=400, val_per_class=50, test=10_000, tiny=True),
)
QUICK_READ = Scale(
    "quick5k-real", generate.Spec(classes=20, train_per_class=200, val_per_class=25, test=500)
)


def set_dir(work: Path, scale: Scale, variant: str) -> Path:
    return work / (scale.name if variant == "gzip" else f"{scale.base}-{variant}")


def unpacked_dir(work: Path, scale: Scale) -> Path:
    return work / "unpacked" / scale.name


def _note(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def ensure(work: Path, scale: Scale, variants: list[str]) -> dict[str, Path]:
    """Generate or reuse the gzip set, unpack it once, and pack the other variants from it."""
    gz = set_dir(work, scale, "gzip")
    if not all((gz / f"{s}.squashfs").is_file() for s in SPLITS):
        _note(f"generating {gz} (the project's generator) ...")
        generate.generate(gz, scale.spec)
    tree = unpacked_dir(work, scale)
    done = tree.with_name(tree.name + ".done")
    if not done.exists():
        _note(f"unpacking {gz} into {tree} ...")
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir(parents=True)
        for s in SPLITS:
            cmd = ["unsquashfs", "-q", "-n", "-d", str(tree / s), str(gz / f"{s}.squashfs")]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        done.touch()
    out = {"gzip": gz}
    for variant in variants:
        if variant == "gzip":
            continue
        d = set_dir(work, scale, variant)
        if not all((d / f"{s}.squashfs").is_file() for s in SPLITS):
            _note(f"packing {d} from {tree} (mksquashfs {' '.join(VARIANTS[variant])}) ...")
            d.mkdir(parents=True, exist_ok=True)
            spec = replace(scale.spec, mksquashfs_args=VARIANTS[variant])
            for s in SPLITS:
                generate.mksquashfs(tree / s, d / f"{s}.squashfs", spec)
            for name in LISTS:
                if (gz / name).is_file():
                    shutil.copy(gz / name, d / name)
        out[variant] = d
    return out


@dataclass(frozen=True)
class File:
    split: str
    relpath: str  # inside the split's image
    wnid: str  # val: its label; else ""
    size: int


def files(work: Path, scale: Scale) -> list[File]:
    """Every file of the set, in listing order, with its size from the unpacked tree."""
    gz = set_dir(work, scale, "gzip")
    tree = unpacked_dir(work, scale)
    labels: dict[str, str] = {}
    if (gz / "val_labels.txt").is_file():
        for line in (gz / "val_labels.txt").read_text().splitlines():
            name, wnid = line.split()
            labels[name] = wnid
    out = []
    for s in SPLITS:
        for rel in (gz / f"{s}_files.txt").read_text().splitlines():
            size = (tree / s / rel).stat().st_size
            out.append(File(s, rel, labels.get(rel, "") if s == "val" else "", size))
    return out
