"""One real mount and the same tree unpacked on local disk, shared by every legacy test.

The mount is made the way a user makes it (`imagenetfs mount --source DATA --index ...`) from
a small generated dataset in the cluster layout (5 classes of realistic JPEGs, CMYK, grayscale
and the PNG named `.JPEG` among them). The comparison tree is built without imagenetfs code:
`unsquashfs` of each image, the flat val files moved into `val/<wnid>/` by the generator's
`val_labels.txt`, and the root's virtual files (`meta.bin`, the lists, ...) copied from the mount
with their mtimes (`shutil.copy2`); tests that care check those files against the tree itself.

Both fixtures are package-scoped: one mount and one unpacked tree for all of `tests/legacy`.
The mount is made through the suite's one harness (`helpers.Mounter`), whose cleanup
detaches it and ends its daemon, so no test leaves a mount behind.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import ROOT_FILES, Mounter, fuse_unusable, reference_tree

from imagenetfs import generate

#: ~50 realistic JPEGs (a few MB): every program reads all of them in well under a second.
CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, TEST = 5, 6, 3, 4
SPEC = generate.Spec(CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, TEST, jobs=2, progress=False)
N_IMAGES = CLASSES * (TRAIN_PER_CLASS + VAL_PER_CLASS) + TEST
SPLITS = ("train", "val", "test")
PROGRAMS = Path(__file__).with_name("programs")
#: The same output on both trees needs the same locale (sort order, messages) and time zone.
ENV = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
TIMEOUT = 120


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "torchvision: needs an environment where torchvision imports (the test venv of "
        "scripts/test.sh)",
    )


def _unusable() -> str | None:
    tools = ("fusermount3", "unsquashfs", "mksquashfs", "tar", "md5sum", "du", "diff")
    return fuse_unusable(tools)


def run(
    cmd: Sequence[str | os.PathLike[str]] | str,
    cwd: Path | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command (a string runs in `sh -c`) in the C locale and UTC; text out, timed."""
    result = subprocess.run(
        cmd if isinstance(cmd, str) else [str(c) for c in cmd],
        shell=isinstance(cmd, str),
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd!r} in {cwd} exited {result.returncode}: {result.stderr}")
    return result


def program(name: str, *args: str | os.PathLike[str], python: str = sys.executable) -> str:
    """Run `programs/<name>.py ARGS...` with this interpreter; its stdout."""
    return run([python, PROGRAMS / f"{name}.py", *args]).stdout


def on_both(trees: Trees, name: str, *args: str | os.PathLike[str]) -> tuple[str, str]:
    """`program(name, ROOT, *args)` on the mount and on the unpacked tree, at the same time
    (two processes: a torch program spends seconds importing); their stdouts, in that order."""
    with ThreadPoolExecutor(2) as pool:
        mount, unpacked = pool.map(lambda root: program(name, root, *args), trees.both)
    return mount, unpacked


@dataclass(frozen=True)
class Trees:
    mount: Path
    unpacked: Path
    source: Path
    val_labels: dict[str, str]  # val file name -> wnid, from the generator's val_labels.txt

    @property
    def both(self) -> tuple[Path, Path]:
        return self.mount, self.unpacked


@pytest.fixture(scope="package")
def base() -> Iterator[Path]:
    reason = _unusable()
    if reason is not None:
        pytest.skip(f"legacy programs need a real FUSE mount: {reason}")
    path = Path(tempfile.mkdtemp(prefix="imagenetfs-legacy-", dir="/tmp"))
    yield path
    for dirpath, dirnames, _ in os.walk(path):  # copies of the mount are read-only
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o755)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="package")
def source(base: Path) -> Path:
    out = base / "data"
    generate.generate(out, SPEC)
    return out


@pytest.fixture(scope="package")
def mount(base: Path, source: Path) -> Iterator[Path]:
    mounter = Mounter(base / "work")
    mounter.work.mkdir()
    try:
        yield mounter.mount(base / "mnt", source, index=source / "i.lmdb").mp
    finally:
        mounter.cleanup()


@pytest.fixture(scope="package")
def tars_mount(base: Path) -> Iterator[Path]:
    """The same dataset as the official download holds it (the ILSVRC2012 tars and the
    devkit), served from the tars."""
    out = base / "tars"
    generate.generate(out, dataclasses.replace(SPEC, layout="official"))
    mounter = Mounter(base / "work-tars")
    mounter.work.mkdir()
    try:
        yield mounter.mount(base / "mnt-tars", out, index=out / "i.lmdb").mp
    finally:
        mounter.cleanup()


@pytest.fixture(scope="package")
def unpacked(base: Path, source: Path, mount: Path) -> Path:
    root = reference_tree(source, base / "unpacked").root  # unsquashfs, val regrouped
    for name in ROOT_FILES:
        shutil.copy2(mount / name, root / name)
    return root


def _val_labels(source: Path) -> dict[str, str]:
    lines = (source / "val_labels.txt").read_text().splitlines()
    return dict(line.split() for line in lines)


@pytest.fixture(scope="package")
def trees(mount: Path, unpacked: Path, source: Path) -> Trees:
    return Trees(mount, unpacked, source, _val_labels(source))


@pytest.fixture(scope="package")
def tar_trees(tars_mount: Path, unpacked: Path, source: Path) -> Trees:
    """As `trees`, the mount served from the official tars instead of the cluster images."""
    return Trees(tars_mount, unpacked, source, _val_labels(source))
