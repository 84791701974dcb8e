"""`mount --idle-timeout`: the mount goes once nobody uses it, and never under a user.

A user is a process with an open file, its working directory, its root or a mapping on the
mount -- counted by the mount's device, so also through a symlink and from another mount
namespace (a bind of the mount into a container) -- or a reader the kernel serves from its
caches, which the shortened entry and attribute timeouts bring back with a request in time.
Each case runs with a 3 s timeout for three times that long; then the mount must go. And
`holders.Scan` alone, against a live mount: each way of using it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from subprocess import PIPE

import pytest
from helpers import (
    Mounted,
    Mounter,
    alive,
    fuse_unusable,
    is_mounted,
    private_mount_namespace,
    wait_until,
)

from imagenetfs import holders

TIMEOUT = 3  # seconds: --idle-timeout 3s
HELD = 3 * TIMEOUT  # how long each user holds on

pytestmark = pytest.mark.skipif(
    fuse_unusable(("fusermount3", "mksquashfs", "unshare"), "mounts as root") is not None,
    reason=str(fuse_unusable(("fusermount3", "mksquashfs", "unshare"), "mounts as root")),
)


def mount_at(mounter: Mounter, given: Path, source: Path, *extra: object) -> Mounted:
    """Mount at `given` (a path that may pass through symlinks) with the idle timeout; the
    Mounted carries the point as the kernel lists it (resolved), whose record `Mounter` finds
    (recorded as resolved: one record however it is named)."""
    return mounter.mount(given, source, "--idle-timeout", f"{TIMEOUT}s", *extra)


def a_file(mp: Path) -> Path:
    train = mp / "train"
    wnid = sorted(os.listdir(train))[0]
    return train / wnid / sorted(os.listdir(train / wnid))[0]


def stays_mounted(mounted: Mounted, seconds: float, user: subprocess.Popen[bytes]) -> None:
    """The mount is there for `seconds` (looked at without touching it), with `user` running
    all along; then it is still held because of that user."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert is_mounted(mounted.mp), (
            f"unmounted {seconds - (deadline - time.monotonic()):.1f} s into a use of "
            f"{seconds} s with --idle-timeout {TIMEOUT}s:\n{mounted.log}"
        )
        assert user.poll() is None, f"the user ended early ({user.returncode})"
        time.sleep(0.2)


def goes_away(mounted: Mounted) -> None:
    """Once nobody uses it, the mount goes by itself, and its daemon with it."""
    assert wait_until(lambda: not is_mounted(mounted.mp), TIMEOUT + 15), mounted.log
    assert wait_until(lambda: not alive(mounted.pid), 10)
    assert f"no request for {TIMEOUT} s: unmounting" in mounted.log


@contextmanager
def running(args: list[str], **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(args, **kwargs)  # type: ignore[call-overload]
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def comm_is(pid: int, name: str) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == name
    except OSError:
        return False


#: A process using the mount one way only (argv: a file of the mount, the way); its working
#: directory and root stay outside unless that is the way.
HOLDER = """
import ctypes, mmap, os, sys, time
path, way = sys.argv[1:]
if way == "file":
    fd = os.open(path, os.O_RDONLY)
elif way == "mapping":  # by libc's mmap: Python's mmap object keeps a descriptor open
    libc = ctypes.CDLL(None)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long)
    fd = os.open(path, os.O_RDONLY)
    mapped = libc.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    assert mapped != ctypes.c_void_p(-1).value
    os.close(fd)
elif way == "root":  # chrooted into the mount, its working directory left outside
    outside = os.open("/", os.O_RDONLY)
    os.chroot(os.path.dirname(path))
    os.fchdir(outside)
    os.close(outside)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.timeout(120)
def test_each_way_of_using_the_mount_is_seen_by_its_device(mounter: Mounter, admin: Path) -> None:
    """holders.Scan alone, against a live mount: a working directory, an open file, a
    mapping (its file closed), a root inside; and a process whose working directory is the
    directory the mount covers (it entered the mount point before the mount) is no user."""
    mp = mounter.mkdir("mp")
    skip = frozenset({os.getpid()})
    with running(["sleep", "60"], cwd=mp) as underneath:
        mounter.mount(mp, admin)
        device = holders.device_of(mp)
        st = os.stat(mp)
        assert device == f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        assert holders.holder(device, None, skip) is None
        assert os.readlink(f"/proc/{underneath.pid}/cwd") == str(mp)  # (the path is the same)
    path = a_file(mp)
    with running(["sleep", "60"], cwd=mp / "train") as holder:
        assert holders.holder(device, None, skip) == holder.pid
        assert holders.holder(device, os.getuid(), skip) == holder.pid
        assert holders.holder(device, os.getuid() + 1, skip) is None  # another user's only
    for way in ("file", "mapping", "root"):
        command = [sys.executable, "-c", HOLDER, str(path), way]
        with running(command, cwd="/", stdout=PIPE) as holder:
            assert holder.stdout is not None and holder.stdout.readline() == b"ready\n", way
            assert holders.holder(device, None, skip) == holder.pid, way
    assert holders.holder(device, None, skip) is None


@pytest.mark.timeout(120)
def test_an_unused_mount_unmounts_after_the_timeout(mounter: Mounter, admin: Path) -> None:
    mp = mounter.mkdir("mp")
    started = time.monotonic()
    mounted = mount_at(mounter, mp, admin)
    # the watch looks every T/4: gone between T and 1.5 T (plus the unmount itself), and
    # not before T (asserted once it is gone)
    deadline = started + 1.5 * TIMEOUT + 3
    assert wait_until(lambda: not is_mounted(mp), deadline - time.monotonic()), mounted.log
    assert time.monotonic() - started >= TIMEOUT
    goes_away(mounted)


@pytest.mark.timeout(120)
def test_a_holder_reached_through_symlinks_keeps_the_mount(mounter: Mounter, admin: Path) -> None:
    """Mounted at a path through a symlink (a site's /scratch -> /local/scratch), entered
    through another symlink to the mount point: the kernel knows the holder's directory by
    the resolved path, which the path given to `mount` is not."""
    real = mounter.mkdir("real")
    (real / "mp").mkdir()
    alias = mounter.work / "alias"
    alias.symlink_to(real)
    link = mounter.work / "link"
    link.symlink_to(alias / "mp")
    mounted = mount_at(mounter, alias / "mp", admin)
    assert mounted.mp == real / "mp"
    with running(["sleep", "60"], cwd=link / "train") as holder:  # a shell inside, say
        stays_mounted(mounted, HELD, holder)
        assert f"process {holder.pid} uses the mount: staying" in mounted.log
    goes_away(mounted)


@pytest.mark.timeout(120)
def test_a_holder_in_another_mount_namespace_keeps_the_mount(mounter: Mounter, admin: Path) -> None:
    """A container's view (Apptainer binds the data in): a private mount namespace where the
    mount is bound at another path, and a process with its directory and a file open there."""
    mp, elsewhere = mounter.mkdir("mp"), mounter.mkdir("elsewhere")
    mounted = mount_at(mounter, mp, admin)
    inside = a_file(mp).relative_to(mp)
    script = 'mount --bind "$1" "$2" && cd "$2/train" && exec sleep 60 < "$2/$3"'
    command = [*private_mount_namespace(), "sh", "-c", script, "sh"]
    with running([*command, str(mp), str(elsewhere), str(inside)]) as holder:
        assert wait_until(lambda: comm_is(holder.pid, "sleep"), 10)
        # its directory is not under the mount point as this namespace sees paths
        assert not os.readlink(f"/proc/{holder.pid}/cwd").startswith(f"{mp}/")
        stays_mounted(mounted, HELD, holder)
        assert f"process {holder.pid} uses the mount: staying" in mounted.log
    goes_away(mounted)


@pytest.mark.timeout(120)
def test_a_reader_served_from_the_page_cache_keeps_the_mount(mounter: Mounter, admin: Path) -> None:
    """`cat` of one file in a loop: after the first, every open, read and close is the
    kernel's alone (cached entry, attributes and pages; worker processes answer no OPEN),
    and each `cat` is too brief to be seen in /proc. It counts as a user by the LOOKUPs the
    kernel sends once the shortened entry timeouts run out. (With `--workers 0` every open is
    a request anyway.)"""
    mp = mounter.mkdir("mp")
    mounted = mount_at(mounter, mp, admin)
    path = a_file(mp)
    expected = path.read_bytes()
    loop = (
        f"end=$(($(date +%s) + {HELD})); "
        'while [ "$(date +%s)" -lt "$end" ]; do cat "$1" > "$2" || exit 1; done'
    )
    copy = mounter.work / "copy"
    with running(["sh", "-c", loop, "sh", str(path), str(copy)]) as reader:
        stays_mounted(mounted, HELD - 1, reader)
        served = mounted.stats(after=time.time())["fs"]
        assert reader.wait(10) == 0
    assert "staying" not in mounted.log  # (never quiet for 3 s: no look in /proc was needed)
    assert copy.read_bytes() == expected
    # what kept it: LOOKUPs and GETATTRs; the bytes were read once, then the pages stayed
    assert served["bytes_read"] == len(expected), served
    goes_away(mounted)
