"""`mount --workers N`: wire-protocol worker processes serve the same tree, byte for byte.

Workers are the default way to serve, so the rest of the suite runs them too; here: an
explicit count, a killed worker, SIGTERM. (tests/test_mount.py's read-only tests also run
against `--workers 0`, pyfuse3 alone.)
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagenetfs import generate, mount, synsets
from imagenetfs.generate import Spec

CLI = [sys.executable, "-m", "imagenetfs.cli"]
SPEC = Spec(classes=4, train_per_class=30, val_per_class=5, test=10, tiny=True)


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, Path]]:
    data = tmp_path_factory.mktemp("data")
    generate.generate(data, SPEC)
    extracted = tmp_path_factory.mktemp("x")
    for split in ("train", "val", "test"):
        image = data / f"{split}.squashfs"
        subprocess.run(
            ["unsquashfs", "-q", "-n", "-d", str(extracted / split), str(image)], check=True
        )
    mp = tmp_path_factory.mktemp("mnt")
    subprocess.run(
        [*CLI, "mount", "--workers", "2", "--source", str(data), "--index", str(data / "i"),
         str(mp)],
        check=True, timeout=120,
    )  # fmt: skip
    try:
        yield data, extracted, mp
    finally:
        subprocess.run([*CLI, "umount", "--lazy", str(mp)], check=False, timeout=60)


@pytest.mark.timeout(120)
def test_workers_serve_the_tree(served: tuple[Path, Path, Path]) -> None:
    _, extracted, mp = served
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
def test_a_killed_worker_is_replaced(served: tuple[Path, Path, Path]) -> None:
    _, _, mp = served
    pid = int(json.loads(mount.state_file(mp).read_text())["pid"])
    before = children(pid)
    assert len(before) == 2
    os.kill(before[0], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (len(children(pid)) < 2 or before[0] in children(pid)):
        time.sleep(0.1)
    after = children(pid)
    assert len(after) == 2 and before[0] not in after
    assert (mp / "train.txt").read_bytes().count(b"\n") == 4 * 30


@pytest.mark.timeout(120)
def test_sigterm_ends_workers_and_unmounts(tmp_path: Path, served: tuple[Path, Path, Path]) -> None:
    data, _, _ = served
    mp = tmp_path / "m2"
    mp.mkdir()
    subprocess.run(
        [*CLI, "mount", "--workers", "2", "--source", str(data), "--index", str(data / "i"),
         str(mp)],
        check=True, timeout=120,
    )  # fmt: skip
    pid = int(json.loads(mount.state_file(mp).read_text())["pid"])
    workers = children(pid)
    assert len(workers) == 2
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and mount.pid_alive(pid):
        time.sleep(0.1)
    assert not mount.pid_alive(pid)
    assert not any(mount.pid_alive(w) for w in workers)
    assert str(mp) not in Path("/proc/mounts").read_text()
