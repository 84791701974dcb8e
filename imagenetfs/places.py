"""Where imagenetfs writes, decided in one place.

- Per node and user: the mount registry (state, users, locks, logs of mounts; a few KB per
  mount) in `state_dir()` -- `$IMAGENETFS_STATE_DIR`, else `/tmp/imagenetfs-<uid>/mounts`
  (registry.py says why not the home directory or `$XDG_RUNTIME_DIR`). `/tmp/imagenetfs-<uid>`
  also holds staged copies when `--stage` is given /tmp.
- Per job: inside a Slurm job with a scratch directory (`job_scratch()`: `$SLURM_TMPDIR`, else
  `$TMPDIR` when `$SLURM_JOB_ID` is set), the resize cache (bounded by `--cache-size`) and
  staged copies (`--stage`, the images' size) default there: the node's own disk, not a home
  directory that every node shares, on a small quota.
- Per user: `user_cache_dir()` (`$XDG_CACHE_HOME/imagenetfs`, else `~/.cache/imagenetfs`):
  an index built for a source with none beside it (~200 bytes per file), the built-in sample
  (a few MB) and, outside a job, the resize cache. Every node may share it: what is written
  there is written atomically (a temporary file named after the node and process, renamed).
"""

from __future__ import annotations

import os
from pathlib import Path

from imagenetfs import nodeid


def state_dir() -> Path:
    explicit = os.environ.get("IMAGENETFS_STATE_DIR")
    if explicit:
        return Path(explicit).absolute()
    return Path(f"/tmp/imagenetfs-{os.getuid()}/mounts")


def job_scratch() -> Path | None:
    """The running Slurm job's node-local scratch directory, if it has one."""
    if os.environ.get("SLURM_TMPDIR"):
        return Path(os.environ["SLURM_TMPDIR"])
    if os.environ.get("SLURM_JOB_ID") and os.environ.get("TMPDIR"):
        return Path(os.environ["TMPDIR"])
    return None


def user_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imagenetfs"


def temporary_name(path: Path) -> Path:
    """A name beside `path` for writing it before the rename: unique across the nodes that may
    share `path`'s directory (pids repeat from node to node: nodeid.py)."""
    return path.with_name(f"{path.name}.tmp-{nodeid.suffix()}")
