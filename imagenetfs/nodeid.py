"""Which machine wrote a file, and whether the process that wrote it still runs there.

Files that `pack` and `index` write on their way (`.train.squashfs.part-...`,
`imagenetfs.lmdb.tmp-...`, pack's lock) often sit on a filesystem that several nodes share
(NFS, Lustre). A process id means something only on the kernel that gave it: pid 4242 on node A
says nothing about node B. So these names carry the *node* -- the host name and the kernel's
boot id (`/proc/sys/kernel/random/boot_id`, new at every boot) -- and a process is judged gone
only on its own node. A file of another node, or of this host before it rebooted (another boot
id: its writer is surely gone, but a host name alone may be shared by containers on different
machines), is never judged stale here.

Names: `<pid>-<boot id, 32 hex digits>-<host>` (`suffix()`, parsed back by `parse()`).
"""

from __future__ import annotations

import functools
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_SUFFIX = re.compile(r"(?P<pid>\d+)-(?P<boot>[0-9a-f]{32})-(?P<host>[A-Za-z0-9._-]+)")


@dataclass(frozen=True)
class Node:
    host: str
    boot: str  # the boot id without its dashes

    def __str__(self) -> str:
        return self.host


@functools.cache
def here() -> Node:
    """This node: its host name (characters a file name keeps) and this boot's id."""
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "localhost"
    try:
        boot = BOOT_ID.read_text().strip().replace("-", "").lower()
    except OSError:  # (no /proc: every file is this node's only if pid and host agree)
        boot = ""
    return Node(host, boot if re.fullmatch(r"[0-9a-f]{32}", boot) else "0" * 32)


def suffix(pid: int | None = None) -> str:
    """`<pid>-<boot>-<host>` of this process (or of `pid` on this node)."""
    node = here()
    return f"{os.getpid() if pid is None else pid}-{node.boot}-{node.host}"


def parse(text: str) -> tuple[int, Node] | None:
    """(pid, node) of a `suffix()`, or None when `text` is not one."""
    found = _SUFFIX.fullmatch(text)
    if found is None:
        return None
    return int(found["pid"]), Node(found["host"], found["boot"])


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of process `pid` of this node, from
    /proc; None when there is no such process or its entry cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])  # fields 3 and 22 of proc(5)
    except (OSError, IndexError, ValueError):
        return None


def start_time(pid: int) -> int | None:
    """When process `pid` of this node started, None if it is not running (or unreadable).
    With the boot id, (pid, start time) names one process for good: a pid used again later
    has another start time."""
    found = _stat(pid)
    return None if found is None or found[0] in ("Z", "X") else found[1]


def running_here(pid: int, node: Node, started: int | None = None) -> bool:
    """Whether process `pid` of `node` (started at `started`, when known) may still run. Only
    this node can tell: for another node (or this host before a reboot) the answer is yes."""
    if node != here():
        return True
    if pid <= 0:
        return False
    found = _stat(pid)
    if found is None:  # gone, or hidden from us (another user's, /proc mounted hidepid)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state, now = found
    if state in ("Z", "X"):  # a zombie has finished
        return False
    return started is None or now == started
