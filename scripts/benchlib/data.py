"""Benchmark data: generated (or reused) image sets, their unpacked trees, and file lists.

A *set* is a directory as the cluster keeps ImageNet (`{train,val,test}.squashfs`, the
`*_files.txt` listings, `val_labels.txt`), made by the project's generator. Each scale has a
gzip set (generated) and a `-noD -noF` set (the gzip set's unpacked files packed again with the
generator's own mksquashfs call: same files, no rendering). The unpacked tree is unsquashfs'd
once into `<work>/unpacked/<gzip set>/{train,val,test}` and serves every variant.

Files are named the same way for every contender by `(split, relpath, wnid)`: `relpath` is the
path inside the split's image (`<wnid>/<file>` for train, `<file>` for val and test); imagenetfs
serves val at `val/<wnid>/<file>` (regrouped by label), the others at `<file>`.

`--tars` adds each scale's *official* set, `<work>/<base>-official`: the ILSVRC2012 downloads
as the generator's `official` layout writes them (`ILSVRC2012_img_train.tar` of per-class
`<wnid>.tar`, `ILSVRC2012_img_val.tar` flat, `ILSVRC2012_img_test_v10102019.tar` under
`test/`, the devkit tarball), from the same spec: the same members with the same bytes as the
cluster set, since the generator draws every file from the seed and the file's path, whatever
the layout. `ensure_official` checks that once (every file's name and size, the bytes of a
sample) before the set is used; the file lists stay the cluster set's.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import subprocess
import sys
import tarfile
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
    """Generate or reuse the gzip set, unpack it once, and pack the other image variants from
    it (names in `variants` that are not image variants, e.g. "tars", are left out)."""
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
        if variant == "gzip" or variant not in VARIANTS:
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


# --- the official tars (--tars) ------------------------------------------------------------

#: The official download's tar of each split (the test tar of 2019, else the older name).
TARS = {
    "train": ("ILSVRC2012_img_train.tar",),
    "val": ("ILSVRC2012_img_val.tar",),
    "test": ("ILSVRC2012_img_test_v10102019.tar", "ILSVRC2012_img_test.tar"),
}
#: Files checked byte for byte against the unpacked tree, per split, when a set is verified.
VERIFY_SAMPLE = 100


def official_dir(work: Path, scale: Scale) -> Path:
    return work / f"{scale.base}-official"


def tar_of(setdir: Path, split: str) -> Path:
    """The split's tar in an official set (the first name of `TARS` when none exists)."""
    names = TARS[split]
    return next((setdir / n for n in names if (setdir / n).is_file()), setdir / names[0])


def _verified_mark(setdir: Path) -> Path:
    return setdir.with_name(setdir.name + ".verified")  # beside: the set stays as downloaded


def tar_members(setdir: Path) -> dict[tuple[str, str], tuple[int, int]]:
    """(split, relpath as in the cluster set) -> (offset of the file's bytes in its split's
    tar, size), for every file of an official set (train: inside the per-class tars)."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for split in SPLITS:
        with tarfile.open(tar_of(setdir, split)) as t:
            for m in t:
                if not m.isfile():
                    continue
                if split != "train":
                    rel = m.name.removeprefix("test/") if split == "test" else m.name
                    out[(split, rel)] = (m.offset_data, m.size)
                    continue
                wnid = m.name.removesuffix(".tar")
                inner_file = t.extractfile(m)
                assert inner_file is not None
                with tarfile.open(fileobj=inner_file) as inner:
                    base = m.offset_data  # inner offsets count from the inner tar's start
                    for f in inner:
                        if f.isfile():
                            out[(split, f"{wnid}/{f.name}")] = (base + f.offset_data, f.size)
    return out


def verify_official(work: Path, scale: Scale, setdir: Path) -> None:
    """Check that the official set holds the cluster set's files (every name and size, and
    the bytes of a random sample of each split) and mark it verified; raise if not."""
    expected = files(work, scale)
    members = tar_members(setdir)
    missing = [f for f in expected if (f.split, f.relpath) not in members]
    wrong = [
        f
        for f in expected
        if (f.split, f.relpath) in members and members[(f.split, f.relpath)][1] != f.size
    ]
    if missing or wrong or len(members) != len(expected):
        raise RuntimeError(
            f"{setdir}: not the files of {set_dir(work, scale, 'gzip')}: {len(missing)} missing, "
            f"{len(wrong)} of another size, {len(members):,} files for {len(expected):,} "
            f"(first: {(missing + wrong)[:1]})"
        )
    tree = unpacked_dir(work, scale)
    rng = random.Random(0)
    for split in SPLITS:
        of_split = [f for f in expected if f.split == split]
        with open(tar_of(setdir, split), "rb") as tar:
            for f in rng.sample(of_split, min(VERIFY_SAMPLE, len(of_split))):
                offset, size = members[(f.split, f.relpath)]
                tar.seek(offset)
                got = hashlib.sha256(tar.read(size)).digest()
                want = hashlib.sha256((tree / split / f.relpath).read_bytes()).digest()
                if got != want:
                    raise RuntimeError(f"{setdir}: {split}/{f.relpath} differs from {tree}")
    _verified_mark(setdir).write_text(
        f"{len(members)} files, names and sizes as {set_dir(work, scale, 'gzip')}, "
        f"up to {VERIFY_SAMPLE} per split byte for byte\n"
    )


def ensure_official(work: Path, scale: Scale) -> Path:
    """The scale's official set: generated (the project's generator, layout `official`) if
    missing, verified once against the cluster set (`ensure` that first)."""
    d = official_dir(work, scale)
    if not all(tar_of(d, s).is_file() for s in SPLITS):
        _note(f"generating {d} (the project's generator, layout official) ...")
        shutil.rmtree(d, ignore_errors=True)
        _verified_mark(d).unlink(missing_ok=True)
        generate.generate(d, replace(scale.spec, layout="official"))
    if not _verified_mark(d).exists():
        _note(f"checking {d} against {set_dir(work, scale, 'gzip')} ...")
        verify_official(work, scale, d)
    return d
