"""Synthetic ImageNet: ImageNet-shaped data, laid out as clusters and downloads hold it.

Real ImageNet cannot be fetched here, so tests and benchmarks run on generated data that has
its shape: the real 1000 wnids and names, real file-name patterns (`<wnid>_<n>.JPEG` with
non-consecutive n, `ILSVRC2012_val_%08d.JPEG` carrying the real val labels), JPEGs with
ImageNet's pixel and byte sizes, and its oddities (CMYK and grayscale JPEGs, a PNG named
`.JPEG`).

The work splits in three steps:

1. `plan()` turns a `Spec` into the list of `Member`s (one per file) -- pure and deterministic:
   every random choice is drawn from generators seeded by the spec's seed and the file's path,
   so the same seed gives the same bytes whatever the worker count or order.
2. `render()` makes one file's bytes. Realistic JPEGs are smooth colour fields plus mid and
   fine noise whose strength sets the compressed size; `tiny` JPEGs (1-2 KB, for
   full-entry-count metadata work) are a handful of precomputed images made unique by a JPEG
   comment holding the file's path, so 1.43M of them cost little more than the writes.
3. A layout writes the members in worker processes (progress bar) and packs them:
   `cluster` (one SquashFS per split, flat val, `*_files.txt`, `val_labels.txt`), `kaggle`
   (`ILSVRC/Data/CLS-LOC/...`, `LOC_*` files, unpacked, as SquashFS or as Kaggle's one zip)
   or `official` (the
   ILSVRC2012 tarballs and a devkit-style ground truth).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import hashlib
import io
import multiprocessing
import os
import random
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from tqdm import tqdm

from imagenetfs import synsets
from imagenetfs.errors import ToolError, UsageError
from imagenetfs.source import KAGGLE_ZIP, OFFICIAL_TARS

Layout = Literal["cluster", "kaggle", "official"]
Kind = Literal["rgb", "gray", "cmyk", "png"]
LAYOUTS: tuple[Layout, ...] = ("cluster", "kaggle", "official")

#: mtime of generated files: the ILSVRC2012 release, with a per-file spread of a few days.
BASE_MTIME = 1_333_000_000
#: The one train image of the real set that is a PNG, and the one CMYK val image.
PNG_TRAIN = ("n02105855", 2933)
CMYK_VAL = 19877
#: Real counts: 22 CMYK JPEGs among 1,281,167 train images; ~2% grayscale.
CMYK_TRAIN_RATE = 22 / synsets.N_TRAIN
GRAY_RATE = 0.02


@dataclass(frozen=True)
class Spec:
    """What to generate. `train_per_class=None` means ImageNet's real per-class counts."""

    classes: int = 1000
    train_per_class: int | None = None
    val_per_class: int = 50
    test: int | None = None  # None: twice the val count, as in ImageNet
    tiny: bool = False
    seed: int = 0
    layout: Layout = "cluster"
    mksquashfs_args: tuple[str, ...] = ()
    nest: bool = False  # cluster: each image holds <split>/... instead of its files at the root
    kaggle_squashfs: bool = False  # kaggle: ILSVRC/ packed as ILSVRC.squashfs
    kaggle_zip: bool = False  # kaggle: everything in one zip, as Kaggle ships it
    jobs: int = 0  # 0: all cores
    progress: bool = True  # progress bars and "packing ..." notes on stderr

    def validate(self) -> None:
        if not 1 <= self.classes <= synsets.N_CLASSES:
            raise UsageError(f"--classes must be 1..{synsets.N_CLASSES}, not {self.classes}")
        if self.train_per_class is not None and not 0 <= self.train_per_class <= 10_000:
            raise UsageError(f"--train-per-class must be 0..10000, not {self.train_per_class}")
        if not 0 <= self.val_per_class <= 50:
            raise UsageError(
                f"--val-per-class must be 0..50 (ImageNet has 50), not {self.val_per_class}"
            )
        if self.test is not None and not 0 <= self.test <= synsets.N_TEST:
            raise UsageError(f"--test must be 0..{synsets.N_TEST}, not {self.test}")
        if self.kaggle_squashfs and self.kaggle_zip:
            raise UsageError("--kaggle-squashfs and --kaggle-zip exclude each other")
        if self.layout not in LAYOUTS:
            raise UsageError(f"unknown layout {self.layout!r}; choose from {', '.join(LAYOUTS)}")

    @property
    def test_count(self) -> int:
        return 2 * self.val_per_class * self.classes if self.test is None else self.test


@dataclass(frozen=True)
class Member:
    """One file to generate. `relpath` is relative to its split's root."""

    split: str
    relpath: str
    wnid: str | None
    kind: Kind
    mtime: int

    @property
    def name(self) -> str:
        return self.relpath.rsplit("/", 1)[-1]


def _rng(*key: object) -> random.Random:
    """A generator seeded by `key`, stable across runs and Python versions."""
    return random.Random("/".join(map(str, key)))


def _file_seed(seed: int, split: str, relpath: str) -> int:
    digest = hashlib.blake2b(f"{seed}/{split}/{relpath}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def real_train_counts() -> list[int]:
    """Per-class train counts like ImageNet's: mostly 1300, some as low as 732, 1,281,167 total."""
    rng = _rng("train-counts")
    counts = [1300] * synsets.N_CLASSES
    short = rng.sample(range(synsets.N_CLASSES), 100)  # ~10% of classes have fewer than 1300
    counts[short[0]] = 732  # the smallest class of the real set
    deficit = sum(counts) - synsets.N_TRAIN
    while deficit:
        c = rng.choice(short)
        take = min(deficit, rng.randint(1, 40), counts[c] - 732)
        counts[c] -= take
        deficit -= take
    return counts


def plan(spec: Spec) -> list[Member]:
    """Every file of the dataset, deterministic for `spec.seed`, train then val then test."""
    spec.validate()
    wnids = synsets.wnids()[: spec.classes]
    counts = (
        real_train_counts()[: spec.classes]
        if spec.train_per_class is None
        else [spec.train_per_class] * spec.classes
    )
    members: list[Member] = []

    def add(split: str, relpath: str, wnid: str | None, rng: random.Random) -> None:
        kind: Kind = "gray" if rng.random() < GRAY_RATE else "rgb"
        members.append(Member(split, relpath, wnid, kind, BASE_MTIME + rng.randrange(5 * 86400)))

    # Train: <wnid>/<wnid>_<n>.JPEG, n drawn without replacement from 1..~4x the count.
    for wnid, count in zip(wnids, counts, strict=True):
        rng = _rng(spec.seed, "train", wnid)
        numbers = rng.sample(range(1, max(4 * count, 2000) + 1), count)
        if wnid == PNG_TRAIN[0] and count and PNG_TRAIN[1] not in numbers:
            numbers[0] = PNG_TRAIN[1]
        for n in sorted(numbers):
            add("train", f"{wnid}/{wnid}_{n}.JPEG", wnid, rng)
    _mark_oddities(spec, members, wnids)

    # Val: the real file numbers whose real label is among our classes, first N per class.
    labels = synsets.val_labels()
    taken = dict.fromkeys(range(spec.classes), 0)
    for number in range(1, synsets.N_VAL + 1):
        name = synsets.eval_filename("val", number)
        label = labels[name]
        if label < spec.classes and taken[label] < spec.val_per_class:
            taken[label] += 1
            add("val", name, wnids[label], _rng(spec.seed, "val", number))
    val = [m for m in members if m.split == "val"]
    if val:
        cmyk = next((m for m in val if m.name == synsets.eval_filename("val", CMYK_VAL)), None)
        _set_kind(members, cmyk or val[_rng(spec.seed, "cmyk-val").randrange(len(val))], "cmyk")

    for number in range(1, spec.test_count + 1):
        add("test", synsets.eval_filename("test", number), None, _rng(spec.seed, "test", number))
    return members


def _set_kind(members: list[Member], member: Member, kind: Kind) -> None:
    members[members.index(member)] = dataclasses.replace(member, kind=kind)


def _mark_oddities(spec: Spec, members: list[Member], wnids: Sequence[str]) -> None:
    """One PNG named .JPEG and ImageNet's rate of CMYK JPEGs (at least one) in train."""
    train = [i for i, m in enumerate(members) if m.split == "train"]
    if not train:
        return
    png_wnid = PNG_TRAIN[0] if PNG_TRAIN[0] in wnids else wnids[-1]
    png_path = f"{png_wnid}/{png_wnid}_{PNG_TRAIN[1]}.JPEG"
    png = next((i for i in train if members[i].relpath == png_path), None)
    if png is None:  # class absent or empty: the PNG goes to the last class with files
        png = train[-1]
    members[png] = dataclasses.replace(members[png], kind="png")
    rng = _rng(spec.seed, "cmyk-train")
    n_cmyk = max(1, round(CMYK_TRAIN_RATE * len(train)))
    for i in rng.sample([i for i in train if i != png], min(n_cmyk, len(train) - 1)):
        members[i] = dataclasses.replace(members[i], kind="cmyk")


# --- rendering ------------------------------------------------------------------------------

#: Pixel sizes of ImageNet photos: (width, height, weight); the rest are drawn freely.
_DIMENSIONS = [
    (500, 375, 0.36),
    (500, 333, 0.16),
    (375, 500, 0.11),
    (500, 334, 0.05),
    (333, 500, 0.05),
    (500, 500, 0.03),
    (500, 400, 0.03),
    (500, 332, 0.02),
]


def _dimensions(rng: np.random.Generator) -> tuple[int, int]:
    r = rng.random()
    for w, h, weight in _DIMENSIONS:
        if r < weight:
            return w, h
        r -= weight
    big = rng.random() < 0.08  # a few large originals, as ImageNet has
    long = int(rng.integers(800, 2600) if big else rng.integers(120, 640))
    aspect = float(rng.uniform(1.0, 1.8))
    short = max(32, int(long / aspect))
    return (long, short) if rng.random() < 0.75 else (short, long)


def _photo(rng: np.random.Generator, width: int, height: int, detail: float) -> Image.Image:
    """A photo-like RGB image: smooth colour fields, mid-scale texture and fine grain."""
    lo = rng.integers(0, 256, (max(2, height // 64), max(2, width // 64), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(lo).resize((width, height), Image.Resampling.BICUBIC))
    mid_small = rng.integers(0, 256, (height // 6 + 1, width // 6 + 1, 3), dtype=np.uint8)
    mid = np.asarray(
        Image.fromarray(mid_small).resize((width, height), Image.Resampling.BILINEAR)
    ).astype(np.int16)
    fine = rng.integers(-128, 128, (height, width, 1), dtype=np.int16)
    pixels = base.astype(np.int16) + ((mid - 128) * 0.6).astype(np.int16)
    pixels += (fine * detail).astype(np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _encode(image: Image.Image, kind: Kind, quality: int) -> bytes:
    out = io.BytesIO()
    if kind == "png":
        image.save(out, "PNG", optimize=False)
        return out.getvalue()
    if kind == "gray":
        image = image.convert("L")
    elif kind == "cmyk":
        image = image.convert("CMYK")
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def render_realistic(member: Member, seed: int) -> bytes:
    """A JPEG with ImageNet-like pixel size and byte size (mean ~110 KB, long-tailed spread)."""
    rng = np.random.default_rng(_file_seed(seed, member.split, member.relpath))
    width, height = _dimensions(rng)
    if member.kind == "png":  # the real one is a small PNG
        width, height = width // 2, height // 2
    detail = float(np.clip(rng.lognormal(np.log(0.18), 0.8), 0.0, 0.9))
    quality = int(rng.choice([75, 85, 90, 92, 95, 96], p=[0.1, 0.15, 0.25, 0.2, 0.2, 0.1]))
    return _encode(_photo(rng, width, height, detail), member.kind, quality)


@functools.cache
def _tiny_pool(kind: Kind) -> tuple[bytes, ...]:
    """A few small distinct images per kind; `render_tiny` makes each file unique."""
    rng = np.random.default_rng(("rgb", "gray", "cmyk", "png").index(kind))
    pool = []
    for i in range(16):
        w, h = (40, 30) if i % 4 else (30, 40)
        pool.append(_encode(_photo(rng, w, h, 0.1 + 0.02 * i), kind, 80))
    return tuple(pool)


def render_tiny(member: Member, seed: int) -> bytes:
    """A valid 1-2.5 KB JPEG (or PNG) unique to this file: a pooled image plus a comment.

    The comment pads each file to a size drawn uniformly from 1000..2599 bytes: besides
    looking like a spread of real files, distinct sizes keep mksquashfs's duplicate
    detection (a chain per file size) linear instead of quadratic over 1.43M files.
    """
    digest = _file_seed(seed, member.split, member.relpath)
    base = _tiny_pool(member.kind)[digest % 16]
    if member.kind == "png":
        return base  # a single file per dataset: uniqueness does not matter
    comment = f"imagenetfs synthetic {member.split}/{member.relpath} {digest:016x} ".encode()
    target = 1000 + (digest >> 8) % 1600
    comment += b"." * max(0, target - len(base) - len(comment) - 4)
    segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
    return base[:2] + segment + base[2:]  # COM right after SOI


def render(member: Member, seed: int, tiny: bool) -> bytes:
    return render_tiny(member, seed) if tiny else render_realistic(member, seed)


# --- writing --------------------------------------------------------------------------------


def _write_chunk(args: tuple[list[tuple[Member, str]], int, bool]) -> tuple[int, int]:
    chunk, seed, tiny = args
    total = 0
    for member, path in chunk:
        data = render(member, seed, tiny)
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, (member.mtime, member.mtime))
        total += len(data)
    return len(chunk), total


def write_members(
    placed: Sequence[tuple[Member, Path]], spec: Spec, desc: str = "generating"
) -> int:
    """Render and write every member to its path, in parallel; returns the bytes written."""
    dirs = sorted({str(path.parent) for _, path in placed})
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    jobs = spec.jobs or os.cpu_count() or 1
    size = 64 if not spec.tiny else 2000
    chunks = [
        ([(m, str(p)) for m, p in placed[i : i + size]], spec.seed, spec.tiny)
        for i in range(0, len(placed), size)
    ]
    total = 0
    with tqdm(
        total=len(placed),
        desc=desc,
        unit="file",
        unit_scale=True,
        disable=None if spec.progress else True,
    ) as bar:
        if jobs == 1 or len(chunks) == 1:
            results: Iterable[tuple[int, int]] = map(_write_chunk, chunks)
            for n, nbytes in results:
                bar.update(n)
                total += nbytes
        else:
            with multiprocessing.get_context("fork").Pool(jobs) as pool:
                for n, nbytes in pool.imap_unordered(_write_chunk, chunks):
                    bar.update(n)
                    total += nbytes
    for d in reversed(dirs):  # deepest first, so parents keep their own mtime
        os.utime(d, (BASE_MTIME, BASE_MTIME))
    return total


# --- layouts --------------------------------------------------------------------------------


def mksquashfs(source: Path, image: Path, spec: Spec) -> None:
    """Pack `source` into `image` with the spec's mksquashfs arguments (gzip by default)."""
    exe = shutil.which("mksquashfs")
    if exe is None:
        raise ToolError(
            "mksquashfs not found: install squashfs-tools (scripts/setup.sh does; without root, "
            "an admin: apt-get install squashfs-tools, or dnf install squashfs-tools)"
        )
    cmd = [exe, str(source), str(image), "-noappend", "-all-root", "-mkfs-time", str(BASE_MTIME)]
    if spec.jobs:
        cmd += ["-processors", str(spec.jobs)]
    if spec.tiny:
        # Tiny files are unique by construction (a comment holds their path), but share a
        # few thousand sizes: mksquashfs's duplicate search, one chain per size, then grows
        # quadratically (1.28M files: minutes become most of an hour).
        cmd += ["-no-duplicates"]
    cmd += list(spec.mksquashfs_args)
    if not sys.stderr.isatty():
        cmd += ["-no-progress"]
    image.unlink(missing_ok=True)
    result = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise ToolError(f"mksquashfs failed for {image}: {result.stderr.strip()[-500:]}")


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def _by_split(members: Sequence[Member]) -> dict[str, list[Member]]:
    out: dict[str, list[Member]] = {"train": [], "val": [], "test": []}
    for m in members:
        out[m.split].append(m)
    return out


def build_cluster(out: Path, spec: Spec, members: Sequence[Member]) -> None:
    """`{train,val,test}.squashfs` (flat val), `*_files.txt` and `val_labels.txt`."""
    staging = out / ".imagenetfs-staging"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for split, items in _by_split(members).items():
            root = staging / split
            inner = root / split if spec.nest else root
            prefix = f"{split}/" if spec.nest else ""
            write_members([(m, inner / m.relpath) for m in items], spec, split)
            inner.mkdir(parents=True, exist_ok=True)
            os.utime(inner, (BASE_MTIME, BASE_MTIME))
            _note(spec, f"packing {split}.squashfs ({len(items)} files)")
            mksquashfs(root, out / f"{split}.squashfs", spec)
            shutil.rmtree(root)
            _write_lines(out / f"{split}_files.txt", sorted(prefix + m.relpath for m in items))
            if split == "val":
                _write_lines(out / "val_labels.txt", (f"{m.relpath} {m.wnid}" for m in items))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _kaggle_files(out: Path, members: Sequence[Member], wnids: Sequence[str]) -> None:
    _write_lines(out / "LOC_synset_mapping.txt", (f"{w} {synsets.words(w)}" for w in wnids))
    with open(out / "LOC_val_solution.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["ImageId", "PredictionString"])
        for m in members:
            if m.split == "val":
                rng = _rng("bbox", m.relpath)
                x, y = rng.randrange(0, 200), rng.randrange(0, 150)
                box = f"{m.wnid} {x} {y} {x + rng.randrange(50, 300)} {y + rng.randrange(50, 220)}"
                writer.writerow([m.name.removesuffix(".JPEG"), box + " "])


def build_kaggle(out: Path, spec: Spec, members: Sequence[Member]) -> None:
    """`ILSVRC/Data/CLS-LOC/{train/<wnid>,val,test}/`, `LOC_synset_mapping.txt`,
    `LOC_val_solution.csv`; with `kaggle_squashfs`, ILSVRC/ becomes `ILSVRC.squashfs`; with
    `kaggle_zip`, all of it goes into `KAGGLE_ZIP`."""
    ilsvrc = out / "ILSVRC"
    shutil.rmtree(ilsvrc, ignore_errors=True)
    data = ilsvrc / "Data" / "CLS-LOC"
    for split, items in _by_split(members).items():
        write_members([(m, data / split / m.relpath) for m in items], spec, split)
        (data / split).mkdir(parents=True, exist_ok=True)
    for d in (data, data.parent, ilsvrc):
        os.utime(d, (BASE_MTIME, BASE_MTIME))
    _kaggle_files(out, members, synsets.wnids()[: spec.classes])
    if spec.kaggle_squashfs:
        _note(spec, "packing ILSVRC.squashfs")
        mksquashfs(ilsvrc, out / "ILSVRC.squashfs", spec)
        shutil.rmtree(ilsvrc)
    elif spec.kaggle_zip:
        _note(spec, f"writing {KAGGLE_ZIP}")
        _zip_kaggle(out)


def _zip_kaggle(out: Path) -> None:
    """Move `ILSVRC/` and the `LOC_*` files into `KAGGLE_ZIP`, in the zip's order (the LOC
    files first, then the tree, directories before their contents), members deflated."""
    names = ["LOC_synset_mapping.txt", "LOC_val_solution.csv"]
    for top, dirs, files in os.walk(out / "ILSVRC"):
        dirs.sort()
        rel = Path(top).relative_to(out)
        names.append(str(rel))  # (zipfile names a directory's member `<rel>/`)
        names.extend(str(rel / f) for f in sorted(files))
    for name in names:  # the same bytes for the same spec: no "now" inside
        if name.startswith("LOC_") or (out / name).is_dir():
            os.utime(out / name, (BASE_MTIME, BASE_MTIME))
    tmp = out / f".{KAGGLE_ZIP}.tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as z:
        for name in names:
            z.write(out / name, name)
    os.replace(tmp, out / KAGGLE_ZIP)
    shutil.rmtree(out / "ILSVRC")
    for name in names[:2]:
        (out / name).unlink()


def ilsvrc_ids() -> dict[str, int]:
    """Devkit ILSVRC2012_IDs 1..1000: a fixed order that differs from sorted-wnid order."""
    order = list(synsets.wnids())
    _rng("ILSVRC2012_ID").shuffle(order)
    return {wnid: i + 1 for i, wnid in enumerate(order)}


def _tarinfo(name: str, size: int, mtime: int, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = size, mtime
    info.mode = 0o755 if directory else 0o644
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.uname = info.gname = "root"
    return info


def _tar_files(tar: tarfile.TarFile, files: Iterable[tuple[str, Path, int]]) -> None:
    for name, path, mtime in files:
        with open(path, "rb") as f:
            tar.addfile(_tarinfo(name, os.fstat(f.fileno()).st_size, mtime), f)


def build_official(out: Path, spec: Spec, members: Sequence[Member]) -> None:
    """The ILSVRC2012 downloads: train tar of per-class tars, val tar, test tar, devkit."""
    staging = out / ".imagenetfs-staging"
    shutil.rmtree(staging, ignore_errors=True)
    split_of = _by_split(members)
    try:
        placed = [(m, staging / m.split / m.relpath) for m in members]
        write_members(placed, spec, "images")
        train_tar = OFFICIAL_TARS["train"][0]
        _note(spec, f"writing {train_tar}")
        with tarfile.open(out / train_tar, "w", format=tarfile.GNU_FORMAT) as t:
            per_class: dict[str | None, list[Member]] = {}
            for m in split_of["train"]:
                per_class.setdefault(m.wnid, []).append(m)
            for wnid in synsets.wnids()[: spec.classes]:
                buf = io.BytesIO()
                with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as inner:
                    _tar_files(
                        inner,
                        (
                            (m.name, staging / "train" / m.relpath, m.mtime)
                            for m in per_class.get(wnid, [])
                        ),
                    )
                t.addfile(
                    _tarinfo(f"{wnid}.tar", buf.tell(), BASE_MTIME), io.BytesIO(buf.getvalue())
                )
        for split in ("val", "test"):
            tar_name = OFFICIAL_TARS[split][0]
            _note(spec, f"writing {tar_name}")
            with tarfile.open(out / tar_name, "w", format=tarfile.GNU_FORMAT) as t:
                prefix = "test/" if split == "test" else ""
                _tar_files(
                    t,
                    (
                        (prefix + m.name, staging / split / m.relpath, m.mtime)
                        for m in split_of[split]
                    ),
                )
        _write_devkit(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


DEVKIT = "ILSVRC2012_devkit_t12"


def _write_devkit(out: Path) -> None:
    """The devkit as ImageNet ships it, whatever subset was generated: all 1000 synsets in
    meta.mat and a ground truth line (an ILSVRC2012_ID) for each of the 50,000 val images."""
    from imagenetfs.matfile import Synset, write_synsets

    ids = ilsvrc_ids()
    rows = sorted(
        (
            Synset(
                ILSVRC2012_ID=ids[w],
                WNID=w,
                words=synsets.words(w),
                gloss=f"synthetic gloss for {synsets.words(w).split(', ')[0]}",
                num_children=0,
                children=(),
                wordnet_height=0,
                num_train_images=0,
            )
            for w in ids
        ),
        key=lambda s: s.ILSVRC2012_ID,
    )
    meta = io.BytesIO()
    write_synsets(meta, rows)
    wnids, labels = synsets.wnids(), synsets.val_labels()
    truth = "".join(
        f"{ids[wnids[labels[synsets.eval_filename('val', n)]]]}\n"
        for n in range(1, synsets.N_VAL + 1)
    ).encode()
    with tarfile.open(out / f"{DEVKIT}.tar.gz", "w:gz", format=tarfile.GNU_FORMAT) as t:
        for d in (DEVKIT, f"{DEVKIT}/data"):
            t.addfile(_tarinfo(d, 0, BASE_MTIME, directory=True))
        for name, blob in (
            ("meta.mat", meta.getvalue()),
            ("ILSVRC2012_validation_ground_truth.txt", truth),
        ):
            t.addfile(_tarinfo(f"{DEVKIT}/data/{name}", len(blob), BASE_MTIME), io.BytesIO(blob))


def _note(spec: Spec, message: str) -> None:
    if spec.progress:
        print(f"imagenetfs: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Summary:
    files: int
    bytes: int
    seconds: float


def generate(out: Path, spec: Spec) -> Summary:
    """Generate the dataset described by `spec` into directory `out` (created if missing)."""
    spec.validate()
    started = time.monotonic()
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    members = plan(spec)
    {"cluster": build_cluster, "kaggle": build_kaggle, "official": build_official}[spec.layout](
        out, spec, members
    )
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return Summary(len(members), size, time.monotonic() - started)


#: The built-in sample: a few MB of ImageNet-shaped SquashFS images, made in seconds.
SAMPLE = Spec(classes=10, train_per_class=4, val_per_class=2, test=6)


def sample(out: Path, *, progress: bool = True) -> Summary:
    return generate(out, dataclasses.replace(SAMPLE, progress=progress))


# --- command line ---------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="make_fake_imagenet.py",
        description=(
            "Generate a synthetic ImageNet (ILSVRC2012) dataset with the real wnids, names, "
            "file-name patterns and val labels, laid out as a cluster or a download holds it."
        ),
    )
    p.add_argument("out", type=Path, help="output directory (created if missing)")
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="cluster",
        help="cluster: {train,val,test}.squashfs + *_files.txt + val_labels.txt "
        "(default); kaggle: ILSVRC/Data/CLS-LOC + LOC_* files; official: the "
        "ILSVRC2012 tarballs + devkit",
    )
    p.add_argument("--classes", type=int, default=1000, help="first K classes (default 1000)")
    p.add_argument(
        "--train-per-class",
        type=int,
        default=None,
        help="train images per class (default: ImageNet's real counts, 732-1300)",
    )
    p.add_argument("--val-per-class", type=int, default=50, help="val images per class (<= 50)")
    p.add_argument(
        "--test", type=int, default=None, help="test images (default: twice the val count)"
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="ImageNet's full counts: 1,281,167 train, 50,000 val, 100,000 test",
    )
    p.add_argument(
        "--tiny",
        action="store_true",
        help="valid 1-2 KB JPEGs instead of realistic ~110 KB ones (metadata tests)",
    )
    p.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    p.add_argument(
        "--mksquashfs-args",
        default="",
        help="extra mksquashfs arguments, e.g. '-comp zstd' or '-noD -noF'",
    )
    p.add_argument(
        "--nest",
        action="store_true",
        help="cluster: images hold train/<wnid>/... instead of <wnid>/... at the root",
    )
    p.add_argument(
        "--kaggle-squashfs",
        action="store_true",
        help="kaggle: pack ILSVRC/ into ILSVRC.squashfs instead of leaving it unpacked",
    )
    p.add_argument(
        "--kaggle-zip",
        action="store_true",
        help=f"kaggle: everything in one {KAGGLE_ZIP}, as Kaggle ships it",
    )
    p.add_argument("-j", "--jobs", type=int, default=0, help="worker processes (default: cores)")
    return p


def spec_from_args(args: argparse.Namespace) -> Spec:
    if args.full:
        args.classes, args.train_per_class, args.val_per_class = 1000, None, 50
        args.test = args.test if args.test is not None else synsets.N_TEST
    try:
        extra = tuple(shlex.split(args.mksquashfs_args))
    except ValueError as e:
        raise UsageError(f"--mksquashfs-args: {e}") from None
    return Spec(
        classes=args.classes,
        train_per_class=args.train_per_class,
        val_per_class=args.val_per_class,
        test=args.test,
        tiny=args.tiny,
        seed=args.seed,
        layout=args.layout,
        mksquashfs_args=extra,
        nest=args.nest,
        kaggle_squashfs=args.kaggle_squashfs,
        kaggle_zip=args.kaggle_zip,
        jobs=args.jobs,
    )


def describe(out: Path, summary: Summary) -> str:
    return (
        f"wrote {summary.files:,} images to {out} "
        f"({summary.bytes / 1e6:,.1f} MB on disk) in {summary.seconds:.1f} s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    summary = generate(args.out, spec_from_args(args))
    print(describe(args.out, summary))
    return 0
