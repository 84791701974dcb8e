"""On a cluster: one prebuilt index served from any path or copy, and staging to local disk.

The index an admin builds beside the images (`<source>/imagenetfs.lmdb`) must serve the same
images reached through a bind mount or copied elsewhere, as root and as a user who may not write
it, and refuse -- one line, naming the image and the command that rebuilds -- images that are
not the ones indexed. `mount --stage DIR` must serve exact bytes throughout while it copies
the images, switch every worker to the copies, reuse checked copies, copy each image once when
two mounts stage into one DIR, and keep serving when the disk is full or the daemon is killed.
Bytes are checked against `unsquashfs` of the images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SPLITS, Users
from helpers import (
    CLI,
    Mounted,
    Mounter,
    alive,
    children,
    is_mounted,
    one_error_line,
    reference_tree,
    wait_until,
)

from imagenetfs import generate
from imagenetfs import staging as staging_module
from imagenetfs.errors import UsageError
from imagenetfs.index import user_index_path

JOB = Path(__file__).resolve().parent.parent / "scripts" / "slurm" / "imagenet.sbatch"


def served(mp: Path) -> dict[str, bytes]:
    """Path -> bytes of every image file of the mount, each read from the daemon (its pages
    in the mount dropped first)."""
    out: dict[str, bytes] = {}
    for split in SPLITS:
        for path in (mp / split).rglob("*"):
            if path.is_file():
                out[path.relative_to(mp).as_posix()] = read_fresh(path)
    return out


def read_fresh(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return os.pread(fd, os.fstat(fd).st_size + 1, 0)
    finally:
        os.close(fd)


def other_sample(out: Path) -> None:
    """The sample's file names and layout, other pictures."""
    generate.generate(out, dataclasses.replace(generate.SAMPLE, seed=7, progress=False))


def state(mounter: Mounter, mp: Path) -> dict[str, Any]:
    found = mounter.state(mp)
    assert found is not None
    return found


def staging(mounter: Mounter, mp: Path) -> dict[str, Any]:
    return dict(state(mounter, mp).get("staging") or {})


def wait_staged(mounter: Mounter, mp: Path, timeout: float = 60) -> dict[str, Any]:
    assert wait_until(lambda: staging(mounter, mp).get("done", False), timeout), staging(
        mounter, mp
    )
    return staging(mounter, mp)


def copied(mounter: Mounter, mp: Path) -> int:
    """Bytes of the first image (train) copied so far."""
    images = staging(mounter, mp).get("images") or [{}]
    return int(images[0].get("bytes", 0))


def states(report: dict[str, Any]) -> dict[str, str]:
    return {image["name"]: image["state"] for image in report["images"]}


# --- one index, any path -------------------------------------------------------------------


def test_index_serves_the_images_through_another_path_and_from_a_copy(
    mounter: Mounter, admin: Path, expected: dict[str, bytes], tmp_path: Path
) -> None:
    bound = mounter.mkdir("bound")  # the same directory as a container's /data would be
    subprocess.run(["mount", "--bind", str(admin), str(bound)], check=True)
    try:
        copy = tmp_path / "copy"
        shutil.copytree(admin, copy)  # new inodes, new mtimes
        for source in (bound, copy):
            mp = mounter.mkdir(f"mp-{source.name}")
            mounted = mounter.mount(mp, source, index=admin / "imagenetfs.lmdb")
            assert served(mp) == expected
            images = state(mounter, mp)["images"]
            assert images == [str(source / f"{split}.squashfs") for split in SPLITS]
            status = mounter.cli("status", mp)
            for image in images:
                assert f"serving {image}" in status.stdout
            mounter.cli("umount", mp)
            assert not is_mounted(mounted.mp)
        # and found beside the copied images without --index
        mp = mounter.mkdir("mp-beside")
        mounter.mount(mp, copy)
        assert state(mounter, mp)["index"] == str(copy / "imagenetfs.lmdb")
    finally:
        subprocess.run(["umount", "-l", str(bound)], check=False)


def test_a_changed_copy_is_refused_in_one_line(
    mounter: Mounter, admin: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(admin, copy)
    (copy / "val.squashfs").chmod(0o644)
    # the same file names, other bytes: a val image built again from other pictures
    other_sample(tmp_path / "other")
    shutil.copyfile(tmp_path / "other" / "val.squashfs", copy / "val.squashfs")
    mp = mounter.mkdir("mp")
    index = admin / "imagenetfs.lmdb"
    line = one_error_line(mounter.cli("mount", "--source", copy, "--index", index, mp))
    assert f"image {copy}/val.squashfs is not the one indexed" in line
    assert line.endswith(
        f"rebuild the index with: imagenetfs index --source {copy} --index {index} --rebuild"
    )
    assert not is_mounted(mp)


def test_a_user_mounts_with_the_admins_read_only_index(
    users: Users, user: Mounter, admin: Path, expected: dict[str, bytes]
) -> None:
    mp = user.mkdir("mp")
    user.mount(mp, admin)
    found = user.state(mp)
    assert found is not None and found["index"] == str(admin / "imagenetfs.lmdb")
    assert user.python(READ_ALL, mp) == {k: v.hex() for k, v in expected.items()}
    user.cli("umount", mp)
    # an index the user cannot rewrite: the rebuild command names one the user can
    copy = user.mkdir("copy")
    for path in admin.iterdir():
        if path.name != "val.squashfs":
            shutil.copy(path, copy / path.name)
    other_sample(user.work / "other")
    shutil.copy(user.work / "other" / "val.squashfs", copy / "val.squashfs")
    result = user.cli("mount", "--source", copy, "--index", admin / "imagenetfs.lmdb", mp)
    own = user.python(USER_INDEX, copy)
    assert one_error_line(result).endswith(
        f"imagenetfs index --source {copy} --index {own} --rebuild"
    )
    assert own.startswith(str(user.work))


def test_a_container_reads_the_mount_bound_into_it(
    users: Users, user: Mounter, admin: Path, expected: dict[str, bytes]
) -> None:
    """What unprivileged Apptainer does with `--bind MOUNTPOINT:/imagenet`: a user namespace
    and a mount namespace of its own, the mount point bound inside; the processes are the
    user's, so the (private) mount lets them read."""
    mp, inside = user.mkdir("mp-host"), user.mkdir("container-imagenet")
    user.mount(mp, admin)
    probe = subprocess.run(
        user.command(["unshare", "--user", "--map-root-user", "--mount", "true"]),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(
            f"no user namespace can be made here (a chroot, or turned off): {probe.stderr.strip()}"
        )
    script = f'mount --bind {mp} {inside} && exec {sys.executable} -c "$0" {inside}'
    result = subprocess.run(
        user.command(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script,
                      READ_ALL.replace("json.loads(sys.argv[1])", "sys.argv[1]")]),
        capture_output=True, text=True, timeout=60, env=user.env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {k: v.hex() for k, v in expected.items()}


READ_ALL = """
import json, os, sys
from pathlib import Path
mp = Path(json.loads(sys.argv[1]))
out = {}
for split in ("train", "val", "test"):
    for path in (mp / split).rglob("*"):
        if path.is_file():
            out[path.relative_to(mp).as_posix()] = path.read_bytes().hex()
print(json.dumps(out))
"""

USER_INDEX = """
import json, sys
from pathlib import Path
from imagenetfs.index import user_index_path
print(json.dumps(str(user_index_path(Path(json.loads(sys.argv[1]))))))
"""


# --- staging -------------------------------------------------------------------------------


class Readers:
    """Threads reading every file of a mount again and again (pages dropped first), each read
    checked against `expected`, until stopped."""

    def __init__(self, mp: Path, expected: dict[str, bytes], n: int = 4) -> None:
        self.mp = mp
        self.files = [p for split in SPLITS for p in (mp / split).rglob("*") if p.is_file()]
        self.expected = expected
        self.reads = 0
        self.wrong: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(n)]

    def _run(self, seed: int) -> None:
        files = self.files[seed:] + self.files[:seed]
        while not self._stop.is_set():
            for path in files:
                try:
                    data = read_fresh(path)
                except OSError as e:
                    self.wrong.append(f"{path}: {e}")
                    continue
                if data != self.expected[path.relative_to(self.mp).as_posix()]:
                    self.wrong.append(f"{path}: wrong bytes")
                self.reads += 1

    def __enter__(self) -> Readers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


@pytest.fixture
def stage(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "scratch"
    path.mkdir()
    yield path


def worker_files(mounted: Mounted) -> set[str]:
    """The files every worker of the mount holds open."""
    held = []
    for pid in children(mounted.pid):
        fds = Path(f"/proc/{pid}/fd")
        held.append({os.readlink(fd) for fd in fds.iterdir() if fds.exists()})
    assert held, "no workers"
    return set.intersection(*held)


@pytest.mark.timeout(180)
def test_staging_switches_every_image_with_exact_bytes_throughout(
    mounter: Mounter, admin: Path, expected: dict[str, bytes], stage: Path, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"  # stands in for the shared filesystem
    shutil.copytree(admin, shared)
    mp = mounter.mkdir("mp")
    mounted = mounter.mount(mp, shared, "--stage", stage, "--stage-rate", "2M", "--workers", "2")
    first = staging(mounter, mp)  # published before the mount command returned
    assert not first["done"] and first["bytes"] < first["total"]
    with Readers(mp, expected) as readers:
        report = wait_staged(mounter, mp)
    assert not readers.wrong, readers.wrong[:5]
    assert readers.reads > len(expected)
    assert states(report) == {f"{s}.squashfs": "done" for s in SPLITS}
    copies = sorted(str(p) for p in (stage / f"imagenetfs-{os.getuid()}").glob("*.squashfs"))
    assert len(copies) == 3
    assert sorted(state(mounter, mp)["images"]) == copies
    assert set(copies) <= worker_files(mounted)  # every worker switched
    # the images on the "shared filesystem" become unreadable: served from the copies alone
    for split in SPLITS:
        os.truncate(shared / f"{split}.squashfs", 0)
    assert served(mp) == expected
    assert "staging to" in mounter.cli("status", mp).stdout


def test_staging_with_pyfuse3_alone(
    mounter: Mounter, admin: Path, expected: dict[str, bytes], stage: Path, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shutil.copytree(admin, shared)
    mp = mounter.mkdir("mp")
    mounted = mounter.mount(mp, shared, "--stage", stage, "--workers", "0")
    wait_staged(mounter, mp)
    copies = {str(p) for p in (stage / f"imagenetfs-{os.getuid()}").glob("*.squashfs")}
    assert len(copies) == 3
    held = {os.readlink(fd) for fd in Path(f"/proc/{mounted.pid}/fd").iterdir()}
    assert copies <= held
    for split in SPLITS:
        os.truncate(shared / f"{split}.squashfs", 0)
    assert served(mp) == expected


@pytest.mark.timeout(180)
def test_a_staged_copy_is_reused_and_two_mounts_copy_each_image_once(
    mounter: Mounter, admin: Path, expected: dict[str, bytes], stage: Path
) -> None:
    one, two = mounter.mkdir("one"), mounter.mkdir("two")
    mounter.mount(one, admin, "--stage", stage, "--stage-rate", "2M")
    mounter.mount(two, admin, "--stage", stage, "--stage-rate", "2M")
    reports = [wait_staged(mounter, mp) for mp in (one, two)]
    for name in (f"{s}.squashfs" for s in SPLITS):
        assert sorted(states(r)[name] for r in reports) == ["done", "reused"], reports
    assert served(one) == served(two) == expected
    copies = {p: p.stat().st_ino for p in stage.rglob("*.squashfs")}
    assert len(copies) == 3
    for mp in (one, two):
        mounter.cli("umount", mp)
    # a later mount on the node: checked, reused, not copied again
    mounter.mount(one, admin, "--stage", stage)
    report = wait_staged(mounter, one)
    assert set(states(report).values()) == {"reused"}
    assert {p: p.stat().st_ino for p in stage.rglob("*.squashfs")} == copies
    assert served(one) == expected


@contextlib.contextmanager
def small_disk(mounter: Mounter, size: int, fstype: str = "tmpfs") -> Iterator[Path]:
    """A filesystem of `size` bytes, mounted for the test: tmpfs (which takes `fallocate`), or
    ext2 in a loop file (the ext4 driver refuses `fallocate` on files without extents: a
    filesystem without it). Unmounted, with the test's mounts, at the end."""
    point = mounter.mkdir(f"{fstype}-{size}")
    if fstype == "tmpfs":
        command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)]
    else:
        image = point.with_suffix(".img")
        with open(image, "wb") as f:
            f.truncate(size)
        subprocess.run(["mkfs.ext2", "-q", "-F", "-m", "0", str(image)], check=True)
        command = ["mount", "-o", "loop", str(image), str(point)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount {fstype} here: {result.stderr.strip()}")
    try:
        yield point
    finally:
        mounter.cleanup()
        subprocess.run(["umount", "-l", str(point)], check=False)


def free(directory: Path) -> int:
    """Bytes an unprivileged user may still write in `directory`'s filesystem."""
    fs = os.statvfs(directory)
    return fs.f_bavail * fs.f_frsize


@pytest.mark.timeout(180)
def test_a_full_disk_keeps_the_mount_serving(
    mounter: Mounter, admin: Path, expected: dict[str, bytes]
) -> None:
    """Met during a copy: possible only where a copy cannot reserve its size (no fallocate:
    ext2 here), where the free space is checked before each copy and once in the log said so."""
    size = (admin / "train.squashfs").stat().st_size
    with small_disk(mounter, size + (2 << 20), "ext2") as small:
        mp = mounter.mkdir("mp")
        keep = ("--stage-keep-free", "0")
        mounted = mounter.mount(mp, admin, "--stage", small, "--stage-rate", "1M", *keep)
        # while train is being copied, something else fills the disk
        assert wait_until(lambda: copied(mounter, mp) > 0, 30)
        with open(small / "filler", "wb") as f, Readers(mp, expected) as readers:
            with pytest.raises(OSError):
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
            report = wait_staged(mounter, mp)
        assert not readers.wrong, readers.wrong[:5]
        failed = {i["name"]: i["error"] for i in report["images"] if i["state"] == "failed"}
        assert "No space left on device" in failed.get("train.squashfs", ""), report
        assert all("space" in e for e in failed.values()), report
        assert not list(small.rglob("*.part-*")), "a half-written copy was left"
        assert served(mp) == expected
        assert "staging train.squashfs failed: No space left on device" in mounted.log
        assert "train.squashfs failed: No space left" in mounter.cli("status", mp).stdout
        assert mounted.log.count("cannot reserve space (no fallocate)") == 1, mounted.log


def test_too_little_space_is_found_before_copying(
    mounter: Mounter, admin: Path, expected: dict[str, bytes]
) -> None:
    with small_disk(mounter, 1 << 20) as small:
        mp = mounter.mkdir("mp")
        mounter.mount(mp, admin, "--stage", small, "--stage-keep-free", "0")
        report = wait_staged(mounter, mp)
        assert states(report) == {
            "train.squashfs": "failed", "val.squashfs": "failed", "test.squashfs": "done"
        }  # fmt: skip
        assert "not enough space in" in report["images"][0]["error"]
        assert served(mp) == expected


@pytest.mark.timeout(180)
def test_sigkill_while_staging_leaves_nothing_a_later_mount_trusts(
    mounter: Mounter, admin: Path, expected: dict[str, bytes], stage: Path
) -> None:
    mp = mounter.mkdir("mp")
    mounted = mounter.mount(mp, admin, "--stage", stage, "--stage-rate", "500K")
    assert wait_until(lambda: copied(mounter, mp) > 1 << 20, 30)
    os.kill(mounted.pid, signal.SIGKILL)
    assert wait_until(lambda: not alive(mounted.pid), 10)
    private = stage / f"imagenetfs-{os.getuid()}"
    assert not list(private.glob("*-train.squashfs")), "a copy cut short has the final name"
    assert list(private.glob("*-train.squashfs.part-*"))
    result = mounter.cli("umount", mp)  # the stale mount
    assert result.returncode == 0, result.stderr
    mounter.mount(mp, admin, "--stage", stage)
    report = wait_staged(mounter, mp)
    assert states(report) == {f"{s}.squashfs": "done" for s in SPLITS}
    assert not list(private.glob("*.part-*"))
    assert served(mp) == expected


# --- room on the node's disk, and housekeeping -----------------------------------------------


def copies_in(stage: Path) -> dict[str, int]:
    """The whole copies in this user's staging directory: name -> inode."""
    private = stage / f"imagenetfs-{os.getuid()}"
    return {p.name: p.stat().st_ino for p in private.glob("*.squashfs")}


def train_state(mounter: Mounter, mp: Path) -> str:
    return states(staging(mounter, mp))["train.squashfs"]


def errors_of(report: dict[str, Any]) -> dict[str, str]:
    return {i["name"]: i["error"] for i in report["images"] if i["state"] == "failed"}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("fstype", ["tmpfs", "ext2"])
def test_a_copy_starts_only_if_the_margin_stays_free(
    mounter: Mounter, admin: Path, expected: dict[str, bytes], fstype: str
) -> None:
    """10 GiB or 5 % (the default) stays free after every copy, with fallocate (tmpfs) and
    without (ext2: the check before the copy); `--stage-keep-free` moves it."""
    sizes = {p.name: p.stat().st_size for p in admin.glob("*.squashfs")}
    with small_disk(mounter, 16 << 20, fstype) as small:
        mp = mounter.mkdir("mp")
        mounter.mount(mp, admin, "--stage", small)
        report = wait_staged(mounter, mp)
        assert set(states(report).values()) == {"failed"}, report
        margin = "10.7 GB kept free (--stage-keep-free)"
        for error in errors_of(report).values():
            assert error.startswith(f"not enough space in {small}: "), error
            assert margin in error, error
        assert "train.squashfs failed: not enough space" in mounter.cli("status", mp).stdout
        assert served(mp) == expected
        assert mounter.cli("umount", mp).returncode == 0
        # a margin that leaves room for train and test, not for val as well
        keep = free(small) - sizes["train.squashfs"] - sizes["val.squashfs"] // 2
        assert keep > sizes["test.squashfs"] + sizes["train.squashfs"] // 4
        mounted = mounter.mount(mp, admin, "--stage", small, "--stage-keep-free", f"{keep}")
        report = wait_staged(mounter, mp)
        assert states(report) == {
            "train.squashfs": "done", "val.squashfs": "failed", "test.squashfs": "done"
        }, report  # fmt: skip
        assert free(small) >= keep
        assert served(mp) == expected
        assert "staging val.squashfs failed: not enough space" in mounted.log
    bad = mounter.cli("mount", "--stage-keep-free", "lots", "--stage", small, mp)
    one_error_line(bad, "--stage-keep-free 'lots': give a size")


def test_stage_keep_free_takes_a_size_or_a_share() -> None:
    assert str(staging_module.DEFAULT_KEEP_FREE) == (
        "10.7 GB or 5% of the filesystem, whichever is more"
    )
    assert staging_module.parse_keep_free("20G") == staging_module.KeepFree(20 << 30, 0.0)
    assert staging_module.parse_keep_free("1.5gib").size == 3 << 29
    assert staging_module.parse_keep_free("0") == staging_module.KeepFree(0, 0.0)
    assert staging_module.parse_keep_free("10%") == staging_module.KeepFree(0, 0.1)
    for bad in ("95%", "-1G", "lots", "", "inf", "%"):
        with pytest.raises(UsageError, match="--stage-keep-free"):
            staging_module.parse_keep_free(bad)


@pytest.mark.timeout(180)
def test_a_copy_in_progress_counts_at_its_full_size(
    mounter: Mounter, admin: Path, tmp_path: Path
) -> None:
    """A second mount staging into the same disk while the first copies: the first's copy
    counts at its full size from its start (reserved), so the second's copy of the same size
    is refused before it starts, and neither runs out of space halfway. The first keeps its
    records elsewhere (`$IMAGENETFS_STATE_DIR`): the second's housekeeping leaves its copy
    under way for its lock alone."""
    other = tmp_path / "other"
    other_sample(other)
    train = (admin / "train.squashfs").stat().st_size
    elsewhere = Mounter(mounter.mkdir("elsewhere"))  # (another registry)
    with small_disk(mounter, 8 << 20) as small:
        assert free(small) - train < (other / "train.squashfs").stat().st_size < free(small)
        one, two = mounter.mkdir("one"), mounter.mkdir("two")
        keep = ("--stage-keep-free", "0")
        try:
            elsewhere.mount(one, admin, "--stage", small, "--stage-rate", "500K", *keep)
            assert wait_until(lambda: copied(elsewhere, one) > 0, 30)
            mounter.mount(two, other, "--stage", small, *keep)
            assert wait_until(lambda: train_state(mounter, two) == "failed", 30)
            assert train_state(elsewhere, one) == "copying"
            refused = staging(mounter, two)["images"][0]
            assert refused["bytes"] == 0 and "not enough space in" in refused["error"], refused
            report = wait_staged(elsewhere, one)  # (two's housekeeping left its part alone)
            assert states(report)["train.squashfs"] == "done", report
            for m, mp in ((elsewhere, one), (mounter, two)):
                report = wait_staged(m, mp)
                assert not any("No space left" in e for e in errors_of(report).values()), report
            assert served(two) == reference_tree(other, tmp_path / "reference").files
        finally:
            elsewhere.cleanup()


@pytest.mark.timeout(180)
def test_superseded_and_long_unused_copies_go_at_the_next_staging_mount(
    mounter: Mounter, admin: Path, stage: Path, tmp_path: Path
) -> None:
    """Copies no index in use needs: those of an image name staged under another key (the
    images changed), those of other names unused for 7 days, and a killed copier's part."""
    mp = mounter.mkdir("mp")
    mounter.mount(mp, admin, "--stage", stage)
    wait_staged(mounter, mp)
    assert mounter.cli("umount", mp).returncode == 0
    before = copies_in(stage)
    private = stage / f"imagenetfs-{os.getuid()}"
    train = next(private.glob("*-train.squashfs"))
    week = time.time() - 7 * 86400
    unused = private / "0123456789ab-other.squashfs"
    recent = private / "ba9876543210-recent.squashfs"
    for path, when in ((unused, week - 3600), (recent, week + 3600)):
        shutil.copyfile(train, path)
        os.utime(path, (when, when))
    killed = private / "cccccccccccc-old.squashfs.part-4242"
    killed.write_bytes(b"\0" * 4096)
    foreign = private / "notes.txt"  # (not named as a copy: never touched)
    foreign.write_text("mine\n")
    # the images changed: same names, other bytes
    other = tmp_path / "other"
    other_sample(other)
    mounted = mounter.mount(mp, other, "--stage", stage)
    report = wait_staged(mounter, mp)
    assert set(states(report).values()) == {"done"}, report
    after = copies_in(stage)
    assert not set(before) & set(after), (before, after)
    assert sorted(after) == sorted([recent.name, *(Path(p).name for p in report["copies"])])
    assert not unused.exists() and not killed.exists() and foreign.exists()
    assert not [p for p in private.glob("*.lock") if p.name.removesuffix(".lock") in before]
    assert "removed 4 copies no mount uses" in mounted.log, mounted.log


@pytest.mark.timeout(180)
def test_a_copy_another_live_mount_serves_is_kept(
    mounter: Mounter, admin: Path, expected: dict[str, bytes], stage: Path, tmp_path: Path
) -> None:
    """Its record lists what a live mount serves: another mount's housekeeping leaves it, even
    superseded; once that mount is gone, the next staging mount removes it."""
    other = tmp_path / "other"
    other_sample(other)
    one, two = mounter.mkdir("one"), mounter.mkdir("two")
    mounter.mount(one, admin, "--stage", stage)
    wait_staged(mounter, one)
    first = set(copies_in(stage))
    mounter.mount(two, other, "--stage", stage)
    wait_staged(mounter, two)
    second = set(copies_in(stage)) - first
    assert len(first) == len(second) == 3
    assert first <= set(copies_in(stage)), "a copy a live mount serves was removed"
    assert sorted(Path(p).name for p in state(mounter, one)["images"]) == sorted(first)
    assert served(one) == expected
    for mp in (one, two):
        assert mounter.cli("umount", mp).returncode == 0
    mounter.mount(two, other, "--stage", stage)
    assert set(states(wait_staged(mounter, two)).values()) == {"reused"}
    assert set(copies_in(stage)) == second


@pytest.mark.timeout(180)
def test_umount_drop_stage_removes_this_mounts_copies_only(
    mounter: Mounter, admin: Path, expected: dict[str, bytes], stage: Path, tmp_path: Path
) -> None:
    """`umount --drop-stage`: when it unmounts (the last user), the copies the mount staged
    go, but those another live mount uses; `--lazy` too, while a file is open (the daemon
    reads the removed copy until it ends)."""
    other = tmp_path / "other"
    other_sample(other)
    one, two, three = mounter.mkdir("one"), mounter.mkdir("two"), mounter.mkdir("three")
    for mp, source in ((one, admin), (two, admin), (three, other)):
        mounter.mount(mp, source, "--stage", stage)
        wait_staged(mounter, mp)
        if mp == one:
            ours = set(copies_in(stage))
    theirs = set(copies_in(stage)) - ours
    assert len(ours) == len(theirs) == 3
    result = mounter.cli("umount", "--drop-stage", one)
    assert result.returncode == 0 and not is_mounted(one), result.stderr
    assert "kept 3 that another mount of yours uses" in result.stdout, result.stdout
    assert set(copies_in(stage)) == ours | theirs
    assert mounter.cli("mount", "--source", admin, "--stage", stage, two).returncode == 0
    result = mounter.cli("umount", "--drop-stage", two)  # one user of two: stays mounted
    assert "still used by 1 more" in result.stdout and is_mounted(two), result.stdout
    assert set(copies_in(stage)) == ours | theirs
    mounted = Mounted(two, state(mounter, two)["pid"], Path(state(mounter, two)["state_file"]))
    name = next(p for p in expected if p.startswith("train/"))
    held = os.open(two / name, os.O_RDONLY)
    try:
        result = mounter.cli("umount", "--lazy", "--drop-stage", two)
        assert result.returncode == 0 and not is_mounted(two), result.stderr
        assert "removed 3 staged copies" in result.stdout, result.stdout
        assert set(copies_in(stage)) == theirs
        private = stage / f"imagenetfs-{os.getuid()}"
        assert sorted(p.name for p in private.iterdir()) == sorted(
            [*theirs, *(f"{t}.lock" for t in theirs)]
        )
        os.posix_fadvise(held, 0, 0, os.POSIX_FADV_DONTNEED)
        assert os.pread(held, 1 << 24, 0) == expected[name]  # from the removed copy
        assert alive(mounted.pid)
    finally:
        os.close(held)
    assert wait_until(lambda: not alive(mounted.pid), 15)
    assert mounter.cli("umount", three).returncode == 0
    assert set(copies_in(stage)) == theirs


def test_a_lazily_detached_mount_stages_nothing_more(
    mounter: Mounter, admin: Path, expected: dict[str, bytes], stage: Path
) -> None:
    """`umount --lazy --drop-stage` while the first copy is under way and a file is open: the
    daemon goes on serving that file, abandons its copy (within a second: `--drop-stage`
    waits for its lock) and copies nothing more."""
    mp = mounter.mkdir("mp")
    mounted = mounter.mount(mp, admin, "--stage", stage, "--stage-rate", "500K")
    assert wait_until(lambda: copied(mounter, mp) > 0, 30)
    path = next(p for p in (mp / "train").rglob("*") if p.is_file())
    private = stage / f"imagenetfs-{os.getuid()}"
    held = os.open(path, os.O_RDONLY)
    try:
        result = mounter.cli("umount", "--lazy", "--drop-stage", mp)
        assert result.returncode == 0 and not is_mounted(mp), result.stderr
        assert "; no staged copies to remove" in result.stdout, result.stdout
        assert not list(private.iterdir())
        stopped = f"staging stopped: {mp} is no longer mounted"
        assert wait_until(lambda: stopped in mounted.log, 15), mounted.log
        assert not list(private.iterdir()) and alive(mounted.pid)
        os.posix_fadvise(held, 0, 0, os.POSIX_FADV_DONTNEED)
        assert os.pread(held, 1 << 24, 0) == expected[path.relative_to(mp).as_posix()]
    finally:
        os.close(held)
    assert wait_until(lambda: not alive(mounted.pid), 15)
    assert f"staging stopped: {mp} is no longer mounted" in mounted.log, mounted.log


@pytest.mark.timeout(180)
def test_the_job_script_removes_what_it_staged_unless_told_to_keep_it(
    mounter: Mounter, admin: Path, stage: Path
) -> None:
    """scripts/slurm/imagenet.sbatch run by hand (outside Slurm: the task part alone), staging
    into $TMPDIR: with IMAGENETFS_KEEP_STAGE=1 the copies stay for the node's next job, by
    default its unmount removes them."""
    mp = mounter.work / "inet"
    mounter.points.append(mp)
    wait = 'until "$IMAGENETFS" status "$IMAGENET" | grep -q "(done)"; do sleep 0.2; done'
    env = {k: v for k, v in mounter.env().items() if not k.startswith("SLURM")}
    env.update(IMAGENETFS=CLI, IMAGENETFS_SOURCE=str(admin), IMAGENET=str(mp), TMPDIR=str(stage))
    for keep, left in (("1", 3), ("", 0)):
        result = subprocess.run(
            ["bash", str(JOB), "sh", "-c", wait], env={**env, "IMAGENETFS_KEEP_STAGE": keep},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert not is_mounted(mp) and not mp.exists(), result.stderr
        assert len(copies_in(stage)) == left, result.stderr


def test_stage_without_dir_uses_the_jobs_scratch(
    mounter: Mounter, admin: Path, stage: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mp = mounter.mkdir("mp")
    for name in ("SLURM_TMPDIR", "TMPDIR", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    one_error_line(mounter.cli("mount", "--source", admin, "--stage", mp), "--stage: give a DIR")
    assert not is_mounted(mp)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("TMPDIR", str(stage))
    mounter.mount(mp, admin, "--stage")
    report = wait_staged(mounter, mp)
    assert report["dir"] == str(stage / f"imagenetfs-{os.getuid()}")
    bad = mounter.cli("mount", "--source", admin, "--stage", stage / "nope", mounter.mkdir("mp2"))
    one_error_line(bad, f"--stage {stage / 'nope'}: no such directory")
    rate = mounter.cli("mount", "--source", admin, "--stage-rate", "fast", "--stage", stage, mp)
    one_error_line(rate, "--stage-rate 'fast': give bytes per second")
    rate = mounter.cli("mount", "--source", admin, "--stage-rate", "9", "--stage", stage, mp)
    one_error_line(rate, "--stage-rate '9': give 100K")


def test_user_index_path_is_in_the_users_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert user_index_path(Path("/data/imagenet")).parent == tmp_path / "imagenetfs"
