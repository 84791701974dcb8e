"""The mount registry: one JSON state file per mount, read by `status`, `umount` and `warm`.

`$XDG_RUNTIME_DIR/imagenetfs/<hash of the mount point>.json` (else the user's cache dir) holds
the mount point, source, index, the daemon's pid, when it started, its settings (workers,
resized views, the resize cache's directory, size and quality) and, refreshed every few
seconds, its counters. Written atomically (a temporary file renamed over it); the daemon's log
is beside it (`<hash>.log`). A state file whose daemon is gone -- no pid in it, or a pid that
is not running -- is dead: its mount, if any, is stale.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

State = dict[str, Any]


def state_dir() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        return Path(runtime) / "imagenetfs"
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(cache) / "imagenetfs" / "mounts"


def state_file(mountpoint: Path) -> Path:
    key = hashlib.blake2b(str(mountpoint.resolve()).encode(), digest_size=8).hexdigest()
    return state_dir() / f"{key}.json"


def log_file(mountpoint: Path) -> Path:
    return state_file(mountpoint).with_suffix(".log")


def write_state(path: Path, state: State) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)


def read_states() -> Iterator[State]:
    directory = state_dir()
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            state = json.loads(path.read_text())
            if isinstance(state, dict):
                state["state_file"] = str(path)
                yield state


def find_state(mountpoint: Path) -> State | None:
    """The state of the mount at `mountpoint` (as given: absolute), if there is one."""
    wanted = str(mountpoint.absolute())
    return next((s for s in read_states() if s.get("mountpoint") == wanted), None)


def pid_alive(pid: int) -> bool:
    """A running process (not a zombie); `pid` must be positive."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    with contextlib.suppress(OSError, IndexError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].startswith("Z"):
            return False
    return True


def is_alive(state: State) -> bool:
    """Its daemon runs: the state names a pid, and that process is running."""
    pid = state.get("pid")
    return isinstance(pid, int) and pid_alive(pid)
