"""Every bad input of DESIGN.md "Commands": one clear line on stderr, exit code 1, no traceback.

Each case runs the real `imagenetfs` CLI in a subprocess. Cases that need the machine to lack
something (no /dev/fuse, no fusermount3) create that situation for real: a private mount
namespace with an empty /dev, or a PATH without fusermount3 for an unprivileged user. Every
command runs through `Mounter`, with a state directory of its own (never the node's registry),
and what a test mounts is undone after it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CLI, Mounter, one_error_line, searchable_by_others

from imagenetfs import generate
from imagenetfs.generate import Spec

SPEC = Spec(classes=2, train_per_class=2, val_per_class=1, test=1, tiny=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    generate.generate(out, SPEC)
    return out


@pytest.fixture
def mountpoint(tmp_path: Path) -> Path:
    mp = tmp_path / "mnt"
    mp.mkdir()
    return mp


def test_missing_source(mounter: Mounter, tmp_path: Path, mountpoint: Path) -> None:
    missing = tmp_path / "nowhere"
    for command in (["mount", str(mountpoint)], ["index"]):
        result = mounter.cli(*command, "--source", str(missing))
        one_error_line(result, f"source {missing} does not exist")
    env = {"IMAGENETFS_SOURCE": str(missing)}
    one_error_line(mounter.cli("mount", str(mountpoint), env=env), f"source {missing}")


def test_source_without_images(mounter: Mounter, tmp_path: Path, mountpoint: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = mounter.cli("mount", "--source", str(empty), str(mountpoint))
    one_error_line(result, "no ImageNet found (looked for train/val/test.squashfs")


def test_not_a_squashfs_image(mounter: Mounter, tmp_path: Path, mountpoint: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.squashfs").write_bytes(b"this is a tarball, not an image" * 100)
    result = mounter.cli(
        "mount", "--source", str(src), "--index", str(tmp_path / "i"), str(mountpoint)
    )
    # (after the notice that it indexes the source first, the index being missing)
    one_error_line(result, f"{src / 'train.squashfs'}: not a SquashFS image", notes=True)
    assert not os.path.ismount(mountpoint)


def test_corrupt_image(mounter: Mounter, tmp_path: Path, data: Path, mountpoint: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(data, src)
    image = src / "train.squashfs"
    blob = bytearray(image.read_bytes())
    del blob[len(blob) // 2 :]  # truncated: tables point past the end
    image.write_bytes(bytes(blob))
    result = mounter.cli(
        "mount", "--source", str(src), "--index", str(tmp_path / "i"), str(mountpoint)
    )
    one_error_line(result, str(image), notes=True)  # (after "indexing ...")
    assert not os.path.ismount(mountpoint)


def test_bad_mount_points(mounter: Mounter, tmp_path: Path, data: Path) -> None:
    index = str(tmp_path / "i.lmdb")
    base = ["mount", "--source", str(data), "--index", index]
    afile = tmp_path / "file"
    afile.write_text("x")
    one_error_line(mounter.cli(*base, str(afile)), f"mount point {afile} is not a directory")
    full = tmp_path / "full"
    full.mkdir()
    (full / "something").write_text("x")
    one_error_line(mounter.cli(*base, str(full)), f"mount point {full} is not empty")
    orphan = tmp_path / "no" / "such" / "dir"
    one_error_line(mounter.cli(*base, str(orphan)), "does not exist")

    busy = tmp_path / "busy"
    busy.mkdir()
    mounter.mount(busy, data, index=tmp_path / "i.lmdb")
    # the same source again joins that mount (tests/test_slurm.py); another is refused
    other = ["mount", "--source", str(tmp_path / "other"), str(busy)]
    one_error_line(mounter.cli(*other), f"{busy} is busy: imagenetfs serves {data} there")
    tmpfs = tmp_path / "tmpfs"  # and so is anything else mounted there
    tmpfs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(tmpfs)], check=True)
    try:
        one_error_line(mounter.cli(*base, str(tmpfs)), f"mount point {tmpfs} is busy")
    finally:
        subprocess.run(["umount", "-l", str(tmpfs)], check=False)


def test_umount_not_mounted(mounter: Mounter, mountpoint: Path) -> None:
    one_error_line(mounter.cli("umount", str(mountpoint)), f"{mountpoint} is not mounted")


def test_bad_index(mounter: Mounter, tmp_path: Path, data: Path, mountpoint: Path) -> None:
    bogus = tmp_path / "bogus.lmdb"
    bogus.write_bytes(b"\0" * 10000)
    result = mounter.cli("mount", "--source", str(data), "--index", str(bogus), str(mountpoint))
    one_error_line(result, f"{bogus}")


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_no_dev_fuse(mounter: Mounter, tmp_path: Path, data: Path, mountpoint: Path) -> None:
    """In a mount namespace of its own whose /dev is an empty tmpfs, there is no /dev/fuse.

    Only /dev is made private there (`unshare --propagation private` would remount / private,
    which a chroot, whose / is no mount point, refuses); without that the tmpfs could reach the
    machine's own /dev, so the test skips when /dev cannot be made private."""
    index = tmp_path / "i.lmdb"
    assert mounter.cli("index", "--source", str(data), "--index", str(index)).returncode == 0
    script = (
        "mount --make-rprivate /dev || exit 77; mount -t tmpfs none /dev && "
        f"exec {CLI} mount --source {data} --index {index} {mountpoint}"
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "unchanged", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=mounter.env(),
    )
    if result.returncode == 77:
        pytest.skip(f"/dev cannot be made private here: {result.stderr.strip()}")
    one_error_line(result, "/dev/fuse is missing")


def test_no_fusermount3_for_a_user(mounter: Mounter, tmp_path: Path, data: Path) -> None:
    """An unprivileged user whose PATH has no fusermount3 gets told to install fuse3."""
    user = "nobody"
    base = Path("/tmp") / f"imagenetfs-nofusermount-{os.getpid()}"
    base.mkdir(mode=0o755)
    try:
        src, mp = base / "src", base / "mnt"
        shutil.copytree(data, src)
        src.chmod(0o755)
        mp.mkdir()
        shutil.chown(mp, user)
        state = base / "state"  # (its own registry, not the node's /tmp/imagenetfs-UID)
        state.mkdir(mode=0o700)
        shutil.chown(state, user)
        index = base / "i.lmdb"
        assert mounter.cli("index", "--source", str(src), "--index", str(index)).returncode == 0
        os.chmod(index, 0o644)
        fuse_mode = os.stat("/dev/fuse").st_mode
        os.chmod("/dev/fuse", 0o666)
        code = Path(__file__).resolve().parent.parent
        try:
            with searchable_by_others([code, Path(sys.executable).resolve(), Path(CLI)]):
                result = subprocess.run(
                    [
                        "runuser",
                        "-u",
                        user,
                        "--",
                        "env",
                        "PATH=/nonexistent",
                        "HOME=/tmp",
                        f"IMAGENETFS_STATE_DIR={state}",
                        CLI,
                        "mount",
                        "--source",
                        str(src),
                        "--index",
                        str(index),
                        str(mp),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
        finally:
            os.chmod("/dev/fuse", fuse_mode & 0o7777)
        one_error_line(result, "fusermount3 not found: install fuse3")
    finally:
        shutil.rmtree(base)


def test_bad_workers_setting(mounter: Mounter, tmp_path: Path, mountpoint: Path) -> None:
    """A bad IMAGENETFS_WORKERS is refused at once, before the source is even looked at."""
    for bad in ("lots", "-1", "65"):
        env = {"IMAGENETFS_WORKERS": bad, "IMAGENETFS_SOURCE": str(tmp_path / "x")}
        one_error_line(mounter.cli("mount", str(mountpoint), env=env), "IMAGENETFS_WORKERS")
    one_error_line(mounter.cli("mount", "--workers", "99", str(mountpoint)), "--workers")


def test_bad_shard_options(mounter: Mounter, tmp_path: Path, mountpoint: Path) -> None:
    """Shard options are refused without `--shards`, a seed with the contiguous order (which
    has no shuffle), an unknown order and a shard of no samples -- before the source is looked
    at (it does not exist here)."""
    source = ["--source", str(tmp_path / "x")]
    for options, expected in (
        (["--shard-order", "contiguous"], "go with --shards"),
        (["--shard-seed", "1"], "go with --shards"),
        (["--shards", "--shard-order", "contiguous", "--shard-seed", "1"], "no shuffle to seed"),
        (["--shards", "--shard-samples", "0"], "--shard-samples 0"),
    ):
        one_error_line(mounter.cli("mount", *source, *options, str(mountpoint)), expected)
    result = mounter.cli("mount", *source, "--shards", "--shard-order", "random", str(mountpoint))
    assert result.returncode == 2 and "invalid choice: 'random'" in result.stderr
