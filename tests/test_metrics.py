"""Metrics for the people who run the cluster: `status --json`, `mount --metrics FILE`, and the
read-latency histogram behind both (ops.py, metrics.py).

FUSE-free first: the buckets and percentiles, a worker counting its READs, the text format
read back by Prometheus's own parser. Then real mounts, by worker processes and by pyfuse3
alone: the counters grow with the reads made, the histogram counts every READ the daemon
answered (exactly as many as the read counter), the file is rewritten while mounted and once
more at the end; every counter a daemon keeps reaches both (the workers' read-ahead and pushes
among them, counted on a mount read in image order).

How many READ requests a file costs is the kernel's affair (readahead, request sizes), so the
tests bound it instead of guessing it: on a fresh mount no page is cached, so each file read
costs at least one READ, and a READ brings at least one page, so at most as many as the
files' pages (plus one each, for slack at the end of a file).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import Mounted, Mounter, fuse_unusable, one_error_line, small_source, wait_until
from prometheus_client.parser import text_string_to_metric_families

from imagenetfs import metrics, ops, squashfs, wire
from imagenetfs import protocol as fuse
from imagenetfs.errors import UsageError
from imagenetfs.generate import Spec, generate
from imagenetfs.index import ROOT_INO, Index
from imagenetfs.ops import Core, Counters
from imagenetfs.views.tree import Tree

needs_mksquashfs = pytest.mark.skipif(
    shutil.which("mksquashfs") is None, reason="needs mksquashfs (squashfs-tools)"
)
_unusable = fuse_unusable(("fusermount3", "mksquashfs"), "mounts as root")
needs_fuse = pytest.mark.skipif(_unusable is not None, reason=str(_unusable))

#: Realistic JPEGs (tens to hundreds of KB): several READs a file.
SPEC = Spec(classes=2, train_per_class=6, val_per_class=2, test=2, jobs=2)


# --- without FUSE ---------------------------------------------------------------------------


def test_buckets_and_quantiles() -> None:
    assert ops.bucket_bound(0) == 1024e-9 and ops.bucket_bound(23) == 2**33 / 1e9
    assert ops.bucket_bound(ops.LATENCY_BUCKETS - 1) == float("inf")
    buckets = [0] * ops.LATENCY_BUCKETS
    assert ops.latency_quantile(buckets, 0.5) is None
    buckets[3] = 98  # under 2**13 ns
    buckets[10] = 2  # under 2**20 ns
    assert ops.latency_quantile(buckets, 0.5) == 2**13 / 1e9
    assert ops.latency_quantile(buckets, 0.98) == 2**13 / 1e9
    assert ops.latency_quantile(buckets, 0.99) == 2**20 / 1e9
    buckets[-1] = 1000  # the open bucket: its lower bound
    assert ops.latency_quantile(buckets, 0.99) == 2**33 / 1e9


@needs_mksquashfs
def test_core_counts_reads_into_buckets(tmp_path: Path) -> None:
    small = small_source(tmp_path)
    with Index.open(small.index) as ix:
        core = Core(Tree(ix), uid=0, gid=0, blocking_reads=True)
        now = time.perf_counter_ns()
        core.read_served(now - 5 * 10**9)  # 5 s: bucket 23 (under 2**33 ns)
        core.read_served(now - 20 * 10**9)  # 20 s: the last bucket
        core.read_served(time.perf_counter_ns())
        histogram = core.statistics()["read_latency"]
        buckets = histogram["buckets"]
        assert len(buckets) == ops.LATENCY_BUCKETS and sum(buckets) == 3
        assert buckets[23] == 1 and buckets[24] == 1
        assert 25 * 10**9 <= histogram["sum_ns"] < 26 * 10**9


@needs_mksquashfs
def test_a_worker_times_every_read(tmp_path: Path) -> None:
    small = small_source(tmp_path)
    memory = memoryview(bytearray(8 * Counters.SLOTS)).cast("Q")
    with Index.open(small.index) as ix, tempfile.TemporaryFile() as lock:
        core = Core(Tree(ix), uid=0, gid=0, counters=Counters(memory), blocking_reads=True)
        worker = wire.Worker(core, -1, lock_fd=lock.fileno())
        train = ix.lookup(ROOT_INO, b"train")
        directory = ix.lookup(train.ino, b"n01440764")
        files = [ix.lookup(directory.ino, f"n01440764_{n}.JPEG".encode()) for n in (1, 2, 3)]
        for node in files * 2:
            body = fuse.READ_IN.pack(0, 0, 1 << 17, 0, 0, 0, 0)
            header = fuse.IN_HEADER.pack(
                fuse.IN_HEADER.size + len(body), fuse.READ, 7, node.ino, 0, 0, 0, 0, 0
            )
            reply = worker.handle(memoryview(header + body))
            assert reply is not None and fuse.OUT_HEADER.unpack_from(reply)[1] == 0
        stats = Counters.report(list(memory), cache=False, blocks=True)
        assert stats["fs"]["reads"] == 6 == sum(stats["read_latency"]["buckets"])
        assert stats["read_latency"]["sum_ns"] > 0
        core.refresh()  # (a worker does at its end)
        blocks = Counters.report(list(memory), cache=False, blocks=True)["block_cache"]
        assert blocks["hits"] + blocks["misses"] >= 6, blocks


def test_board_slots_have_cache_lines_of_their_own() -> None:
    board = wire.Board(2)
    assert board.stride % 64 == 0 and board.stride >= 8 * Counters.SLOTS
    board.slot(0)[ops.LATENCY_SUM] = 7  # the last of slot 0, hot on every read
    assert list(board.slot(0, 1)) == [0] * Counters.SLOTS == list(board.slot(1))
    assert len(board.totals()) == Counters.SLOTS and board.totals()[ops.LATENCY_SUM] == 7


def _state(mountpoint: str) -> dict[str, Any]:
    buckets = [0] * ops.LATENCY_BUCKETS
    buckets[5], buckets[9] = 90, 10
    values = [0] * Counters.SLOTS
    values[ops.READS], values[ops.LOOKUPS], values[ops.BYTES_READ] = 100, 7, 123_456
    values[ops.LATENCY_FIRST : ops.LATENCY_SUM] = buckets
    values[ops.LATENCY_SUM] = 4_000_000
    values[ops.CACHE_FIRST] = 3  # resize cache hits
    stats = Counters.report(values, cache=True, blocks=True)
    return {
        "mountpoint": mountpoint,
        "source": "/data/imagenet",
        "index": "/data/imagenet/imagenetfs.lmdb",
        "pid": os.getpid(),
        "started": time.time() - 60,
        "updated": time.time(),
        "workers": 2,
        "workers_running": 2,
        "images": ["/scratch/x/train.squashfs", "/data/imagenet/val.squashfs"],
        "stats": stats,
        "staging": {
            "dir": "/scratch/x",
            "done": False,
            "bytes": 10,
            "total": 30,
            "rate": 5.0,
            "seconds": 2.0,
            "images": [
                {"name": "train.squashfs", "size": 10, "state": "done", "bytes": 10},
                {"name": "val.squashfs", "size": 20, "state": "copying", "bytes": 0},
            ],
        },
    }


def families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(family: Any, suffix: str = "", **labels: str) -> float:
    """The value of the one sample of `family` named `suffix` with `labels` (and others)."""
    found = [
        s.value
        for s in family.samples
        if s.name == family.name + suffix and labels.items() <= s.labels.items()
    ]
    assert len(found) == 1, (suffix, labels, family.samples)
    return float(found[0])


def test_prometheus_text_parses() -> None:
    odd = '/tmp/in "quotes"\\and\nnewline'
    text = metrics.prometheus(_state(odd), serving=True)
    got = families(text)
    requests = got["imagenetfs_requests"]
    assert requests.type == "counter"
    assert {s.labels["mountpoint"] for s in requests.samples} == {odd}
    assert sample(requests, "_total", op="read") == 100
    assert sample(requests, "_total", op="lookup") == 7
    assert sample(got["imagenetfs_read_bytes"], "_total") == 123_456
    assert sample(got["imagenetfs_cache_hits"], "_total", cache="resize") == 3
    assert sample(got["imagenetfs_cache_misses"], "_total", cache="block") == 0
    histogram = got["imagenetfs_read_latency_seconds"]
    assert histogram.type == "histogram"
    assert sample(histogram, "_count") == 100
    assert sample(histogram, "_sum") == pytest.approx(0.004)
    assert sample(histogram, "_bucket", le="+Inf") == 100
    assert sample(histogram, "_bucket", le=str(2**15 / 1e9)) == 90
    cumulative = [s.value for s in histogram.samples if s.name.endswith("_bucket")]
    assert cumulative == sorted(cumulative) and len(cumulative) == ops.LATENCY_BUCKETS
    assert sample(got["imagenetfs_serving"]) == 1
    assert 59 < sample(got["imagenetfs_uptime_seconds"]) < 120
    assert sample(got["imagenetfs_staging_images_local"]) == 1
    assert sample(got["imagenetfs_staging_local_bytes"]) == 10
    images = {s.labels["image"] for s in got["imagenetfs_image_info"].samples}
    assert images == {"/scratch/x/train.squashfs", "/data/imagenet/val.squashfs"}
    ended = families(metrics.prometheus(_state("/m"), serving=False))
    assert sample(ended["imagenetfs_serving"]) == 0


def test_every_counter_reaches_status_json_and_the_metrics() -> None:
    """Each of a daemon's counters (ops.FS_COUNTERS), given a value of its own, shows in
    `status --json` (a key of its own, or `requests`) and as a Prometheus counter: a counter
    added to the daemon and not to metrics.py fails here."""
    values = [0] * Counters.SLOTS
    own = {name: 1_000 + i for i, name in enumerate(ops.FS_COUNTERS)}
    values[: len(own)] = own.values()
    state = {**_state("/m"), "stats": Counters.report(values, cache=False)}
    doc = metrics.summary(state, alive=True, serving=True)
    shown = {name: doc[name] for name in metrics.COUNTERS}
    shown.update({metrics.REQUESTS[kind]: n for kind, n in doc["requests"].items()})
    assert shown == own
    exported = {
        s.value
        for family in families(metrics.prometheus(state, serving=True)).values()
        if family.type == "counter"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert set(own.values()) <= exported, set(own.values()) - exported


def test_summary_of_a_state() -> None:
    doc = metrics.summary(_state("/m"), alive=True, serving=True)
    assert doc["requests"]["read"] == 100 and doc["bytes_read"] == 123_456
    assert doc["read_latency"]["p50_seconds"] == 2**15 / 1e9
    assert doc["read_latency"]["p99_seconds"] == 2**19 / 1e9
    assert doc["read_latency"]["buckets"] == [[2**15 / 1e9, 90], [2**19 / 1e9, 10]]
    assert set(doc["caches"]) == {"block", "resize"} and 59 < doc["uptime_seconds"] < 120
    json.dumps(doc, allow_nan=False)  # plain JSON
    assert metrics.summary({"mountpoint": "/m"}, alive=False, serving=False)["requests"] is None


def test_check_target(tmp_path: Path) -> None:
    assert metrics.check_target(tmp_path / "x.prom") == tmp_path / "x.prom"
    with pytest.raises(UsageError, match="does not exist"):
        metrics.check_target(tmp_path / "nowhere" / "x.prom")
    with pytest.raises(UsageError, match="a directory"):
        metrics.check_target(tmp_path)


def test_write_is_atomic_and_readable_by_others(tmp_path: Path) -> None:
    target = tmp_path / "m.prom"
    old = os.umask(0o077)
    try:
        metrics.write(target, "a 1\n")
        metrics.write(target, "a 2\n")
    finally:
        os.umask(old)
    assert target.read_text() == "a 2\n" and os.listdir(tmp_path) == ["m.prom"]
    assert target.stat().st_mode & 0o777 == 0o644


# --- real mounts ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    generate(out, SPEC)
    return out


def status(mounter: Mounter, mounted: Mounted) -> dict[str, Any]:
    result = mounter.cli("status", "--json", mounted.mp)
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def fresh_status(mounter: Mounter, mounted: Mounted, after: float) -> dict[str, Any]:
    """`status --json` once the daemon has published after `after`."""
    mounted.stats(after=after)
    return status(mounter, mounted)


def read_metrics(path: Path) -> dict[str, Any]:
    return families(path.read_text())


def compressed_files(image: Path) -> int:
    """Files of `image` with some bytes in a compressed block or fragment."""
    with squashfs.SquashImage(image) as squash:
        return sum(
            1
            for entry in squash.walk()
            if entry.extent is not None and squash.locate(entry.extent, 0, entry.size) is None
        )


def read_all(mp: Path) -> tuple[int, int]:
    """Read every train file whole, as `cp` reads (unbuffered: no `isatty` IOCTL, so no
    file is pushed instead of READ); (files, pages) read."""
    files = pages = 0
    for directory, _, names in sorted(os.walk(mp / "train")):
        for name in sorted(names):
            with open(Path(directory, name), "rb", buffering=0) as f:
                data = f.readall()
            files += 1
            pages += -(-len(data) // 4096)
    return files, pages


@needs_fuse
@pytest.mark.timeout(180)
@pytest.mark.parametrize("workers", [2, 0])
def test_status_json_and_metrics_file_count_the_reads(
    mounter: Mounter, data: Path, workers: int
) -> None:
    prom = mounter.work / "inet.prom"
    mounted = mounter.mount(
        mounter.work / "mnt", data, "--workers", workers, "--metrics", prom,
        index=data / "i.lmdb",
    )  # fmt: skip
    before = fresh_status(mounter, mounted, time.time())
    assert before["serving"] is True and before["alive"] is True
    assert before["mountpoint"] == str(mounted.mp) and before["pid"] == mounted.pid
    assert before["source"] == str(data) and before["index"] == str(data / "i.lmdb")
    assert before["workers"] == workers and before["metrics"] == str(prom)
    assert [Path(p).name for p in before["images"]] == [
        "train.squashfs", "val.squashfs", "test.squashfs"
    ]  # fmt: skip
    assert before["staging"] is None and before["uptime_seconds"] > 0
    assert set(before["requests"]) >= {"lookup", "getattr", "readdir", "open", "read", "ioctl"}
    assert before["errors"] == 0 and "block" in before["caches"]

    files, pages = read_all(mounted.mp)
    after = fresh_status(mounter, mounted, time.time())
    reads = after["requests"]["read"] - before["requests"]["read"]
    assert files <= reads <= pages + files, (files, reads, pages)
    assert after["bytes_read"] - before["bytes_read"] >= sum(
        f.stat().st_size for f in (mounted.mp / "train").rglob("*.JPEG")
    )
    assert after["requests"]["lookup"] > before["requests"]["lookup"]
    latency = after["read_latency"]
    assert latency["count"] == after["requests"]["read"]  # (idle now: nothing in flight)
    assert 0 < latency["p50_seconds"] <= latency["p99_seconds"]
    assert latency["sum_seconds"] > 0
    assert after["uptime_seconds"] > before["uptime_seconds"]
    text = mounter.cli("status", mounted.mp).stdout
    assert "read latency p50 <= " in text, text

    # Python's buffered open() asks isatty() (TCGETS) before 3.14; with a buffer size given it
    # does not. The workers count those ioctls; pyfuse3's libfuse refuses them uncounted.
    one = next((mounted.mp / "train").rglob("*.JPEG"))
    with open(one, "rb") as f:
        f.read(1)
    with open(one, "rb", buffering=4096) as f:
        f.read(1)
    isatty = sys.version_info < (3, 14) and workers > 0
    ioctls = fresh_status(mounter, mounted, time.time())["requests"]["ioctl"]
    assert ioctls - after["requests"]["ioctl"] == (1 if isatty else 0)

    def uptime() -> float:
        return sample(read_metrics(prom)["imagenetfs_uptime_seconds"])

    first = uptime()
    assert wait_until(lambda: uptime() > first, 15), "the metrics file is rewritten"
    live = read_metrics(prom)
    assert sample(live["imagenetfs_serving"]) == 1
    assert sample(live["imagenetfs_workers"]) == workers
    assert sample(live["imagenetfs_requests"], "_total", op="read") >= reads
    assert sample(live["imagenetfs_read_latency_seconds"], "_count") >= reads

    result = mounter.cli("umount", mounted.mp)
    assert result.returncode == 0, result.stderr
    final = read_metrics(prom)  # (umount waits for the daemon: the last file is written)
    assert sample(final["imagenetfs_serving"]) == 0
    count = sample(final["imagenetfs_read_latency_seconds"], "_count")
    assert count == sample(final["imagenetfs_requests"], "_total", op="read")
    assert count == sample(final["imagenetfs_read_latency_seconds"], "_bucket", le="+Inf")
    assert count >= after["requests"]["read"]
    assert sample(final["imagenetfs_errors"], "_total") == 0
    block = sample(final["imagenetfs_cache_hits"], "_total", cache="block") + sample(
        final["imagenetfs_cache_misses"], "_total", cache="block"
    )
    # a file whose bytes lie in compressed blocks is read through the block cache, one whose
    # blocks mksquashfs stored as they are (it does so where gzip gains nothing) is not
    assert block >= compressed_files(data / "train.squashfs") > 0
    assert sorted(os.listdir(prom.parent)).count("inet.prom") == 1
    assert not [n for n in os.listdir(prom.parent) if n.endswith(".tmp")]


@pytest.fixture(scope="module")
def in_order(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`-noD -noF` images (files stored as they are read: read ahead and pushed) of realistic
    JPEGs, 24 train files of ~110 KB: far more than the streak read-ahead waits for."""
    out = tmp_path_factory.mktemp("in-order")
    spec = Spec(classes=2, train_per_class=12, val_per_class=3, test=2, jobs=2,
                mksquashfs_args=("-noD", "-noF"), progress=False)  # fmt: skip
    generate(out, spec)
    return out


@needs_fuse
@pytest.mark.timeout(180)
def test_read_ahead_and_pushes_show_in_status_json_and_metrics(
    mounter: Mounter, in_order: Path
) -> None:
    """A reader in image order (every train file, sorted, read as `cp` reads: no IOCTL)
    makes the worker read ahead, and Python's buffered `open()` of cached files (its IOCTL)
    makes it push their bytes: `reads_ahead`, `bytes_ahead`, `files_pushed` and
    `bytes_pushed` rise in `status --json` and plain `status`, and the metrics file carries
    them as `imagenetfs_reads_ahead_total`, `_read_ahead_bytes_total`,
    `_files_pushed_total` and `_pushed_bytes_total`. One worker: the read-ahead follows one
    worker's READs, and with one all of them are its."""
    prom = mounter.work / "inet.prom"
    mounted = mounter.mount(
        mounter.work / "mnt", in_order, "--workers", 1, "--metrics", prom,
        index=in_order / "i.lmdb",
    )  # fmt: skip
    before = fresh_status(mounter, mounted, time.time())
    names = ("reads_ahead", "bytes_ahead", "files_pushed", "bytes_pushed")
    assert all(before[name] == 0 for name in names), before

    train = sorted((mounted.mp / "train").rglob("*.JPEG"))
    for path in train:
        with open(path, "rb", buffering=0) as f:
            while f.read(1 << 20):
                pass
    # the val image's bytes in the page cache, then read as PIL opens a file
    (in_order / "val.squashfs").read_bytes()
    val = sorted((mounted.mp / "val").rglob("*.JPEG"))
    for path in val:
        with open(path, "rb") as f:
            f.read()
    after = fresh_status(mounter, mounted, time.time())
    assert after["reads_ahead"] >= 1 and after["bytes_ahead"] >= after["reads_ahead"], after
    if sys.version_info < (3, 14):  # (3.14's open() asks no isatty(): nothing to push with)
        assert after["files_pushed"] >= 1, after
        assert after["bytes_pushed"] >= after["files_pushed"], after
    assert after["errors"] == 0
    text = mounter.cli("status", mounted.mp).stdout
    assert f"reads_ahead {after['reads_ahead']:,}" in text, text

    result = mounter.cli("umount", mounted.mp)
    assert result.returncode == 0, result.stderr
    final = read_metrics(prom)  # (umount waits for the daemon: the last file is written)
    metric = {
        "reads_ahead": "imagenetfs_reads_ahead",
        "bytes_ahead": "imagenetfs_read_ahead_bytes",
        "files_pushed": "imagenetfs_files_pushed",
        "bytes_pushed": "imagenetfs_pushed_bytes",
    }
    for name, family in metric.items():
        assert final[family].type == "counter"
        assert sample(final[family], "_total") >= after[name], (name, after[name])


@needs_fuse
@pytest.mark.timeout(120)
def test_a_metrics_file_that_cannot_be_written(mounter: Mounter, data: Path) -> None:
    where = mounter.work / "metrics"
    where.mkdir()
    mounted = mounter.mount(
        mounter.work / "mnt", data, "--metrics", where / "inet.prom", index=data / "i.lmdb"
    )
    assert wait_until((where / "inet.prom").exists, 10)
    shutil.rmtree(where)
    assert wait_until(lambda: "not written" in mounted.log, 10), mounted.log
    for _ in range(2):  # two more publishes, which fail too: still one line
        mounted.stats(after=time.time())
    assert mounted.log.count("not written") == 1, mounted.log
    assert (mounted.mp / "train.txt").read_bytes()  # serving
    where.mkdir()
    assert wait_until((where / "inet.prom").exists, 10)
    assert "written again" in mounted.log


@needs_fuse
def test_a_metrics_directory_that_does_not_exist(mounter: Mounter, data: Path) -> None:
    mp = mounter.work / "mnt"
    result = mounter.cli(
        "mount", "--source", data, "--index", data / "i.lmdb",
        "--metrics", mounter.work / "nowhere" / "x.prom", mp,
    )  # fmt: skip
    assert one_error_line(result) == (
        f"imagenetfs: error: --metrics {mounter.work}/nowhere/x.prom: directory "
        f"{mounter.work}/nowhere does not exist; create it, or give --metrics a file in another "
        "directory"
    )
    assert not os.path.ismount(mp)


@needs_fuse
def test_status_json_lists_mounts(mounter: Mounter, data: Path) -> None:
    listed = json.loads(mounter.cli("status", "--json").stdout)
    assert listed == []
    mounted = mounter.mount(mounter.work / "mnt", data, index=data / "i.lmdb")
    listed = json.loads(mounter.cli("status", "--json").stdout)
    assert [doc["mountpoint"] for doc in listed] == [str(mounted.mp)]
    assert listed[0]["metrics"] is None
    missing = mounter.cli("status", "--json", mounter.work / "elsewhere")
    assert missing.returncode == 1 and "not mounted by imagenetfs" in missing.stderr
