"""`mount --workers N`: wire-protocol worker processes serve the same tree, byte for byte.

Workers are the default way to serve, so the rest of the suite runs them too; here: an
explicit count, a killed worker, SIGTERM. (tests/test_mount.py's read-only tests also run
against `--workers 0`, pyfuse3 alone.)
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    LONGEST_TARGET,
    Mounted,
    Mounter,
    alive,
    children,
    is_mounted,
    official_files,
    official_with_long_links,
    wait_until,
)

from imagenetfs import generate, index, source, synsets
from imagenetfs.generate import Spec

SPEC = Spec(classes=4, train_per_class=30, val_per_class=5, test=10, tiny=True)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, Mounted]]:
    data = tmp_path_factory.mktemp("data")
    generate.generate(data, SPEC)
    extracted = tmp_path_factory.mktemp("x")
    for split in ("train", "val", "test"):
        image = data / f"{split}.squashfs"
        subprocess.run(
            ["unsquashfs", "-q", "-n", "-d", str(extracted / split), str(image)], check=True
        )
    mounter = Mounter(tmp_path_factory.mktemp("work"))
    try:
        mounted = mounter.mount(mounter.work / "mnt", data, "--workers", "2", index=data / "i.lmdb")
        yield data, extracted, mounted
    finally:
        mounter.cleanup()


@pytest.mark.timeout(120)
def test_workers_serve_the_tree(served: tuple[Path, Path, Mounted]) -> None:
    _, extracted, mounted = served
    mp = mounted.mp
    labels = synsets.val_labels()
    expected = {}
    for path in extracted.rglob("*.JPEG"):
        rel = path.relative_to(extracted)
        if rel.parts[0] == "val":
            rel = Path("val", synsets.wnids()[labels[rel.name]], rel.name)
        expected[str(rel)] = path.read_bytes()
    served_files = {
        os.path.relpath(os.path.join(d, f), mp)
        for split in ("train", "val", "test")
        for d, _, fs in os.walk(mp / split)
        for f in fs
    }
    assert served_files == set(expected)
    rng = random.Random(1)
    for rel in rng.sample(sorted(expected), len(expected)):
        path, data = mp / rel, expected[rel]
        assert path.stat().st_size == len(data)
        with open(path, "rb") as f:
            offset = rng.randrange(len(data))
            assert os.pread(f.fileno(), 500, offset) == data[offset : offset + 500]
            assert f.read() == data
    with os.scandir(mp) as it:
        kinds = {e.name: e.is_dir(follow_symlinks=False) for e in it}
    assert kinds["train"] and not kinds["meta.bin"]
    assert os.statvfs(mp).f_files > len(expected)
    with pytest.raises(OSError) as info, open(mp / "train.txt", "r+b"):
        pass
    assert info.value.errno == 30  # EROFS


@pytest.mark.timeout(120)
def test_a_killed_worker_is_replaced(served: tuple[Path, Path, Mounted]) -> None:
    _, _, mounted = served
    before = children(mounted.pid)
    assert len(before) == 2
    os.kill(before[0], signal.SIGKILL)

    def replaced() -> bool:
        # one listing: asked twice (its length, then whether the killed one is in it), a
        # worker killed and reaped before its successor was forked passed as replaced
        now = children(mounted.pid)
        return len(now) == 2 and before[0] not in now

    assert wait_until(replaced, 20), children(mounted.pid)
    assert (mounted.mp / "train.txt").read_bytes().count(b"\n") == 4 * 30


@pytest.mark.timeout(120)
def test_sigterm_ends_workers_and_unmounts(
    mounter: Mounter, served: tuple[Path, Path, Mounted]
) -> None:
    data, _, _ = served
    mounted = mounter.mount(mounter.work / "m2", data, "--workers", "2", index=data / "i.lmdb")
    workers = children(mounted.pid)
    assert len(workers) == 2
    os.kill(mounted.pid, signal.SIGTERM)
    assert wait_until(lambda: not alive(mounted.pid), 20)
    assert not any(alive(w) for w in workers)
    assert not is_mounted(mounted.mp)


# --- faults: a reply the kernel refuses, a worker that keeps crashing -----------------------


@pytest.mark.timeout(180)
@pytest.mark.parametrize("workers", ["2", "0"])
def test_a_reply_the_kernel_refuses_fails_that_request_only(
    mounter: Mounter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    """An official val tar with a symlink to 4,096 bytes, in an index built before such
    targets were left out: the kernel refuses every READLINK reply for it. Each readlink fails
    with EIO, said in one log line; every other file reads byte for byte; no worker ends."""
    data = tmp_path / "data"
    official_with_long_links(data)
    monkeypatch.setattr(index, "MAX_TARGET", 4096, raising=False)  # (an older index's rule)
    src = source.open_source(data)
    index.build(data / "i.lmdb", src.image_list, src.placer(), source=str(data),
                virtual=src.virtual_files, progress=False)  # fmt: skip
    mounted = mounter.mount(mounter.mkdir("mnt"), data, "--workers", workers,
                            index=data / "i.lmdb")  # fmt: skip
    before = children(mounted.pid)
    assert len(before) == int(workers)
    link = mounted.mp / "val" / "long-link"
    assert link.lstat().st_size == 4096
    expected = official_files(data)
    for _ in range(20):
        for _ in range(5):
            with pytest.raises(OSError) as info:
                os.readlink(link)
            assert info.value.errno == errno.EIO
        for rel, body in expected.items():
            assert (mounted.mp / rel).read_bytes() == body, rel
    assert os.readlink(mounted.mp / "val" / "kept-link") == LONGEST_TARGET
    assert children(mounted.pid) == before and is_mounted(mounted.mp)
    log = mounted.log
    assert "ended" not in log and "keep failing" not in log and "Traceback" not in log, log
    if workers != "0":  # (pyfuse3 says it its own way: "fuse_reply_* failed")
        said = [ln for ln in log.splitlines() if "the kernel refused a reply" in ln]
        assert len(said) == 100, log
        assert mounted.stats(after=time.time())["fs"]["errors"] == 100


@pytest.mark.timeout(120)
def test_workers_that_keep_crashing_unmount(
    mounter: Mounter, served: tuple[Path, Path, Mounted]
) -> None:
    """A worker that really dies is started again -- but more than three deaths within 10 s
    are a crash loop: the daemon unmounts rather than fail every request."""
    data, _, _ = served
    mounted = mounter.mount(mounter.mkdir("m3"), data, "--workers", "2", index=data / "i.lmdb")
    for _ in range(4):
        victim = children(mounted.pid)[0]
        os.kill(victim, signal.SIGKILL)

        def reaped(victim: int = victim) -> bool:
            return victim not in children(mounted.pid) or not alive(mounted.pid)

        assert wait_until(reaped, 20)
    assert wait_until(lambda: not alive(mounted.pid), 20)
    assert not is_mounted(mounted.mp)
    assert "workers keep failing: unmounting" in mounted.log
