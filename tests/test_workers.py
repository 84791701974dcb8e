"""`mount --workers N`: wire-protocol worker processes serve the same tree, byte for byte.

Workers are the default way to serve, so the rest of the suite runs them too; here: an
explicit count, a killed worker, SIGTERM. (tests/test_mount.py's read-only tests also run
against `--workers 0`, pyfuse3 alone.)
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import (
    LONGEST_TARGET,
    Mounted,
    Mounter,
    alive,
    children,
    evict,
    is_mounted,
    official_with_long_links,
    reference_tree,
    wait_until,
)

from imagenetfs import generate, index, registry, source
from imagenetfs.generate import Spec

SPEC = Spec(classes=4, train_per_class=30, val_per_class=5, test=10, tiny=True)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, Mounted]]:
    data = tmp_path_factory.mktemp("data")
    generate.generate(data, SPEC)
    extracted = reference_tree(data, tmp_path_factory.mktemp("x") / "tree").root
    mounter = Mounter(tmp_path_factory.mktemp("work"))
    try:
        mounted = mounter.mount(mounter.work / "mnt", data, "--workers", "2", index=data / "i.lmdb")
        yield data, extracted, mounted
    finally:
        mounter.cleanup()


@pytest.mark.timeout(120)
def test_workers_serve_the_tree(served: tuple[Path, Path, Mounted]) -> None:
    _, extracted, mounted = served
    mp = mounted.mp
    expected = {  # (unsquashfs, val regrouped: helpers.reference_tree)
        p.relative_to(extracted).as_posix(): p.read_bytes()
        for p in extracted.rglob("*")
        if p.is_file()
    }
    served_files = {
        os.path.relpath(os.path.join(d, f), mp)
        for split in ("train", "val", "test")
        for d, _, fs in os.walk(mp / split)
        for f in fs
    }
    assert served_files == set(expected)
    rng = random.Random(1)
    for rel in rng.sample(sorted(expected), len(expected)):
        path, data = mp / rel, expected[rel]
        assert path.stat().st_size == len(data)
        with open(path, "rb") as f:
            offset = rng.randrange(len(data))
            assert os.pread(f.fileno(), 500, offset) == data[offset : offset + 500]
            assert f.read() == data
    with os.scandir(mp) as it:
        kinds = {e.name: e.is_dir(follow_symlinks=False) for e in it}
    assert kinds["train"] and not kinds["meta.bin"]
    assert os.statvfs(mp).f_files > len(expected)
    with pytest.raises(OSError) as info, open(mp / "train.txt", "r+b"):
        pass
    assert info.value.errno == 30  # EROFS


@pytest.mark.timeout(120)
def test_a_killed_worker_is_replaced(served: tuple[Path, Path, Mounted]) -> None:
    _, _, mounted = served
    before = children(mounted.pid)
    assert len(before) == 2
    os.kill(before[0], signal.SIGKILL)

    def replaced() -> bool:
        # one listing: asked twice (its length, then whether the killed one is in it), a
        # worker killed and reaped before its successor was forked passed as replaced
        now = children(mounted.pid)
        return len(now) == 2 and before[0] not in now

    assert wait_until(replaced, 20), children(mounted.pid)
    assert (mounted.mp / "train.txt").read_bytes().count(b"\n") == 4 * 30


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name
)
def test_sigterm_ends_workers_and_unmounts(
    mounter: Mounter, served: tuple[Path, Path, Mounted], signum: signal.Signals
) -> None:
    """SIGTERM, SIGINT or SIGHUP to the daemon ends every worker and unmounts (workers ignore
    SIGINT and SIGHUP themselves: the daemon decides)."""
    data, _, _ = served
    mp = mounter.mkdir(f"m2-{signum}")
    mounted = mounter.mount(mp, data, "--workers", "2", index=data / "i.lmdb")
    workers = children(mounted.pid)
    assert len(workers) == 2
    os.kill(mounted.pid, signum)
    assert wait_until(lambda: not alive(mounted.pid), 20), (
        registry.process_state(mounted.pid), [(w, alive(w)) for w in workers], mounted.log,
    )  # fmt: skip
    assert not any(alive(w) for w in workers)
    assert not is_mounted(mounted.mp)
    log = mounted.log
    assert f"{signal.Signals(signum).name}: unmounting" in log and "Traceback" not in log, log


# --- faults: a reply the kernel refuses, a worker that keeps crashing -----------------------


@pytest.mark.timeout(180)
@pytest.mark.parametrize("workers", ["2", "0"])
def test_a_reply_the_kernel_refuses_fails_that_request_only(
    mounter: Mounter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    """An official val tar with a symlink to 4,096 bytes, in an index built before such
    targets were left out: the kernel refuses every READLINK reply for it (pyfuse3 does not
    send it). Each readlink fails with EIO, said in one log line naming the inode and counted;
    every other file reads byte for byte, again and again; no worker ends."""
    data = tmp_path / "data"
    official_with_long_links(data)
    monkeypatch.setattr(index, "MAX_TARGET", 4096, raising=False)  # (an older index's rule)
    src = source.open_source(data)
    index.build(data / "i.lmdb", src.image_list, src.placer(), source=str(data),
                virtual=src.virtual_files, progress=False)  # fmt: skip
    mounted = mounter.mount(mounter.mkdir("mnt"), data, "--workers", workers,
                            index=data / "i.lmdb")  # fmt: skip
    before = children(mounted.pid)
    assert len(before) == int(workers)
    link = mounted.mp / "val" / "long-link"
    assert link.lstat().st_size == 4096
    expected = reference_tree(data, tmp_path / "reference", exclude=["long-link"]).files
    for _ in range(20):
        for _ in range(5):
            with pytest.raises(OSError) as info:
                os.readlink(link)
            assert info.value.errno == errno.EIO
        for rel, body in expected.items():
            assert (mounted.mp / rel).read_bytes() == body, rel
    assert os.readlink(mounted.mp / "val" / "kept-link") == LONGEST_TARGET
    assert children(mounted.pid) == before and is_mounted(mounted.mp)
    log = mounted.log
    assert "ended" not in log and "keep failing" not in log and "Traceback" not in log, log
    said = [ln for ln in log.splitlines() if "a reply of 4112 bytes" in ln]
    assert len(said) == 100 and all(ln.startswith("imagenetfs: readlink(") for ln in said), log
    assert mounted.stats(after=time.time())["fs"]["errors"] == 100


def kill_a_worker(mounted: Mounted) -> None:
    """SIGKILL one worker of `mounted`; wait until the daemon has replaced it (or ended)."""
    before = children(mounted.pid)
    assert len(before) == 2, before
    os.kill(before[0], signal.SIGKILL)

    def reacted() -> bool:
        now = children(mounted.pid)
        return (len(now) == 2 and before[0] not in now) or not alive(mounted.pid)

    assert wait_until(reacted, 20), children(mounted.pid)


#: The crash-loop rule as documented: more than three unexpected exits within 10 s.
CRASH_DEATHS, CRASH_WINDOW = 3, 10.0


@pytest.mark.timeout(120)
def test_workers_that_keep_crashing_unmount(
    mounter: Mounter, served: tuple[Path, Path, Mounted]
) -> None:
    """A worker that really dies is started again -- but more than three deaths within 10 s
    are a crash loop: the daemon unmounts rather than fail every request. A death older than
    10 s no longer counts: one, then (10 s later) three in a row, keep the mount serving; the
    next one ends it, the log saying so once, and the mount point is empty."""
    data, extracted, _ = served
    mounted = mounter.mount(mounter.mkdir("m3"), data, "--workers", "2", index=data / "i.lmdb")
    probe = next(p for p in sorted((mounted.mp / "test").iterdir()))
    expected = (extracted / "test" / probe.name).read_bytes()
    kill_a_worker(mounted)
    first_counted = time.monotonic()  # (the daemon counted that death before this)
    # waiting out the window is what this case is about: nothing else can say it is over
    time.sleep(max(0.0, first_counted + CRASH_WINDOW + 0.5 - time.monotonic()))
    for _ in range(CRASH_DEATHS):
        kill_a_worker(mounted)
        assert alive(mounted.pid) and is_mounted(mounted.mp), mounted.log
        evict(probe)
        assert probe.read_bytes() == expected
    kill_a_worker(mounted)  # the fourth death within 10 s
    assert wait_until(lambda: not alive(mounted.pid), 20), mounted.log
    assert not is_mounted(mounted.mp) and os.listdir(mounted.mp) == []
    assert not mounted.state_path.exists()
    log = mounted.log
    assert log.count("workers keep failing: unmounting") == 1, log
    assert log.count("(signal 9): starting another") == CRASH_DEATHS + 1, log
    assert "Traceback" not in log, log


# --- a worker killed in the middle of a request --------------------------------------------

REPO = Path(__file__).resolve().parent.parent

#: One file read with O_DIRECT: one READ request, which the kernel does not send again
#: (a buffered read's page may be asked for again after a failed readahead READ).
READ_ONE = """
import errno, hashlib, json, os, sys
try:
    fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT)
    data = b""
    while chunk := os.read(fd, 1 << 20):
        data += chunk
    print(json.dumps(hashlib.sha256(data).hexdigest()))
except OSError as e:
    print(json.dumps(errno.errorcode[e.errno]))
"""


def stormfs(work: Path) -> Path:
    """The passthrough of scripts/storm/ (the benchmark's slow shared filesystem), built as
    the benchmark builds it, into `work`/bin."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from benchlib import storm
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return storm.build(work)


def reading_from(worker: int) -> str | None:
    """The file a thread of process `worker` waits on in a pread(2) (syscall 17), or None."""
    for task in Path(f"/proc/{worker}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            fields = (task / "syscall").read_text().split()
            if fields[0] == "17":
                return os.readlink(f"/proc/{worker}/fd/{int(fields[1], 16)}")
    return None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.timeout(180)
def test_a_worker_killed_mid_request_fails_that_request_only(
    mounter: Mounter, served: tuple[Path, Path, Mounted]
) -> None:
    """The images behind a passthrough that is then stopped (SIGSTOP: a shared filesystem
    that hangs): a read of a train file and one of a val file (O_DIRECT: one READ each) each
    hold a worker in its pread of the image, and a third worker serves the rest meanwhile.
    The train file's worker is SIGKILLed: that read fails with ECONNABORTED (the kernel
    aborts the requests of the clone it held); the val read, in flight in another worker,
    gets its exact bytes once the passthrough goes on; the daemon starts another worker and
    every later request succeeds."""
    data, extracted, _ = served
    # one READ per worker: without RWF_NOWAIT a worker hands its READs to threads and could
    # take the second read too (wire.ColdReads); this test kills a worker holding one
    plain_env = mounter.env
    mounter.env = lambda: {**plain_env(), "IMAGENETFS_COLD_THREAD": "0"}  # type: ignore[method-assign]
    exe = stormfs(mounter.work)
    shared = mounter.mkdir("shared")
    storm = subprocess.Popen([str(exe), "-f", "-d", "0", "-q", "64", "-t", "10", str(data),
                              str(shared)])  # fmt: skip
    try:
        assert wait_until(lambda: is_mounted(shared), 30)
        mounted = mounter.mount(mounter.mkdir("mnt"), shared, "--workers", "3",
                                index=mounter.work / "i.lmdb")  # fmt: skip
        workers = children(mounted.pid)
        assert len(workers) == 3
        train = sorted((extracted / "train").rglob("*.JPEG"))[0].relative_to(extracted)
        val = sorted((extracted / "val").rglob("*.JPEG"))[0]  # (val/<wnid>/: regrouped)
        val_served = val.relative_to(extracted)
        for image in ("train", "val"):
            evict(shared / f"{image}.squashfs")  # reads of it reach the passthrough
        os.kill(storm.pid, signal.SIGSTOP)
        readers, held = {}, {}
        for name, rel in (("train", train), ("val", val_served)):
            readers[name] = subprocess.Popen(
                [sys.executable, "-c", READ_ONE, str(mounted.mp / rel)],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            image = str(shared / f"{name}.squashfs")

            def waiting(image: str = image, name: str = name) -> bool:
                for worker in children(mounted.pid):
                    if reading_from(worker) == image:
                        held[name] = worker
                return name in held

            assert wait_until(waiting, 30), (name, {w: reading_from(w) for w in workers})
        assert held["train"] != held["val"]
        # the third worker serves whatever needs no image meanwhile
        assert (mounted.mp / "LOC_synset_mapping.txt").read_bytes().count(b"\n") == 4
        assert sorted(os.listdir(mounted.mp / "train")) == sorted(os.listdir(extracted / "train"))
        assert (mounted.mp / train).stat().st_size == (extracted / train).stat().st_size
        os.kill(held["train"], signal.SIGKILL)
        out, _ = readers["train"].communicate(timeout=30)
        assert json.loads(out) == "ECONNABORTED", out
        assert readers["val"].poll() is None, "the other request is still in flight"
        assert reading_from(held["val"]) == str(shared / "val.squashfs")
        os.kill(storm.pid, signal.SIGCONT)
        out, _ = readers["val"].communicate(timeout=30)
        assert json.loads(out) == sha256(val.read_bytes())
        assert wait_until(
            lambda: len(children(mounted.pid)) == 3 and held["train"] not in children(mounted.pid),
            20,
        )  # fmt: skip
        for path in sorted(extracted.rglob("*.JPEG")):  # (laid out as the mount serves them)
            rel = path.relative_to(extracted)
            assert (mounted.mp / rel).read_bytes() == path.read_bytes(), rel
        assert alive(mounted.pid) and is_mounted(mounted.mp)
        log = mounted.log
        assert f"worker {held['train']} ended (signal 9): starting another" in log, log
        assert "keep failing" not in log and "Traceback" not in log, log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(storm.pid, signal.SIGCONT)
        mounter.cleanup()
        subprocess.run(["fusermount3", "-u", "-z", str(shared)], capture_output=True)
        storm.kill()
        storm.wait()


# --- memory: a crafted Kaggle zip ------------------------------------------------------------

MiB = 1 << 20
#: What a worker may peak at (VmHWM) serving the crafted zip below to two readers: its own
#: ~30 MiB, one member at the limit (64 MiB), 2 MiB of inflating, and room to spare.
#: Measured: 94 MiB; before deflated members were bounded (and the cache shared), two
#: readers of the crafted members took the workers to 739 and 769 MiB.
WORKER_RSS = 160 * MiB
#: Deflated members of zeros added to train/n01440764/ (bytes inflated): three over the
#: limit (the crafted zip that brought this up: 783 KB holding 200-256 MiB members), two of
#: 16 MiB (the largest ImageNet JPEG is about that) and one at the limit.
CRAFTED = {"big-1.JPEG": 200 * MiB, "big-2.JPEG": 230 * MiB, "big-3.JPEG": 256 * MiB,
           "mid-1.JPEG": 16 * MiB, "mid-2.JPEG": 16 * MiB, "top.JPEG": 64 * MiB}  # fmt: skip


def crafted_kaggle_zip(root: Path) -> Path:
    spec = Spec(classes=2, train_per_class=3, val_per_class=2, test=2, tiny=True,
                layout="kaggle", kaggle_zip=True, progress=False)  # fmt: skip
    generate.generate(root, spec)
    path = root / source.KAGGLE_ZIP
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as z:
        for name, size in CRAFTED.items():
            with z.open(f"ILSVRC/Data/CLS-LOC/train/n01440764/{name}", "w") as f:
                for _ in range(size // MiB):
                    f.write(bytes(MiB))
    return path


def read_zeros(path: Path, size: int) -> None:
    """Read `path` whole (its pages evicted first, so that the mount serves every READ)."""
    evict(path)
    got = 0
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            assert chunk == bytes(len(chunk)), f"{path}: a byte that is not zero near {got}"
            got += len(chunk)
    assert got == size, path


def peak_rss(pid: int) -> int:
    """VmHWM of process `pid`, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


@pytest.mark.timeout(300)
def test_a_crafted_kaggle_zip_keeps_workers_small(mounter: Mounter, tmp_path: Path) -> None:
    """Deflated members over 64 MiB are left out at index time, one warning line each; two
    readers reading the others, over and over, get exact bytes, and no worker peaks
    above `WORKER_RSS` (the mount's inflated-member cache is shared by its workers)."""
    data = tmp_path / "data"
    path = crafted_kaggle_zip(data)
    assert path.stat().st_size < 2 * MiB
    built = mounter.cli("index", "--quiet", "--source", data, "--index", data / "i.lmdb",
                        timeout=300)  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert built.stderr.splitlines() == [
        f"imagenetfs: {path}: 'ILSVRC/Data/CLS-LOC/train/n01440764/{name}' left out: "
        f"deflated, {size} bytes inflated: more than 64 MiB (store it uncompressed: zip -0)"
        for name, size in CRAFTED.items()
        if size > 64 * MiB
    ]
    mounted = mounter.mount(mounter.mkdir("mnt"), data, "--workers", "2",
                            index=data / "i.lmdb")  # fmt: skip
    workers = children(mounted.pid)
    folder = mounted.mp / "train" / "n01440764"
    assert sorted(set(os.listdir(folder)) & set(CRAFTED)) == ["mid-1.JPEG", "mid-2.JPEG",
                                                              "top.JPEG"]  # fmt: skip
    with ThreadPoolExecutor(2) as pool:  # two readers, each on its member, three times
        for done in [
            pool.submit(lambda n=n: [read_zeros(folder / n, CRAFTED[n]) for _ in range(3)])
            for n in ("mid-1.JPEG", "mid-2.JPEG")
        ]:
            done.result()  # fmt: skip
    read_zeros(folder / "top.JPEG", CRAFTED["top.JPEG"])  # one member at the limit
    peaks = {pid: peak_rss(pid) for pid in children(mounted.pid)}
    assert list(peaks) == workers, "no worker ended"
    assert max(peaks.values()) < WORKER_RSS, {p: f"{v / MiB:.0f} MiB" for p, v in peaks.items()}
