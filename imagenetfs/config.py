"""The settings of one mount: decided once, by the CLI, and handed frozen to whichever way of
serving runs it (pyfuse3 alone, or worker processes). The worker count's default lives here."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagenetfs.errors import UsageError
from imagenetfs.staging import DEFAULT_KEEP_FREE, KeepFree
from imagenetfs.views.resize import DEFAULT_QUALITY, ResizeSpec
from imagenetfs.views.tree import ShardSettings

MAX_WORKERS = 64
DEFAULT_CACHE_SIZE = 10 << 30


def default_workers() -> int:
    """Worker processes of a mount: one per CPU this process may use (a job's cpuset), at least
    2 so that one slow request (a resize, a cold read) never holds up the rest, at most 8."""
    return max(2, min(8, len(os.sched_getaffinity(0))))


def workers_setting(given: int | None) -> int:
    """`--workers`, else `$IMAGENETFS_WORKERS`, else `default_workers()`; 0..MAX_WORKERS."""
    if given is not None:
        if not 0 <= given <= MAX_WORKERS:
            raise UsageError(f"--workers {given}: give 0 to {MAX_WORKERS} processes")
        return given
    env = os.environ.get("IMAGENETFS_WORKERS", "").strip()
    if not env:
        return default_workers()
    if not env.isdigit() or int(env) > MAX_WORKERS:
        raise UsageError(f"IMAGENETFS_WORKERS={env!r}: give 0 to {MAX_WORKERS} processes")
    return int(env)


_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, option: str) -> float:
    """A duration: seconds, or a number with s, m, h or d (`90`, `90s`, `10m`, `2h`)."""
    value = text.strip().lower()
    unit = value[-1:] if value[-1:] in _SECONDS else "s"
    number = value.removesuffix(unit) if value[-1:] in _SECONDS else value
    try:
        seconds = float(number) * _SECONDS[unit]
    except ValueError:
        raise UsageError(f"{option} {text!r}: give a duration, e.g. 90s, 10m, 2h") from None
    if not 1 <= seconds <= 365 * 86400:
        raise UsageError(f"{option} {text!r}: give 1 second to 365 days")
    return seconds


@dataclass(frozen=True)
class ServeConfig:
    """Everything a mount's daemon needs to serve, fixed at mount time."""

    mountpoint: Path  # absolute
    source: Path
    index: Path
    images: tuple[str, ...]  # the source's images (relative names): the index must have these
    workers: int  # wire-protocol worker processes; 0: pyfuse3 serves alone
    foreground: bool = False
    allow_other: bool = False
    read_threads: int = 8  # pyfuse3 alone: threads for blocking reads and resizes
    resize: tuple[ResizeSpec, ...] = ()
    resize_quality: int = DEFAULT_QUALITY
    cache_dir: Path | None = None  # None: no persistent resize cache
    cache_size: int = DEFAULT_CACHE_SIZE
    stage_dir: Path | None = None  # copy the images there and serve the copies (staging.py)
    stage_rate: int = 0  # bytes/s the copying may read; 0: as fast as it goes
    stage_keep_free: KeepFree = DEFAULT_KEEP_FREE  # what must stay free after a copy
    metrics: Path | None = None  # write the counters there, Prometheus text (metrics.py)
    idle_timeout: float = 0.0  # unmount after this many seconds without a request; 0: never
    shards: ShardSettings | None = None  # serve shards/ (views/shards.py); None: not

    @property
    def cache(self) -> tuple[Path, int] | None:
        """(directory, size) of the resize cache, when one is used at all."""
        if not self.resize or self.cache_dir is None:
            return None
        return self.cache_dir, self.cache_size

    def settings(self) -> dict[str, Any]:
        """What the registry records (`imagenetfs warm MOUNTPOINT` resizes the same way)."""
        return {
            "workers": self.workers,
            "resize": [spec.name for spec in self.resize],
            "resize_quality": self.resize_quality,
            "cache_dir": None if self.cache_dir is None else str(self.cache_dir.absolute()),
            "cache_size": self.cache_size,
            "stage_dir": None if self.stage_dir is None else str(self.stage_dir),
            "stage_rate": self.stage_rate,
            "stage_keep_free": str(self.stage_keep_free),
            "metrics": None if self.metrics is None else str(self.metrics),
            "idle_timeout": self.idle_timeout,
        }
