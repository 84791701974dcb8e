"""The synthetic ImageNet generator: counts, names, labels, valid images, layouts, determinism.

Images are built with the real mksquashfs and checked with the real unsquashfs.
"""

from __future__ import annotations

import collections
import csv
import hashlib
import io
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from helpers import extract_archive, one_error_line
from PIL import Image

from imagenetfs import generate, source, synsets
from imagenetfs.generate import Spec

TRAIN_NAME = re.compile(r"^(n\d{8})/\1_(\d+)\.JPEG$")
VAL_NAME = re.compile(r"^ILSVRC2012_val_\d{8}\.JPEG$")
TEST_NAME = re.compile(r"^ILSVRC2012_test_\d{8}\.JPEG$")

SMALL = Spec(classes=6, train_per_class=8, val_per_class=3, test=5)


def unsquashfs_list(image: Path) -> list[str]:
    """Regular files in an image, as unsquashfs -lln prints them (paths relative to root)."""
    out = subprocess.run(
        ["unsquashfs", "-lln", "-d", "", str(image)], check=True, capture_output=True, text=True
    ).stdout
    files = []
    for line in out.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[0].startswith("-"):
            files.append(fields[5].lstrip("/"))
    return sorted(files)


def digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- planning -------------------------------------------------------------------------------


def test_real_train_counts_match_imagenet() -> None:
    counts = generate.real_train_counts()
    assert len(counts) == 1000
    assert sum(counts) == 1_281_167
    assert min(counts) == 732 and max(counts) == 1300
    assert counts.count(1300) >= 850


def test_full_plan_has_imagenet_entry_counts() -> None:
    members = generate.plan(Spec(tiny=True, test=synsets.N_TEST))
    by_split = collections.Counter(m.split for m in members)
    assert by_split == {"train": 1_281_167, "val": 50_000, "test": 100_000}
    val_per_class = collections.Counter(m.wnid for m in members if m.split == "val")
    assert set(val_per_class.values()) == {50}
    assert len({(m.split, m.relpath) for m in members}) == len(members)
    kinds = collections.Counter(m.kind for m in members if m.split == "train")
    assert kinds["png"] == 1 and kinds["cmyk"] == 22
    png = next(m for m in members if m.kind == "png")
    assert png.relpath == "n02105855/n02105855_2933.JPEG"
    cmyk_val = [m.relpath for m in members if m.split == "val" and m.kind == "cmyk"]
    assert cmyk_val == ["ILSVRC2012_val_00019877.JPEG"]


def test_plan_names_and_labels() -> None:
    members = generate.plan(SMALL)
    wnids = synsets.wnids()[: SMALL.classes]
    train = [m for m in members if m.split == "train"]
    assert len(train) == 6 * 8
    for m in train:
        match = TRAIN_NAME.match(m.relpath)
        assert match and match.group(1) == m.wnid and m.wnid in wnids
    numbers = sorted(int(TRAIN_NAME.match(m.relpath).group(2)) for m in train[:8])  # type: ignore[union-attr]
    assert numbers != list(range(numbers[0], numbers[0] + 8)), "numbers must not be consecutive"

    val = [m for m in members if m.split == "val"]
    assert len(val) == 6 * 3
    labels = synsets.val_labels()
    for m in val:
        assert VAL_NAME.match(m.relpath)
        assert m.wnid == synsets.wnids()[labels[m.relpath]], "val labels are ImageNet's real ones"
    assert collections.Counter(m.wnid for m in val) == dict.fromkeys(wnids, 3)

    test = [m.relpath for m in members if m.split == "test"]
    assert test == [f"ILSVRC2012_test_{i:08d}.JPEG" for i in range(1, 6)]
    kinds = collections.Counter(m.kind for m in members)
    assert kinds["png"] == 1 and kinds["cmyk"] >= 2  # one in train, one in val


def test_plan_is_deterministic_and_seeded() -> None:
    assert generate.plan(SMALL) == generate.plan(SMALL)
    other = generate.plan(Spec(**{**SMALL.__dict__, "seed": 1}))
    assert [m.relpath for m in other] != [m.relpath for m in generate.plan(SMALL)]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (Spec(classes=0), "--classes"),
        (Spec(classes=1001), "--classes"),
        (Spec(val_per_class=51), "--val-per-class"),
        (Spec(test=-1), "--test"),
        (Spec(train_per_class=-3), "--train-per-class"),
    ],
)
def test_spec_validation(spec: Spec, message: str) -> None:
    with pytest.raises(generate.UsageError, match=message):
        spec.validate()


# --- rendering ------------------------------------------------------------------------------


def test_realistic_images_have_imagenet_sizes() -> None:
    members = [m for m in generate.plan(Spec(classes=100, train_per_class=3)) if m.kind == "rgb"]
    sizes, dims = [], collections.Counter()
    for m in members[:300]:
        data = generate.render_realistic(m, seed=0)
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            dims[img.size] += 1
        sizes.append(len(data))
    mean = sum(sizes) / len(sizes)
    assert 80_000 < mean < 140_000, f"mean file size {mean:.0f} B is not ImageNet-like"
    assert min(sizes) < 40_000 and max(sizes) > 200_000, "sizes must spread like ImageNet's"
    common = dims[(500, 375)] + dims[(500, 333)] + dims[(375, 500)]
    assert common > 0.4 * len(sizes)


def test_tiny_images_are_small_valid_and_unique() -> None:
    members = generate.plan(SMALL)
    blobs = {m.relpath: generate.render_tiny(m, seed=0) for m in members}
    assert len(set(blobs.values())) == len(blobs)
    for m in members:
        data = blobs[m.relpath]
        assert 300 < len(data) < 4000
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            expected = {"rgb": "RGB", "gray": "L", "cmyk": "CMYK", "png": "RGB"}[m.kind]
            assert img.mode == expected
            assert img.format == ("PNG" if m.kind == "png" else "JPEG")


# --- layouts --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cluster")
    generate.generate(out, SMALL)
    return out


def test_cluster_layout_files(cluster: Path) -> None:
    assert sorted(p.name for p in cluster.iterdir()) == [
        "test.squashfs",
        "test_files.txt",
        "train.squashfs",
        "train_files.txt",
        "val.squashfs",
        "val_files.txt",
        "val_labels.txt",
    ]
    members = generate.plan(SMALL)
    for split in ("train", "val", "test"):
        expected = sorted(m.relpath for m in members if m.split == split)
        listed = (cluster / f"{split}_files.txt").read_text().splitlines()
        assert listed == expected
        assert unsquashfs_list(cluster / f"{split}.squashfs") == expected
    labels = dict(line.split() for line in (cluster / "val_labels.txt").read_text().splitlines())
    real = synsets.val_labels()
    assert labels == {name: synsets.wnids()[real[name]] for name in labels}
    assert len(labels) == 18


def test_cluster_images_decode(cluster: Path, tmp_path: Path) -> None:
    """Pillow opens every file; the oddities are what ImageNet has."""
    modes: collections.Counter[tuple[str | None, str]] = collections.Counter()
    for split in ("train", "val", "test"):
        root = extract_archive(cluster / f"{split}.squashfs", tmp_path / split)
        for path in root.rglob("*.JPEG"):
            with Image.open(path) as img:
                img.load()
                modes[(img.format, img.mode)] += 1
                if img.format == "JPEG" and img.mode == "RGB":
                    assert min(img.size) >= 32
    assert modes[("PNG", "RGB")] == 1
    assert modes[("JPEG", "CMYK")] >= 2
    assert sum(modes.values()) == len(generate.plan(SMALL))


def test_same_seed_same_images(cluster: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate.generate(again, SMALL)
    for split in ("train", "val", "test"):
        a = extract_archive(cluster / f"{split}.squashfs", tmp_path / "a" / split)
        b = extract_archive(again / f"{split}.squashfs", tmp_path / "b" / split)
        assert digest_tree(a) == digest_tree(b)
        # mksquashfs builds reproducibly, so whole images are identical too
        assert (cluster / f"{split}.squashfs").read_bytes() == (
            again / f"{split}.squashfs"
        ).read_bytes()
    other = tmp_path / "other"
    generate.generate(other, Spec(**{**SMALL.__dict__, "seed": 7, "test": 1}))
    a = extract_archive(cluster / "test.squashfs", tmp_path / "c")
    b = extract_archive(other / "test.squashfs", tmp_path / "d")
    name = "ILSVRC2012_test_00000001.JPEG"
    assert (a / name).read_bytes() != (b / name).read_bytes()


@pytest.mark.parametrize(
    ("args", "compression"),
    [
        ("-comp zstd", "zstd"),
        ("-comp xz", "xz"),
        ("-comp lz4", "lz4"),
        ("-noD -noF", "gzip"),
    ],
)
def test_mksquashfs_args(tmp_path: Path, args: str, compression: str) -> None:
    spec = Spec(classes=2, train_per_class=3, val_per_class=1, test=1, tiny=True)
    spec = Spec(**{**spec.__dict__, "mksquashfs_args": tuple(args.split())})
    generate.generate(tmp_path, spec)
    info = subprocess.run(
        ["unsquashfs", "-s", str(tmp_path / "train.squashfs")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert f"Compression {compression}" in info
    if "-noD" in args:
        assert "Data is uncompressed" in info
        assert "Fragments are uncompressed" in info
    assert unsquashfs_list(tmp_path / "train.squashfs") == sorted(
        m.relpath for m in generate.plan(spec) if m.split == "train"
    )


def test_nested_cluster_layout(tmp_path: Path) -> None:
    spec = Spec(classes=2, train_per_class=2, val_per_class=1, test=1, tiny=True, nest=True)
    generate.generate(tmp_path, spec)
    train = unsquashfs_list(tmp_path / "train.squashfs")
    assert train and all(p.startswith("train/n0") for p in train)
    assert (tmp_path / "train_files.txt").read_text().splitlines() == train
    assert unsquashfs_list(tmp_path / "val.squashfs")[0].startswith("val/ILSVRC2012_val_")


@pytest.mark.parametrize("packed", ["no", "squashfs", "zip"])
def test_kaggle_layout(tmp_path: Path, packed: str) -> None:
    spec = Spec(classes=4, train_per_class=3, val_per_class=2, test=3, tiny=True)
    spec = Spec(
        **{
            **spec.__dict__,
            "layout": "kaggle",
            "kaggle_squashfs": packed == "squashfs",
            "kaggle_zip": packed == "zip",
        }
    )
    generate.generate(tmp_path / "k", spec)
    out = tmp_path / "k"
    if packed == "squashfs":
        assert not (out / "ILSVRC").exists()
        root = extract_archive(out / "ILSVRC.squashfs", tmp_path / "x")
    elif packed == "zip":  # everything inside, as Kaggle ships it; the zip is one others read
        assert sorted(p.name for p in out.iterdir()) == [source.KAGGLE_ZIP]
        extract_archive(out / source.KAGGLE_ZIP, out)
        root = out / "ILSVRC"
    else:
        root = out / "ILSVRC"
    data = root / "Data" / "CLS-LOC"
    members = generate.plan(spec)
    for split in ("train", "val", "test"):
        found = sorted(str(p.relative_to(data / split)) for p in (data / split).rglob("*.JPEG"))
        assert found == sorted(m.relpath for m in members if m.split == split)
    mapping = (out / "LOC_synset_mapping.txt").read_text().splitlines()
    assert mapping[0] == "n01440764 tench, Tinca tinca"
    assert [line.split()[0] for line in mapping] == list(synsets.wnids()[:4])
    with open(out / "LOC_val_solution.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ImageId", "PredictionString"]
    labels = synsets.val_labels()
    assert len(rows) == 1 + 8
    for image_id, prediction in rows[1:]:
        wnid, *box = prediction.split()
        assert wnid == synsets.wnids()[labels[image_id + ".JPEG"]]
        assert len(box) == 4 and all(v.isdigit() for v in box)


def test_official_layout(tmp_path: Path) -> None:
    from imagenetfs import matfile

    spec = Spec(classes=5, train_per_class=3, val_per_class=2, test=2, tiny=True)
    spec = Spec(**{**spec.__dict__, "layout": "official"})
    generate.generate(tmp_path, spec)
    members = generate.plan(spec)
    wnids = synsets.wnids()[:5]
    with tarfile.open(tmp_path / "ILSVRC2012_img_train.tar") as outer:
        assert outer.getnames() == [f"{w}.tar" for w in wnids]
        for w in wnids:
            inner_bytes = outer.extractfile(f"{w}.tar").read()  # type: ignore[union-attr]
            with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
                names = sorted(inner.getnames())
                assert names == sorted(
                    m.name for m in members if m.wnid == w and m.split == "train"
                )
                first = inner.extractfile(names[0]).read()  # type: ignore[union-attr]
                Image.open(io.BytesIO(first)).load()
    with tarfile.open(tmp_path / "ILSVRC2012_img_val.tar") as val:
        val_names = val.getnames()
    assert val_names == [m.name for m in members if m.split == "val"]
    with tarfile.open(tmp_path / source.OFFICIAL_TARS["test"][0]) as test:
        assert test.getnames() == [f"test/{m.name}" for m in members if m.split == "test"]

    with tarfile.open(tmp_path / f"{generate.DEVKIT}.tar.gz") as devkit:
        meta = devkit.extractfile(f"{generate.DEVKIT}/data/meta.mat").read()  # type: ignore[union-attr]
        truth_file = f"{generate.DEVKIT}/data/ILSVRC2012_validation_ground_truth.txt"
        truth = devkit.extractfile(truth_file).read().decode().split()  # type: ignore[union-attr]
    by_id = {s.ILSVRC2012_ID: s for s in matfile.read_synsets(meta)}
    assert sorted(s.WNID for s in by_id.values()) == list(synsets.wnids()), "all 1000, as shipped"
    assert [s.WNID for s in sorted(by_id.values(), key=lambda s: s.ILSVRC2012_ID)] != list(
        synsets.wnids()
    ), "devkit ids must not follow sorted order"
    labels = synsets.val_labels()
    assert len(truth) == 50_000
    for name in val_names:  # line n is ILSVRC2012_val_<n>, whatever subset was generated
        number = int(name[15:23])
        assert by_id[int(truth[number - 1])].WNID == synsets.wnids()[labels[name]]


# --- command line ---------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imagenetfs.cli", *args], capture_output=True, text=True
    )


def test_cli_sample(tmp_path: Path) -> None:
    result = run_cli("sample", str(tmp_path / "s"))
    assert result.returncode == 0, result.stderr
    assert re.match(r"wrote 66 images to .*/s \([\d.]+ MB on disk\) in [\d.]+ s", result.stdout)
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert "train.squashfs" in files and "val_labels.txt" in files
    total = sum(p.stat().st_size for p in (tmp_path / "s").iterdir())
    assert total < 20_000_000


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = run_cli("sample", str(tmp_path / "file"))
    assert one_error_line(result) == (
        f"imagenetfs: error: DIR {tmp_path / 'file'}: not a directory; give DIR another path"
    )
    script = Path(__file__).parent.parent / "scripts" / "make_fake_imagenet.py"
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "x"), "--classes", "0"],
        capture_output=True,
        text=True,
    )
    assert one_error_line(result) == "imagenetfs: error: --classes must be 1..1000, not 0"
    assert run_cli("--help").returncode == 0
