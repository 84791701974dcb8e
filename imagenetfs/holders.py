"""Who uses a mount: a process with an open file, its working directory, its root or a mapping
on the mount -- found in /proc by the mount's device, never by path.

`--idle-timeout` asks this before it unmounts (supervisor.py). Paths cannot answer it: the
kernel shows a process's directory and files by their resolved path (not the one the mount
was given, which may pass through a symlink), and a process in another mount namespace -- a
container that bound the mount in, as Apptainer does -- by a path of that namespace. A device
is the same everywhere: every mount of the filesystem, bind or not, in any namespace, is of
its one superblock. So, for each process (stopping at the first user found):

- `/proc/PID/maps` gives each mapping's device (major:minor, in hex);
- `/proc/PID/fdinfo/N` gives each open file's mount (`mnt_id`, unique across namespaces), and
  the process's `/proc/PID/mountinfo` that mount's device (decimal) -- read once per scan for
  each namespace met (the first unknown `mnt_id` brings its namespace's mounts in);
- the working directory and the root are opened here with `O_PATH` through `/proc/PID/cwd`
  and `/proc/PID/root` (nothing of the file is opened: no request) and this process's fdinfo
  of that descriptor gives their `mnt_id`.

Nothing here stats a file. A stat of a file on our own mount is a request to ourselves (seen
as activity, and with `--workers 0` served by the daemon's own event loop); a stat of a file
on a stalled filesystem elsewhere (NFS, Lustre) could hang the scan. These /proc fields touch
neither. Descriptors whose link names no file (sockets, pipes, anonymous inodes) are skipped
by their link text. Processes of other users are skipped by the owner of `/proc/PID` (they
cannot reach a mount without `allow_other`), and any process this one may not inspect (not
dumpable, or another user's) is not seen.
"""

from __future__ import annotations

import os
from pathlib import Path

from imagenetfs import mountinfo

#: Link texts of descriptors that are no file of any mount we serve.
NOT_FILES = ("socket:", "pipe:", "anon_inode:")


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _mnt_id(fdinfo: str) -> int:
    return int(_read(fdinfo).split(b"mnt_id:", 1)[1].split(b"\n", 1)[0])


def device_of(mountpoint: Path) -> str | None:
    """The device ("major:minor") of what is mounted at `mountpoint` -- the resolved path, as
    /proc/self/mountinfo lists it; the topmost of several mounts there -- or None."""
    found = mountinfo.at(mountpoint)
    return found.device if found is not None else None


class Scan:
    """One look over /proc for a process that uses the filesystem on `device` ("major:minor").
    `uid`: only that user's processes (None: everyone's); `skip`: pids not to look at."""

    def __init__(self, device: str, uid: int | None, skip: frozenset[int]) -> None:
        major, minor = (int(n) for n in device.split(":"))
        self.device = device
        self.uid = uid
        self.skip = skip
        self._in_maps = b" %02x:%02x " % (major, minor)
        self._ours: dict[int, bool] = {}  # mnt_id -> on our device (ids are system-wide)
        self._learn("/proc/self/mountinfo")
        self.processes = 0  # looked at, for the log and the measurements

    def holder(self) -> int | None:
        """The pid of a process that uses the mount, or None."""
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) in self.skip:
                continue
            try:
                if self.uid is not None and entry.stat().st_uid != self.uid:
                    continue
                self.processes += 1
                if self._uses(entry.path):
                    return int(entry.name)
            except (OSError, ValueError, IndexError):  # gone meanwhile, or not ours to read
                continue
        return None

    def _uses(self, proc: str) -> bool:
        return (
            self._at(proc, "cwd")
            or self._files(proc)
            or self._mapped(proc)
            or self._at(proc, "root")
        )

    def _at(self, proc: str, link: str) -> bool:
        """The process's working directory or root (`link`) is on the mount."""
        fd = os.open(f"{proc}/{link}", os.O_PATH | os.O_CLOEXEC)
        try:
            return self._is_ours(_mnt_id(f"/proc/self/fdinfo/{fd}"), proc)
        finally:
            os.close(fd)

    def _files(self, proc: str) -> bool:
        for fd in os.listdir(f"{proc}/fd"):
            try:
                if os.readlink(f"{proc}/fd/{fd}").startswith(NOT_FILES):
                    continue
                if self._is_ours(_mnt_id(f"{proc}/fdinfo/{fd}"), proc):
                    return True
            except FileNotFoundError:  # closed meanwhile
                continue
        return False

    def _mapped(self, proc: str) -> bool:
        maps = _read(f"{proc}/maps")
        if self._in_maps not in maps:
            return False
        # (a file name may hold the same text: the device is the fourth field)
        return any(
            line.split(maxsplit=4)[3] == self._in_maps.strip()
            for line in maps.splitlines()
            if self._in_maps in line
        )

    def _is_ours(self, mnt_id: int, proc: str) -> bool:
        if mnt_id not in self._ours:  # a mount of another namespace: learn them all
            self._learn(f"{proc}/mountinfo")
        return self._ours.get(mnt_id, False)

    def _learn(self, table: str) -> None:
        for mount in mountinfo.parse(_read(table)):
            self._ours[mount.id] = mount.device == self.device


def holder(device: str, uid: int | None, skip: frozenset[int] = frozenset()) -> int | None:
    """A process that uses the filesystem on `device` (see `Scan`), or None."""
    return Scan(device, uid, skip).holder()
