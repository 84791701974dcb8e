"""Every command, given a path it cannot use, says so in one line and ends.

As an unprivileged user (the `users` fixture), every command and path option of
`imagenetfs --help` is run with each kind of bad path that applies to it: a directory the user
cannot write (or read), a path that does not exist, a file where a directory is wanted (or a
directory where a file is), and a full disk -- a 64 KiB tmpfs mounted here and filled up. Each
run must end within `BOUND` seconds (its whole process group is killed at that time: a warm
whose pool restarts its workers forever would be), exit 1 and print one line on stderr and
nothing else, `imagenetfs: error: ...` naming the path and what to do -- no traceback
(`helpers.one_error_line`).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Users
from helpers import CLI, Mounter, force_unmount, fuse_unusable, is_mounted, one_error_line

UNUSABLE = fuse_unusable(("mksquashfs", "fusermount3"), "the tests run commands as another user")
pytestmark = pytest.mark.skipif(UNUSABLE is not None, reason=str(UNUSABLE))

#: Seconds a command may take to refuse a bad path (a refusal takes about one).
BOUND = 30
#: Words of the "what to do" part of a line: at least one must be there.
HINTS = ("give ", "use ", "free ", "ask ", "remove ", "run ", "set ", "mount it", "choose ")


@dataclass(frozen=True)
class Places:
    """Bad paths for `user`, and good ones to go with them."""

    data: Path  # the admin's sample, read-only, index beside
    mp: Path  # an empty directory the user owns
    own: Path  # another
    ro: Path  # a directory the user cannot write (root's, 0755)
    closed: Path  # a directory the user cannot read (root's, 0700)
    afile: Path  # a regular file
    missing: Path  # nothing there; its parent exists
    full: Path  # the user's directory on a full tmpfs


@pytest.fixture(scope="module")
def places(users: Users, admin: Path, base: Path) -> Iterator[Places]:
    top = base / "paths"
    top.mkdir(mode=0o755)
    ro, closed, full = top / "ro", top / "closed", top / "full"
    ro.mkdir(mode=0o755)
    closed.mkdir(mode=0o700)
    (closed / "train.squashfs").write_bytes(b"")
    afile = top / "afile"
    afile.write_text("a file\n")
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)], check=True)
    try:
        fd = os.open(full / "fill", os.O_WRONLY | os.O_CREAT, 0o644)  # root's: stays full
        try:
            while os.write(fd, bytes(4096)):
                pass
        except OSError as e:
            assert e.errno == errno.ENOSPC
        finally:
            os.close(fd)
        shutil.chown(full, users.user.user)
        user = users.user
        yield Places(
            admin, user.mkdir("mp"), user.mkdir("own"), ro, closed, afile, top / "missing", full
        )
    finally:
        subprocess.run(["umount", "-l", str(full)], check=False)


def run_bounded(user: Mounter, *args: object) -> tuple[subprocess.CompletedProcess[str], float]:
    """`imagenetfs ARGS` as `user`, its process group SIGKILLed after BOUND seconds."""
    started = time.monotonic()
    result = subprocess.run(
        ["timeout", "-s", "KILL", str(BOUND), *user.command([CLI, *map(str, args)])],
        capture_output=True,
        text=True,
        env=user.env(),
        stdin=subprocess.DEVNULL,
        timeout=BOUND + 30,
    )
    return result, time.monotonic() - started


def assert_refused(
    result: subprocess.CompletedProcess[str], seconds: float, path: Path, hint: bool = True
) -> None:
    assert result.returncode != -9 and result.returncode != 137, (
        f"still running after {BOUND} s, killed; stderr ends: {result.stderr[-200:]!r}"
    )
    line = one_error_line(result, str(path))
    if hint:
        assert any(word in line for word in HINTS), f"{line!r} does not say what to do"
    assert seconds < BOUND


def cases(p: Places) -> list[tuple[tuple[object, ...], Path]]:
    """(arguments, the path the line must name): every command and path option, each way
    the path can be unusable."""
    d, mp = p.data, p.mp
    warm = ("warm", "--source", d, "--resize", "64x64", "-j", "2", "-q")
    mount = ("mount", "--source", d)
    return [
        # sample DIR
        (("sample", p.ro / "s"), p.ro / "s"),
        (("sample", p.afile), p.afile),
        (("sample", p.full / "s"), p.full / "s"),
        # index --source, --index
        (("index", "--source", p.missing), p.missing),
        (("index", "--source", p.afile), p.afile),
        (("index", "--source", p.closed), p.closed),
        (("index", "--source", d, "--index", p.ro / "i.lmdb"), p.ro / "i.lmdb"),
        (("index", "--source", d, "--index", p.afile / "i.lmdb"), p.afile / "i.lmdb"),
        (("index", "--source", d, "--index", p.ro), p.ro),
        (("index", "--source", d, "--index", p.full / "i.lmdb"), p.full / "i.lmdb"),
        # mount --source, --index, --cache-dir, --stage, --metrics, MOUNTPOINT
        (("mount", "--source", p.missing, mp), p.missing),
        (("mount", "--source", p.afile, mp), p.afile),
        (("mount", "--source", p.closed, mp), p.closed),
        ((*mount, "--index", p.ro / "i.lmdb", mp), p.ro / "i.lmdb"),
        ((*mount, "--index", p.full / "i.lmdb", mp), p.full / "i.lmdb"),
        ((*mount, "--index", p.ro, mp), p.ro),
        ((*mount, "--resize", "64", "--cache-dir", p.ro / "c", mp), p.ro / "c"),
        ((*mount, "--resize", "64", "--cache-dir", p.afile, mp), p.afile),
        ((*mount, "--resize", "64", "--cache-dir", p.full / "c", mp), p.full / "c"),
        ((*mount, "--stage", p.missing, mp), p.missing),
        ((*mount, "--stage", p.afile, mp), p.afile),
        ((*mount, "--stage", p.ro, mp), p.ro),
        ((*mount, "--metrics", p.ro / "m.prom", mp), p.ro / "m.prom"),
        ((*mount, "--metrics", p.missing / "m.prom", mp), p.missing / "m.prom"),
        ((*mount, "--metrics", p.afile / "m.prom", mp), p.afile / "m.prom"),
        ((*mount, "--metrics", p.ro, mp), p.ro),
        ((*mount, "--metrics", p.full / "m.prom", mp), p.full / "m.prom"),
        ((*mount, p.missing / "deeper"), p.missing / "deeper"),
        ((*mount, p.afile), p.afile),
        ((*mount, p.ro), p.ro),
        # warm --source, --index, --cache-dir, MOUNTPOINT
        (("warm", "--source", p.missing, "--resize", "64x64"), p.missing),
        (("warm", "--source", p.closed, "--resize", "64x64"), p.closed),
        ((*warm, "--index", p.ro / "i.lmdb"), p.ro / "i.lmdb"),
        ((*warm, "--index", p.full / "i.lmdb"), p.full / "i.lmdb"),
        ((*warm, "--cache-dir", p.ro / "c"), p.ro / "c"),
        ((*warm, "--cache-dir", p.afile), p.afile),
        ((*warm, "--cache-dir", p.full / "c"), p.full / "c"),
        (("warm", p.missing), p.missing),
        # pack SOURCE OUTDIR --index
        (("pack", p.missing, p.own / "o"), p.missing),
        (("pack", p.closed, p.own / "o"), p.closed),
        (("pack", d, p.ro / "o"), p.ro / "o"),
        (("pack", d, p.afile), p.afile),
        (("pack", d, p.full / "o"), p.full / "o"),
        (("pack", d, p.own / "o", "--index", p.ro / "i.lmdb"), p.ro / "i.lmdb"),
    ]


def test_every_command_refuses_a_bad_path_in_one_line(users: Users, places: Places) -> None:
    """(Two commands at a time: each spends most of its second starting Python. A mount that
    wrongly succeeds is seen by whichever run looks next, and fails the test all the same.)"""
    user = users.user
    failures = []

    def one(case: tuple[tuple[object, ...], Path]) -> None:
        args, path = case
        result, seconds = run_bounded(user, *args)
        try:
            assert not is_mounted(places.mp), "mounted anyway"
            assert_refused(result, seconds, path)
        except AssertionError as e:
            failures.append(f"imagenetfs {' '.join(map(str, args))}: {str(e)[:400]}")
        finally:
            if is_mounted(places.mp):
                force_unmount(places.mp)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, cases(places)))
    assert not failures, f"{len(failures)} of {len(cases(places))}:\n" + "\n".join(failures)
    assert not list(places.mp.iterdir()) and not list(places.own.iterdir())  # nothing made


def test_umount_and_status_refuse_a_bad_mount_point(users: Users, places: Places) -> None:
    """Their argument errors: a mount point that does not exist, or is a file."""
    for command in ("umount", "status"):
        for path in (places.missing, places.afile):
            result, seconds = run_bounded(users.user, command, path)
            assert_refused(result, seconds, path, hint=False)


def test_mount_says_on_the_terminal_that_it_serves_without_a_cache(
    users: Users, places: Places
) -> None:
    """The default resize cache cannot be used (a file is in its way): the mount goes on
    without one (resized files made again at every open) and says so on the terminal, in one
    warning naming the directory and what to do -- not only in its log."""
    user = users.user
    default = user.work / "cache" / "imagenetfs" / "resized"  # (XDG_CACHE_HOME of the user)
    made = subprocess.run(
        user.command(
            ["sh", "-c", f"rm -rf {default}; mkdir -p {default.parent}; echo x >{default}"]
        ),
        env=user.env(),
    )
    assert made.returncode == 0
    user.points.append(places.mp)
    try:
        result = user.cli("mount", "--source", places.data, "--resize", "64", places.mp)
        assert result.returncode == 0, result.stderr
        warning = [line for line in result.stderr.splitlines() if "warning" in line]
        assert len(warning) == 1, result.stderr
        assert str(default) in warning[0] and "without a cache" in warning[0], warning
        assert "--cache-dir" in warning[0], warning  # what to do
        head = user.python(  # (the user's mount: only the user reads it)
            "import json, pathlib, sys\n"
            "val = pathlib.Path(json.loads(sys.argv[1])) / 'resized' / '64' / 'val'\n"
            "first = next(next(val.iterdir()).iterdir())\n"
            "print(json.dumps(list(first.read_bytes()[:2])))",
            places.mp,
        )
        assert head == [0xFF, 0xD8]  # a JPEG, resized without a cache
        assert user.cli("umount", places.mp).returncode == 0
    finally:
        if is_mounted(places.mp):
            force_unmount(places.mp)
        default.unlink()


WARM_A_FILE = """
import sys
from pathlib import Path
from imagenetfs import warm
from imagenetfs.views import resize
job = warm.WarmJob(Path(sys.argv[1]), Path(sys.argv[2]), (resize.parse_spec("64x64"),), 90,
                   Path(sys.argv[3]), 1 << 30)
try:
    warm.warm(job, ["val"], 2, False)
except warm.WarmError as e:
    print(e)
    sys.exit(3)
"""


def test_a_pool_worker_that_cannot_start_stops_the_pool(places: Places) -> None:
    """`warm.warm` with a cache no worker can open (a file where its directory should be):
    the pool stops at once with the workers' reason, instead of starting workers again."""
    result = subprocess.run(
        ["timeout", "-s", "KILL", str(BOUND), sys.executable, "-c", WARM_A_FILE,
         str(places.data / "imagenetfs.lmdb"), str(places.data), str(places.afile)],
        capture_output=True, text=True, timeout=BOUND + 30,
    )  # fmt: skip
    assert result.returncode == 3, (result.returncode, result.stderr[-2000:])
    assert str(places.afile) in result.stdout, result.stdout
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
