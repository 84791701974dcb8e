"""The shard views' layout, made once per mount (views/layoutfile.py), on real mounts.

A mount with `--shards` has a directory of its own beside its state file; the first request
into the views has a short-lived process write the layout there, and every serving process
maps that file. Pinned here: one layout per mount however many workers answer, none of them
with numpy loaded; a torn, changed or foreign file is refused and made again, the views'
bytes unchanged; a process that cannot write the file fails the request with EIO (both ways of
serving), says why in the log, and a later request makes it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import Users
from helpers import CLI, Mounted, Mounter, wait_until

from imagenetfs import generate, registry
from imagenetfs.views import layoutfile

SHARDS = ["--shards", "--shard-samples", 3]
MADE = "made the shard layout"


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The built-in sample and its index: (source, index)."""
    base = tmp_path_factory.mktemp("sample")
    data = base / "data"
    generate.sample(data, progress=False)
    index = base / "i.lmdb"
    built = subprocess.run(
        [CLI, "index", "--source", data, "--index", index, "-q"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    return data, index


def layout_dir(mounted: Mounted) -> Path:
    return registry.layout_dir(mounted.state_path)


def log_text(mounted: Mounted) -> str:
    return mounted.state_path.with_suffix(".log").read_text(errors="replace")


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def maps(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""


def test_the_layout_is_made_once_and_mapped_by_every_worker(
    mounter: Mounter, sample: tuple[Path, Path]
) -> None:
    """Two workers, listings of the view from two threads until both have answered one: one
    "made the shard layout" line in the log, the same file mapped by both workers, and no
    numpy loaded in any process of the daemon (the walk ran in a process of its own)."""
    data, index = sample
    mp = mounter.mkdir("mp")
    mounted = mounter.mount(mp, data, *SHARDS, "--workers", 2, index=index)
    workers = registry.children(mounted.pid)
    assert len(workers) == 2
    view = mp / "shards" / "wds"
    names = sorted(os.listdir(view))
    [made] = list(layout_dir(mounted).glob("layout-*.bin"))
    done = threading.Event()

    def lister() -> None:
        while not done.is_set():
            assert sorted(os.listdir(view)) == names  # (no listing cache: each one is sent)

    threads = [threading.Thread(target=lister) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        both = wait_until(lambda: all(str(made) in maps(pid) for pid in workers), 20)
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert both, {pid: str(made) in maps(pid) for pid in workers}
    assert log_text(mounted).count(MADE) == 1, log_text(mounted)
    for pid in [mounted.pid, *workers]:
        assert "numpy" not in maps(pid), pid
    assert mounter.cli("umount", mp).returncode == 0
    assert not layout_dir(mounted).exists()  # (removed with the mount)


def test_a_torn_changed_or_foreign_layout_file_is_refused_and_made_again(
    mounter: Mounter, sample: tuple[Path, Path]
) -> None:
    """A layout file put in the mount's directory before the first request -- cut in half,
    one byte of an order changed, or a whole, well-formed file of another seed under the
    name of this one's -- is refused (said in the log), made again, and the view serves the
    bytes of a mount that made its own."""
    data, index = sample
    mp = mounter.mkdir("mp")

    def mount(*extra: object) -> Mounted:
        return mounter.mount(mp, data, *SHARDS, "--workers", 2, *extra, index=index)

    mounted = mount()
    expected = digests(mp / "shards" / "wds")
    [good] = list(layout_dir(mounted).glob("layout-*.bin"))
    good_bytes = good.read_bytes()
    assert mounter.cli("umount", mp).returncode == 0
    mounted = mount("--shard-seed", 1)
    os.listdir(mp / "shards" / "wds-seed1")
    [other] = list(layout_dir(mounted).glob("layout-*.bin"))
    assert other.name != good.name
    foreign = other.read_bytes()
    assert mounter.cli("umount", mp).returncode == 0
    changed = bytearray(good_bytes)
    changed[-layoutfile.DIGEST - 1] ^= 1  # (the last sample's inode number)
    bad = {"torn": good_bytes[: len(good_bytes) // 2], "changed": changed, "foreign": foreign}
    for what, data_bytes in bad.items():
        mounted = mount()
        before = log_text(mounted).count("refused")
        (layout_dir(mounted) / good.name).write_bytes(data_bytes)
        assert digests(mp / "shards" / "wds") == expected, what
        assert log_text(mounted).count("refused") == before + 1, what
        assert (layout_dir(mounted) / good.name).read_bytes() == good_bytes, what
        assert mounter.cli("umount", mp).returncode == 0


LIST = """
import json, os, sys
try:
    print(json.dumps(sorted(os.listdir(json.loads(sys.argv[1])))))
except OSError as e:
    print(json.dumps(e.errno))
"""


@pytest.mark.parametrize("workers", [2, 0])
def test_a_layout_that_cannot_be_written_fails_with_eio_then_is_made(
    users: Users, user: Mounter, admin: Path, workers: int
) -> None:
    """A user's mount whose layout directory it may not write (made read-only under it):
    the listing of the view fails with EIO at once -- no hang -- and the log says why in one
    line; once the directory is writable again, the next listing makes the layout."""
    mp = user.mkdir(f"mp-layout-{workers}")
    mounted = user.mount(mp, admin, *SHARDS, "--workers", workers)
    directory = layout_dir(mounted)
    directory.chmod(0o500)
    view = mp / "shards" / "wds"
    started = time.monotonic()
    assert user.python(LIST, view) == errno.EIO
    assert time.monotonic() - started < 20
    said = [line for line in log_text(mounted).splitlines() if "could not be made" in line]
    assert len(said) == 1, log_text(mounted)
    assert "Permission denied" in said[0] and "tries again" in said[0], said
    assert not list(directory.iterdir())
    directory.chmod(0o700)
    names = user.python(LIST, view)
    assert isinstance(names, list) and "_info.json" in names
    assert "imagenet1k-train-0.tar" in names or "imagenet1k-train-00.tar" in names
    assert log_text(mounted).count(MADE) == 1
    assert user.cli("umount", mp).returncode == 0


def test_a_killed_daemons_layout_directory_goes_with_its_record(
    mounter: Mounter, sample: tuple[Path, Path]
) -> None:
    """A daemon SIGKILLed with its layout made leaves its directory; `umount` of the stale
    point removes it with the record, and a mount's leftover directory without a record is
    swept by `status`."""
    data, index = sample
    mp = mounter.mkdir("mp")
    mounted = mounter.mount(mp, data, *SHARDS, "--workers", 2, index=index)
    os.listdir(mp / "shards" / "wds")
    directory = layout_dir(mounted)
    assert list(directory.glob("layout-*.bin"))
    os.kill(mounted.pid, signal.SIGKILL)
    assert wait_until(lambda: not Path(f"/proc/{mounted.pid}").exists(), 10)
    assert directory.exists()
    assert mounter.cli("umount", mp).returncode == 0
    assert not directory.exists()
    lone = mounted.state_path.with_name("0123456789abcdef.shards")
    lone.mkdir(mode=0o700)
    (lone / "layout-0.bin").write_bytes(b"left")
    assert mounter.cli("status").returncode == 0
    assert not lone.exists()
