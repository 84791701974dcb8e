"""The generated root files of the mount, checked against the unpacked tree by a user's own
means: what `find`, `sort` and the generator's `val_labels.txt` say the lists must hold.

(The unpacked tree's copies are the mount's bytes, so comparing the two trees says nothing about
these files; this does.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import SPLITS, Trees, run

pytestmark = pytest.mark.timeout(120)


def _images(root: Path, split: str) -> list[str]:
    return run(f"find {split} -type f | sort", cwd=root).stdout.splitlines()


def test_lists_match_the_tree(trees: Trees) -> None:
    wnids = run("ls train", cwd=trees.unpacked).stdout.split()
    label = {w: i for i, w in enumerate(wnids)}
    for split in SPLITS:
        images = _images(trees.unpacked, split)
        files = (trees.mount / f"{split}_files.txt").read_text().splitlines()
        assert files == images
        labelled = (trees.mount / f"{split}.txt").read_text().splitlines()
        if split == "test":
            assert labelled == [f"{path} 0" for path in images]
        else:
            assert labelled == [f"{path} {label[path.split('/')[1]]}" for path in images]
    for line in (trees.mount / "val.txt").read_text().splitlines():
        path, index = line.split()
        assert trees.val_labels[path.split("/")[2]] == wnids[int(index)]


def test_file_lists_match_the_clusters_listings(trees: Trees) -> None:
    """The cluster's own `*_files.txt` beside the images hold paths inside each image; the
    mount's hold the same files under their split (val regrouped by label)."""
    for split in SPLITS:
        theirs = (trees.source / f"{split}_files.txt").read_text().splitlines()
        ours = (trees.mount / f"{split}_files.txt").read_text().splitlines()
        assert sorted(p.rsplit("/", 1)[-1] for p in ours) == sorted(
            p.rsplit("/", 1)[-1] for p in theirs
        )


def test_synset_mapping_is_in_label_order(trees: Trees) -> None:
    lines = (trees.mount / "LOC_synset_mapping.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines] == sorted(
        run("ls train", cwd=trees.unpacked).stdout.split()
    )
    assert lines[0] == "n01440764 tench, Tinca tinca"


def test_root_files_read_identically_twice(trees: Trees) -> None:
    """Generated once: the same bytes on every read, through `cat` and `dd` with odd offsets."""
    for name in ("meta.bin", "train.txt"):
        whole = run(["md5sum", name], cwd=trees.mount).stdout
        assert run(["md5sum", name], cwd=trees.mount).stdout == whole
        size = (trees.mount / name).stat().st_size
        tail = run(f"dd if={name} bs=1 skip={size - 7} status=none | od -An -tx1", cwd=trees.mount)
        data = (trees.unpacked / name).read_bytes()[-7:]
        assert tail.stdout.split() == [f"{b:02x}" for b in data]
