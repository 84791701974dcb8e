"""What a mount tells the people who run the cluster: `status --json` and `mount --metrics FILE`.

Both are views of one thing, the mount's state in the registry (registry.py): the settings
recorded at mount time and what the daemon publishes every `supervisor.PUBLISH_INTERVAL`
seconds -- the images served, the staging progress and the counters of ops.py, summed over the
worker processes, read-latency histogram included.

- `summary(state, ...)` is one mount as `imagenetfs status --json` prints it: requests by kind,
  every other counter of ops.FS_COUNTERS (`COUNTERS`: bytes, errors, the workers' spliced, cold
  and read-ahead reads, their pushes ...), the caches' hits and misses, and the read latency's
  p50 and p99 in seconds --
  each the upper bound of the power-of-two bucket that holds it (`ops.latency_quantile`).
- `prometheus(state, ...)` is the same in the Prometheus text exposition format (version
  0.0.4), as node_exporter's textfile collector reads it: every sample labelled with the mount
  point, counters as `*_total`, the latency as a histogram with cumulative `le` buckets in
  seconds. `write` puts it in place atomically (a hidden temporary file in the same directory,
  renamed over the old one), mode 0644 so that an exporter running as another user may read it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from imagenetfs import __version__, ops, paths
from imagenetfs.errors import UsageError

#: The kinds of requests counted, as `status --json` and the metrics name them, and the
#: counter (ops.FS_COUNTERS) of each.
REQUESTS = {
    "lookup": "lookups",
    "getattr": "getattrs",
    "readdir": "readdirs",
    "open": "opens",
    "read": "reads",
    "ioctl": "ioctls",
}
#: Every other counter (ops.FS_COUNTERS), as `status --json` names it (a key of its own):
#: (the metric that carries it, `imagenetfs_<name>_total`, and the metric's help).
COUNTERS = {
    "inline_reads": ("inline_reads", "Reads served at once from the page cache (pyfuse3)."),
    "reads_spliced": ("reads_spliced", "Reads spliced from the image file, never copied."),
    "reads_cold": ("reads_cold", "Reads of bytes not in the page cache, sent by a thread."),
    "reads_ahead": (
        "reads_ahead",
        "Requests to the kernel to read an image ahead of a reader in its order (workers).",
    ),
    "bytes_ahead": ("read_ahead_bytes", "Bytes of images asked to be read ahead (workers)."),
    "files_pushed": (
        "files_pushed",
        "Files whose bytes went to the kernel's page cache with their IOCTL, before any READ "
        "(workers).",
    ),
    "bytes_pushed": ("pushed_bytes", "Bytes of the files pushed (in read_bytes too)."),
    "bytes_read": ("read_bytes", "Bytes of file data served."),
    "errors": ("errors", "Requests that failed (answered EIO, logged)."),
    "resizes": ("resizes", "Files resized (not found in the resize cache)."),
}


def check_target(path: Path) -> Path:
    """`mount --metrics FILE`, refused at mount time when it cannot be written (its directory
    missing, not writable or full, or FILE a directory); absolute."""
    path = path.absolute()
    if path.is_dir():
        raise UsageError(f"--metrics {path}: a directory; give a file, e.g. {path}/inet.prom")
    if not path.parent.exists():  # (not created: a typo in a collector's directory, surely)
        raise UsageError(
            f"--metrics {path}: directory {path.parent} does not exist; create it, or give "
            "--metrics a file in another directory"
        )
    return paths.output_file(path, "--metrics")


# --- status --json ---------------------------------------------------------------------------


def latency(stats: dict[str, Any]) -> dict[str, Any] | None:
    """The read latency of published counters: count, sum, p50, p99 (seconds), the buckets."""
    histogram = stats.get("read_latency")
    if not histogram:
        return None
    buckets = list(histogram["buckets"])
    return {
        "count": sum(buckets),
        "sum_seconds": histogram["sum_ns"] / 1e9,
        "p50_seconds": ops.latency_quantile(buckets, 0.5),
        "p99_seconds": ops.latency_quantile(buckets, 0.99),
        # [upper bound in seconds (None: no bound), reads], the buckets that hold any
        "buckets": [[_finite(ops.bucket_bound(k)), n] for k, n in enumerate(buckets) if n],
    }


def summary(
    state: dict[str, Any], *, alive: bool, serving: bool, now: float | None = None
) -> dict[str, Any]:
    """One mount as `imagenetfs status --json` shows it (docs/metrics.md)."""
    now = time.time() if now is None else now
    stats: dict[str, Any] = state.get("stats") or {}
    fs: dict[str, int] = stats.get("fs") or {}
    started = state.get("started")
    caches = {}
    if "block_cache" in stats:
        caches["block"] = stats["block_cache"]
    if "resize_cache" in stats:
        caches["resize"] = stats["resize_cache"]
    return {
        "mountpoint": state.get("mountpoint"),
        "serving": serving,
        "alive": alive,
        "pid": state.get("pid"),
        "source": state.get("source"),
        "index": state.get("index"),
        "started": started,
        "updated": state.get("updated"),
        "uptime_seconds": now - started if alive and isinstance(started, int | float) else None,
        "workers": state.get("workers"),
        "workers_running": state.get("workers_running"),
        "resize": state.get("resize", []),
        "metrics": state.get("metrics"),
        "images": state.get("images", []),
        "staging": state.get("staging"),
        "requests": {kind: fs.get(name, 0) for kind, name in REQUESTS.items()} if fs else None,
        **{name: fs.get(name) for name in COUNTERS},  # (None: not in an older daemon's)
        "caches": caches,
        "read_latency": latency(stats),
        "index_stats": stats.get("index"),
    }


def _finite(value: float) -> float | None:
    return None if value == float("inf") else value


# --- the Prometheus text format ----------------------------------------------------------------


class _Exposition:
    """Families of samples in the text format, each sample labelled with the mount point."""

    def __init__(self, mountpoint: str) -> None:
        self.mountpoint = mountpoint
        self.lines: list[str] = []

    def family(
        self,
        name: str,
        kind: str,
        help_text: str,
        samples: Iterable[tuple[str, dict[str, str], float]],
    ) -> None:
        """`samples`: (name suffix, extra labels, value)."""
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for suffix, labels, value in samples:
            pairs = {"mountpoint": self.mountpoint, **labels}
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs.items())
            self.lines.append(f"{name}{suffix}{{{text}}} {_number(value)}")

    def one(self, name: str, kind: str, help_text: str, value: float) -> None:
        self.family(name, kind, help_text, [("", {}, value)])

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    if isinstance(value, int) or (value == int(value) and abs(value) < 1e15):
        return str(int(value))
    return repr(float(value))


def prometheus(state: dict[str, Any], *, serving: bool, now: float | None = None) -> str:
    """The mount's metrics in the text exposition format (see the module docstring)."""
    now = time.time() if now is None else now
    stats: dict[str, Any] = state.get("stats") or {}
    fs: dict[str, int] = stats.get("fs") or {}
    started = float(state.get("started") or now)
    out = _Exposition(str(state.get("mountpoint")))
    info = {"source": str(state.get("source")), "index": str(state.get("index"))}
    out.family(
        "imagenetfs_info",
        "gauge",
        "The mount's source and index (always 1).",
        [("", {**info, "version": __version__}, 1)],
    )
    gauges = [
        ("serving", "1 while the daemon serves; 0 once it has ended.", int(serving)),
        ("start_time_seconds", "When the mount was made (Unix time).", started),
        ("uptime_seconds", "Seconds since the mount was made.", max(now - started, 0.0)),
        ("workers", "Worker processes (0: pyfuse3 serves alone).", state.get("workers") or 0),
        ("workers_running", "Worker processes running.", state.get("workers_running") or 0),
    ]
    for name, help_text, value in gauges:
        out.one(f"imagenetfs_{name}", "gauge", help_text, value)
    out.family(
        "imagenetfs_image_info",
        "gauge",
        "The file each image is served from (always 1).",
        [("", {"image": str(path)}, 1) for path in state.get("images", [])],
    )
    out.family(
        "imagenetfs_requests_total",
        "counter",
        "FUSE requests answered, by operation.",
        [("", {"op": kind}, fs.get(name, 0)) for kind, name in REQUESTS.items()],
    )
    for counter, (name, help_text) in COUNTERS.items():
        out.one(f"imagenetfs_{name}_total", "counter", help_text, fs.get(counter, 0))
    caches = [(c, stats.get(k)) for c, k in (("block", "block_cache"), ("resize", "resize_cache"))]
    for result in ("hits", "misses"):
        out.family(
            f"imagenetfs_cache_{result}_total",
            "counter",
            f"Cache {result}: block = decompressed image blocks, resize = resized files.",
            [("", {"cache": cache}, counts[result]) for cache, counts in caches if counts],
        )
    for event in ("stores", "evictions", "failures") if "resize_cache" in stats else ():
        out.one(
            f"imagenetfs_resize_cache_{event}_total",
            "counter",
            f"Resize cache {event}.",
            stats["resize_cache"][event],
        )
    if "read_latency" in stats:
        out.family(
            "imagenetfs_read_latency_seconds",
            "histogram",
            "Time to serve one READ request, from its handler's start to its bytes being "
            "ready (blocking work included).",
            _histogram(stats["read_latency"]),
        )
    if state.get("staging"):
        for name, help_text, value in _staging(state["staging"]):
            out.one(f"imagenetfs_staging_{name}", "gauge", help_text, value)
    return out.text()


def _histogram(histogram: dict[str, Any]) -> list[tuple[str, dict[str, str], float]]:
    samples: list[tuple[str, dict[str, str], float]] = []
    cumulative = 0
    for k, count in enumerate(histogram["buckets"]):
        cumulative += count
        samples.append(("_bucket", {"le": _number(ops.bucket_bound(k))}, cumulative))
    samples.append(("_sum", {}, histogram["sum_ns"] / 1e9))
    samples.append(("_count", {}, cumulative))
    return samples


def _staging(report: dict[str, Any]) -> list[tuple[str, str, float]]:
    images = report.get("images", [])
    return [
        ("images", "Images to stage.", len(images)),
        (
            "images_local",
            "Images served from local disk.",
            sum(p["state"] in ("done", "reused") for p in images),
        ),
        ("images_failed", "Images not staged.", sum(p["state"] == "failed" for p in images)),
        ("bytes", "Bytes of the images to stage.", report["total"]),
        ("local_bytes", "Bytes of the images on local disk so far.", report["bytes"]),
        ("rate_bytes_per_second", "Copying rate, while copying.", report["rate"]),
        ("done", "1 once staging has ended.", int(bool(report["done"]))),
    ]


def write(path: Path, text: str) -> None:
    """Put `text` at `path` atomically: a hidden temporary file beside it (not `*.prom`, so a
    textfile collector never reads it half written), renamed over it; mode 0644."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # (whatever the umask: an exporter runs as another user)
            f.write(text.encode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
