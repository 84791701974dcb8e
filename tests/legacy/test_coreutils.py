"""What a user types at a shell, on the mount and on the unpacked tree: the outputs must match.

Normalised, because they legitimately differ between a read-only FUSE tree and a local one:

- `ls -l`: permission bits (the mount serves 0444 files and 0555 dirs, checked on their own),
  a directory's size and mtime (a FUSE directory's size is its entry count, ext4's is 4096; the
  regrouped `val/<wnid>/` of the unpacked tree were made by the test) and the `total` lines
  (allocated blocks). Kept: type, link count, owner, group, and for files size, mtime, name.
- readdir order: `find` and `tar` list a directory in readdir order, which is name order on the
  mount and hash order on ext4, so listings are compared sorted (and `tar --sort=name` exactly).
- `du`: directory sizes (see `ls -l`) and allocation: the mount reports a file's blocks as its
  size in whole 512-byte units, a local filesystem whole allocation blocks (4 KiB on ext4), so
  plain `du -s` of the unpacked tree is larger; file data sizes must match exactly.
"""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path

import pytest

from .conftest import CLASSES, N_IMAGES, ROOT_FILES, Trees, run

pytestmark = pytest.mark.timeout(120)

FIRST = "n01440764"  # the first class: tench

LS_ENTRY = re.compile(
    r"(?P<type>[-dlbcps])(?P<perm>[-rwxsStT]{9})\S*\s+(?P<nlink>\d+)\s+(?P<owner>\S+)\s+"
    r"(?P<group>\S+)\s+(?P<size>\d+)\s+(?P<mtime>\S+ \S+ \S+)\s(?P<name>.+)"
)


def normalise_ls(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        if line.startswith("total "):
            continue
        m = LS_ENTRY.fullmatch(line)
        if m is None:  # "./train/n01440764:" headers and blank lines
            out.append(line)
        elif m["type"] == "d":
            out.append(f"d {m['nlink']} {m['owner']} {m['group']} {m['name']}")
        else:
            fields = ("type", "nlink", "owner", "group", "size", "mtime", "name")
            out.append(" ".join(m[f] for f in fields))
    return out


def test_ls_lR(trees: Trees) -> None:
    cmd = ["ls", "-lR", "--time-style=full-iso", "."]
    mount, unpacked = (run(cmd, cwd=root).stdout for root in trees.both)
    assert normalise_ls(mount) == normalise_ls(unpacked)
    entries = [LS_ENTRY.fullmatch(line) for line in mount.splitlines()]
    perms = {(m["type"], m["perm"]) for m in entries if m}
    assert perms == {("-", "r--r--r--"), ("d", "r-xr-xr-x")}
    assert sum(1 for m in entries if m and m["type"] == "-") == N_IMAGES + len(ROOT_FILES)


def test_ls_l_root_and_class(trees: Trees) -> None:
    """The listings a user looks at first; the owner is the mounting user."""
    for where in (".", "train", f"train/{FIRST}", f"val/{FIRST}"):
        cmd = ["ls", "-l", "--time-style=full-iso", where]
        mount, unpacked = (run(cmd, cwd=root).stdout for root in trees.both)
        assert normalise_ls(mount) == normalise_ls(unpacked), where
    user = run(["id", "-un"]).stdout.strip()
    owners = {line.split()[2] for line in normalise_ls(run(["ls", "-l"], cwd=trees.mount).stdout)}
    assert owners == {user}
    names = run(["ls"], cwd=trees.mount).stdout.split()
    assert names == sorted([*ROOT_FILES, "train", "val", "test"])


def test_find_wc_l(trees: Trees) -> None:
    for cmd in ("find | wc -l", "find . -type f | wc -l", "find . -type d | wc -l"):
        mount, unpacked = (run(cmd, cwd=root).stdout for root in trees.both)
        assert mount == unpacked, cmd
    dirs = 1 + 3 + 2 * CLASSES
    assert int(run("find | wc -l", cwd=trees.mount).stdout) == N_IMAGES + len(ROOT_FILES) + dirs
    mount, unpacked = (run("find . | sort", cwd=root).stdout for root in trees.both)
    assert mount == unpacked


def _dir_sizes(root: Path, where: str) -> int:
    out = run(["find", where, "-type", "d", "-printf", "%s\n"], cwd=root).stdout
    return sum(int(n) for n in out.split())


def test_du_apparent_size(trees: Trees) -> None:
    """`du -sh --apparent-size` of the data: the same; of whole directories: the same once the
    directories' own sizes are taken out."""
    cmd = "find . -type f -print0 | du -ch --apparent-size --files0-from=- | tail -n 1"
    mount, unpacked = (run(cmd, cwd=root).stdout for root in trees.both)
    assert mount == unpacked and mount.endswith("\ttotal\n")
    for split in ("train", "val", "test", f"train/{FIRST}", "."):
        data = []
        for root in trees.both:
            total = int(run(["du", "-sb", "--apparent-size", split], cwd=root).stdout.split()[0])
            data.append(total - _dir_sizes(root, split))
        assert data[0] == data[1], split


def test_du_s_is_file_size_in_512_byte_units(trees: Trees) -> None:
    """Plain `du -s` counts allocated blocks: the mount reports ceil(size / 512) for every file,
    so its `du -s` is the data size rounded up per file. The unpacked tree's depends on its
    filesystem (ext4 here allocates whole 4 KiB blocks: 5544 KiB against the mount's 5426 for
    this data) and is not compared."""
    listing = run(["find", ".", "-printf", "%y %b %s %p\n"], cwd=trees.mount).stdout
    blocks = 0
    for line in listing.splitlines():
        kind, nblocks, size, path = line.split(" ", 3)
        if kind == "f":
            assert int(nblocks) == -(-int(size) // 512), path
        blocks += int(nblocks)
    du = int(run(["du", "-s", "--block-size=512", "."], cwd=trees.mount).stdout.split()[0])
    assert du == blocks


@pytest.mark.parametrize("where", [f"train/{FIRST}", f"val/{FIRST}", "train"])
def test_cp_r_then_diff_r(trees: Trees, tmp_path: Path, where: str) -> None:
    copy = tmp_path / "copy"
    run(["cp", "-r", trees.mount / where, copy])
    for original in (trees.unpacked / where, trees.mount / where):
        result = run(["diff", "-r", copy, original], check=False)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    mount, unpacked = (run("find . | sort", cwd=root / where).stdout for root in trees.both)
    assert run("find . | sort", cwd=copy).stdout == mount == unpacked


def _members(archive: Path) -> list[tuple[str, str, int, int]]:
    with tarfile.open(archive) as tar:
        return [
            (m.name, "d" if m.isdir() else "f", m.size, m.mtime if m.isfile() else 0)
            for m in tar.getmembers()
        ]


def test_tar_c_of_a_class(trees: Trees, tmp_path: Path) -> None:
    for where in ("train", "val"):
        archives, listings = [], []
        for name, root in zip(("mount", "unpacked"), trees.both, strict=True):
            archive = tmp_path / f"{where}-{name}.tar"
            run(["tar", "cf", archive, "-C", root / where, FIRST])
            archives.append(archive)
            listings.append(run(["tar", "tf", archive]).stdout)
            # what a user unpacks is the class again, byte for byte, with the files' mtimes
            out = tmp_path / f"{where}-{name}"
            out.mkdir()
            run(["tar", "xf", archive, "-C", out])
            result = run(["diff", "-r", out / FIRST, trees.unpacked / where / FIRST], check=False)
            assert (result.returncode, result.stdout) == (0, "")
            mtimes = "find . -type f -printf '%p %T@\\n' | sort"
            extracted, original = (run(mtimes, cwd=d / FIRST).stdout for d in (out, root / where))
            assert extracted == original
        assert sorted(listings[0].splitlines()) == sorted(listings[1].splitlines())
        assert sorted(_members(archives[0])) == sorted(_members(archives[1]))
        # with the order fixed (GNU tar's --sort=name), the listings are identical
        ordered = []
        for name, root in zip(("mount", "unpacked"), trees.both, strict=True):
            archive = tmp_path / f"{where}-{name}-sorted.tar"
            run(["tar", "cf", archive, "--sort=name", "-C", root / where, FIRST])
            ordered.append(run(["tar", "tf", archive]).stdout)
        assert ordered[0] == ordered[1]


def test_tar_xattrs_is_quiet(trees: Trees) -> None:
    """`tar c --xattrs` (as backup and staging scripts run it) asks every file for its extended
    attributes: an image without any must look like a file without any, not like a filesystem
    that cannot have them."""
    cmd = ["tar", "cf", "/dev/null", "--xattrs", "-C", "train", FIRST]
    mount, unpacked = (run(cmd, cwd=root) for root in trees.both)
    assert unpacked.stderr == ""
    assert mount.stderr == unpacked.stderr
    image = next((trees.mount / "train" / FIRST).iterdir())
    assert os.listxattr(image) == os.listxattr(trees.unpacked / image.relative_to(trees.mount))


def test_md5sum_of_every_file(trees: Trees) -> None:
    cmd = "find . -type f -print0 | sort -z | xargs -0 md5sum"
    mount, unpacked = (run(cmd, cwd=root).stdout for root in trees.both)
    assert mount == unpacked
    n_files = len(mount.splitlines())
    assert n_files == int(run("find . -type f | wc -l", cwd=trees.mount).stdout)
    # the same with four readers at once
    parallel = "find . -type f -print0 | xargs -0 -P 4 -n 4 md5sum | sort -k 2"
    assert run(parallel, cwd=trees.mount).stdout == mount
