"""What is mounted on this node, read from `/proc/self/mountinfo` -- never by touching a mount.

`stat`, `statvfs` or `os.path.ismount` on a FUSE mount point asks its daemon; a daemon that has
stopped answering (SIGSTOPped, stuck on a hung Lustre read) blocks the caller until it answers,
which may be never. So whatever decides "mounted, stale, whose" -- `mount`, `umount`, `status`,
the Slurm epilog -- reads the kernel's mount table instead: one line per mount of this process's
mount namespace (proc(5)), fields separated by spaces, with space, tab, newline and backslash in
paths written as octal escapes (`\\040`).

A mount's identity beyond its point: `device` (`major:minor`, the `st_dev` of every file in it),
`fstype` (`fuse.imagenetfs` for ours) and the superblock options, where FUSE records the uid of
the user who mounted it (`user_id=`).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FSTYPE = "fuse.imagenetfs"

#: Filesystems whose locks and files other nodes share (or whose locks may not be honoured):
#: never a place for per-node state.
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "ceph", "fuse.ceph", "beegfs",
     "glusterfs", "fuse.glusterfs", "9p", "afs", "fuse.sshfs", "panfs", "ocfs2", "gfs2",
     "fuse.juicefs", "fuse.s3fs", "fuse.mountpoint-s3", "fuse.gcsfuse"}
)  # fmt: skip

_ESCAPE = re.compile(rb"\\([0-7]{3})")


def _unescape(field: bytes) -> str:
    return os.fsdecode(_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), field))


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo."""

    id: int
    device: str  # "major:minor"
    point: str
    fstype: str
    source: str
    options: frozenset[str]  # the superblock's: e.g. user_id=1000 for FUSE

    @property
    def uid(self) -> int | None:
        """The mounting user, for FUSE mounts (their `user_id=` option)."""
        for option in self.options:
            if option.startswith("user_id="):
                try:
                    return int(option.removeprefix("user_id="))
                except ValueError:
                    return None
        return None

    def is_imagenetfs_of(self, uid: int) -> bool:
        return self.fstype == FSTYPE and self.uid == uid


def parse(text: bytes) -> Iterator[Mount]:
    """The mounts of a mountinfo table, in its order (later lines are mounted on top)."""
    for line in text.splitlines():
        fields = line.split(b" ")
        try:
            dash = fields.index(b"-", 6)
            yield Mount(
                id=int(fields[0]),
                device=fields[2].decode(),
                point=_unescape(fields[4]),
                fstype=fields[dash + 1].decode(errors="replace"),
                source=_unescape(fields[dash + 2]),
                options=frozenset(fields[dash + 3].decode(errors="replace").split(",")),
            )
        except (ValueError, IndexError):
            continue  # (a format this does not know: not a mount it could act on)


def mounts(table: str = "/proc/self/mountinfo") -> list[Mount]:
    with open(table, "rb") as f:
        return list(parse(f.read()))


def at(point: Path | str) -> Mount | None:
    """The mount on top at `point` (an absolute path, not resolved: resolving it would stat
    it), or None."""
    wanted = os.path.normpath(point)
    found = None
    for mount in mounts():
        if mount.point == wanted:
            found = mount
    return found


def imagenetfs_mounts(uid: int | None = None) -> list[Mount]:
    """imagenetfs mounts on this node (in this mount namespace) made by `uid` (this user)."""
    uid = os.getuid() if uid is None else uid
    return [m for m in mounts() if m.is_imagenetfs_of(uid)]


def filesystem_of(path: Path) -> Mount | None:
    """The mount holding `path` (resolved: call it on paths outside any FUSE mount only)."""
    real = os.path.realpath(path)
    best: Mount | None = None
    for mount in mounts():
        inside = real == mount.point or real.startswith(mount.point.rstrip("/") + "/")
        if inside and (best is None or len(mount.point) >= len(best.point)):
            best = mount
    return best


def canonical(path: Path) -> Path:
    """`path` made absolute with every symlink resolved -- without stat-ing the path itself
    when it is a mount point (which would ask its daemon): the parent is resolved, and the
    last component followed only while it is a symlink (`readlink` reads the link, not what it
    points to)."""
    path = Path(os.path.abspath(path))
    for _ in range(40):  # (the kernel's own bound on links followed)
        if path.parent == path:
            return path
        path = Path(os.path.realpath(path.parent)) / path.name
        try:
            target = os.readlink(path)
        except OSError:  # not a symlink (EINVAL), or missing
            return path
        path = Path(os.path.normpath(path.parent / target))
    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path))
