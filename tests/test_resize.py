"""Resized views: specs, the resize itself, and resized/<spec>/ trees on a real mount."""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lmdb
import pytest
from helpers import Mounted, Mounter, alive, children, extract_archive, is_mounted, wait_until
from PIL import Image

from imagenetfs import generate
from imagenetfs.errors import UsageError
from imagenetfs.generate import Spec
from imagenetfs.views import resize
from imagenetfs.views.resize import ResizeError, ResizeSpec, parse_spec

SPEC = Spec(classes=3, train_per_class=4, val_per_class=2, test=2)


# --- specs and the resize function ---------------------------------------------------------


def test_parse_spec() -> None:
    assert parse_spec("256") == ResizeSpec(None, 256)
    assert parse_spec("64x48") == ResizeSpec(64, 48)
    assert parse_spec(" 32X32 ").name == "32x32"
    for bad in ("0", "7", "4097", "x", "64x", "64x64x64", "-5", "abc", "1e3", ""):
        with pytest.raises(UsageError, match="expected N"):
            parse_spec(bad)
    assert resize.parse_size("10G") == 10 << 30
    assert resize.parse_size("500M") == 500 << 20
    for bad in ("1K", "lots", "-1G"):
        with pytest.raises(UsageError):
            resize.parse_size(bad)


def test_target_sizes() -> None:
    short = parse_spec("256")
    assert short.target(500, 375) == (341, 256)  # int(256 * 500 / 375)
    assert short.target(375, 500) == (256, 341)
    assert short.target(200, 300) is None  # already at or below: served as is
    assert parse_spec("64x64").target(500, 375) == (64, 64)


def jpeg(mode: str, size: tuple[int, int], fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, "white" if mode != "CMYK" else (10, 20, 30, 40)).save(out, fmt)
    return out.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK", "P"])
@pytest.mark.parametrize("spec", ["64x64", "100"])
def test_resize_outputs_rgb_jpeg(mode: str, spec: str) -> None:
    data = jpeg(mode, (500, 375), "PNG" if mode == "P" else "JPEG")
    out = resize.resize(data, parse_spec(spec))
    with Image.open(io.BytesIO(out)) as img:
        assert img.format == "JPEG" and img.mode == "RGB"
        assert img.size == ((64, 64) if spec == "64x64" else (133, 100))


def test_small_images_served_as_is_unless_odd() -> None:
    rgb = jpeg("RGB", (200, 150))
    assert resize.resize(rgb, parse_spec("256")) == rgb
    for odd in (jpeg("CMYK", (200, 150)), jpeg("L", (200, 150)), jpeg("RGB", (200, 150), "PNG")):
        out = resize.resize(odd, parse_spec("256"))
        with Image.open(io.BytesIO(out)) as img:
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (200, 150))


def png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


def test_hostile_inputs_raise_resize_error() -> None:
    good = jpeg("RGB", (500, 375))
    cases = {
        "truncated": good[: len(good) // 2],
        "garbage": b"\xff\xd8\xff" + os.urandom(2000),
        "empty": b"",
        "bomb": png_header(100_000, 100_000),  # 10 Gpx claimed by the header
    }
    for name, data in cases.items():
        with pytest.raises(ResizeError):
            resize.resize(data, parse_spec("64x64"))
            pytest.fail(f"{name}: resized")


def test_the_pixel_bound_is_ours_and_exact() -> None:
    """A whole, valid JPEG just over MAX_PIXELS (and under Pillow's own bomb limit, so only our
    bound can refuse it) is refused before it is decoded; one of exactly 64 Mpx is resized."""
    side = 8000  # the documented bound: 64,000,000 pixels
    with pytest.raises(ResizeError, match=f"image of {side}x{side + 1} pixels is out of bounds"):
        resize.resize(jpeg("L", (side, side + 1)), parse_spec("64x64"))
    small = resize.resize(jpeg("L", (side, side)), parse_spec("64x64"))
    assert small.startswith(b"\xff\xd8") and len(small) < 10_000


# --- resized trees on a mount ---------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    generate.generate(out, SPEC)
    return out


def mount_at(mounter: Mounter, data: Path, mp: Path, cache: Path | None, *specs: str) -> Mounted:
    """`data` with resized views `specs`, its resize cache in `cache` (None: --no-cache)."""
    args = [arg for s in specs for arg in ("--resize", s)]
    args += ["--no-cache"] if cache is None else ["--cache-dir", cache]
    return mounter.mount(mp, data, *args, index=data / "i.lmdb")


def umount(mounter: Mounter, mp: Path, said: str = "detached") -> None:
    """`umount --lazy`, which must succeed saying `said` (a stale mount: "cleared")."""
    result = mounter.cli("umount", "--lazy", mp)
    assert result.returncode == 0 and result.stdout.startswith(said), result
    assert not is_mounted(mp)


def cache_stats(mounted: Mounted) -> dict[str, int]:
    """The resize cache counters the daemon publishes next (every 2 s)."""
    return dict(mounted.stats(after=time.time())["resize_cache"])


@pytest.fixture
def mounted(mounter: Mounter, data: Path, tmp_path: Path) -> Iterator[tuple[Mounted, Path]]:
    mp, cache = tmp_path / "mnt", tmp_path / "cache"
    yield mount_at(mounter, data, mp, cache, "64x64", "160"), cache


def files_under(root: Path) -> list[Path]:
    return sorted(Path(d) / f for d, _, fs in os.walk(root) for f in fs)


def test_resized_trees(
    mounter: Mounter, mounted: tuple[Mounted, Path], data: Path, tmp_path: Path
) -> None:
    daemon, cache = mounted
    mp = daemon.mp
    assert sorted(os.listdir(mp / "resized")) == ["160", "64x64"]
    base = [p.relative_to(mp) for p in files_under(mp) if p.parts[len(mp.parts)] != "resized"]
    for spec in ("64x64", "160"):
        root = mp / "resized" / spec
        assert [p.relative_to(root) for p in files_under(root)] == base, "a full root"
        assert (root / "meta.bin").read_bytes() == (mp / "meta.bin").read_bytes()
    assert cache_stats(daemon)["stores"] == 0, "listing resizes nothing"

    modes = set()
    first: dict[Path, bytes] = {}
    for spec in ("64x64", "160"):
        root = mp / "resized" / spec
        for split in ("train", "val", "test"):
            for path in files_under(root / split):
                data_bytes = path.read_bytes()
                assert len(data_bytes) == path.stat().st_size
                assert path.read_bytes() == data_bytes
                original = mp / path.relative_to(root)
                with Image.open(io.BytesIO(data_bytes)) as img, Image.open(original) as orig:
                    img.load()
                    modes.add(orig.mode)
                    assert img.mode == "RGB" and img.format == "JPEG"
                    if spec == "64x64":
                        assert img.size == (64, 64)
                    else:
                        w, h = orig.size
                        expected = parse_spec("160").target(w, h) or (w, h)
                        assert img.size == expected
                first[path.relative_to(mp)] = data_bytes
    assert {"CMYK", "RGB"} <= modes, "the odd files are covered"
    assert cache_stats(daemon)["stores"] == len(first)

    umount(mounter, mp)  # again: everything now comes from the cache, identical
    daemon = mount_at(mounter, data, mp, cache, "64x64", "160")
    for rel, data_bytes in first.items():
        assert (mp / rel).stat().st_size == len(data_bytes)
        assert (mp / rel).read_bytes() == data_bytes
    stats = cache_stats(daemon)
    assert stats["stores"] == 0 and stats["hits"] >= len(first)


def test_truncated_jpeg_gives_eio_and_others_read(
    mounter: Mounter, data: Path, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    shutil.copytree(data, src, ignore=shutil.ignore_patterns("*.lmdb"))
    tree = tmp_path / "tree"
    extract_archive(src / "train.squashfs", tree)
    victim = sorted(tree.rglob("*.JPEG"))[0]
    victim.write_bytes(victim.read_bytes()[:3000])
    (src / "train.squashfs").unlink()
    subprocess.run(["mksquashfs", str(tree), str(src / "train.squashfs"), "-quiet",
                    "-no-progress"], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    mp = tmp_path / "mnt"
    mount_at(mounter, src, mp, tmp_path / "cache", "64x64")
    try:
        bad = mp / "resized" / "64x64" / "train" / victim.relative_to(tree)
        with pytest.raises(OSError) as info:
            bad.read_bytes()
        assert info.value.errno == 5  # EIO
        others = [p for p in files_under(mp / "resized" / "64x64" / "train") if p != bad]
        assert len(others) == 11
        for path in others:
            with Image.open(path) as img:
                assert img.size == (64, 64)
        assert (mp / "train" / victim.relative_to(tree)).read_bytes() == victim.read_bytes()
    finally:
        umount(mounter, mp)


def test_warm_fills_the_cache(mounter: Mounter, data: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    result = mounter.cli(
        "warm", "--source", data, "--index", data / "i.lmdb", "--resize", "32x32",
        "--cache-dir", cache, "--split", "val", "-q", timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"warmed {cache}: 6 resized, 0 already cached, 0 failed")
    mounted = mount_at(mounter, data, tmp_path / "mnt", cache, "32x32")
    for path in files_under(mounted.mp / "resized" / "32x32" / "val"):
        assert Image.open(path).size == (32, 32)
    stats = cache_stats(mounted)
    assert stats["hits"] >= 6 and stats["stores"] == 0


def test_concurrent_first_reads_resize_once(mounted: tuple[Mounted, Path]) -> None:
    daemon, _ = mounted
    mp = daemon.mp
    target = files_under(mp / "resized" / "160" / "train")[0]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: target.read_bytes(), range(32)))
    assert len(set(results)) == 1 and len(results[0]) == target.stat().st_size
    assert cache_stats(daemon)["stores"] == 1, "16 concurrent readers, one resize"


KEEP_READING = """
import os, sys
for d, _, fs in os.walk(sys.argv[1]):
    for f in fs:
        try:
            open(os.path.join(d, f), "rb").read()
            print("read", f, flush=True)
        except OSError as e:
            print("failed", f, e, flush=True)
"""


@pytest.mark.timeout(240)
def test_one_cache_shared_by_mounts_and_surviving_sigkill(
    mounter: Mounter, data: Path, tmp_path: Path
) -> None:
    """Two mounts use one cache directory at once, with readers on both: identical bytes, one
    entry per file. A third mount is killed (SIGKILL, workers and all) while it is resizing
    into that cache; afterwards the cache opens, every entry in it is a whole JPEG, and a new
    mount serves exactly the bytes that a mount without any cache produces."""
    cache = tmp_path / "cache"
    mps = {name: tmp_path / name for name in ("a", "b", "killed", "after", "nocache")}
    mount_at(mounter, data, mps["a"], cache, "64x64")
    mount_at(mounter, data, mps["b"], cache, "64x64")
    try:
        rels = [p.relative_to(mps["a"]) for p in files_under(mps["a"] / "resized" / "64x64")]
        rels = [r for r in rels if r.suffix == ".JPEG"]
        jobs = [(mps[m], rel) for _ in range(3) for m in ("a", "b") for rel in rels]
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda job: (job[1], (job[0] / job[1]).read_bytes()), jobs))
        shared = {}
        for rel, value in got:
            assert shared.setdefault(rel, value) == value, f"{rel}: mounts disagree"
        env = lmdb.open(str(cache / "resize-cache.lmdb"), subdir=False, readonly=True, max_dbs=3)
        with env.begin(db=env.open_db(b"data", create=False)) as txn:
            assert txn.stat()["entries"] == len(rels), "one entry per file for both mounts"
        env.close()
    finally:
        umount(mounter, mps["a"])
        umount(mounter, mps["b"])

    # killed mid-resize: 48x48 is not cached yet, so the readers keep it resizing
    pid = mount_at(mounter, data, mps["killed"], cache, "48x48").pid
    workers = children(pid)
    reader = subprocess.Popen(
        [sys.executable, "-c", KEEP_READING, str(mps["killed"] / "resized" / "48x48" / "train")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert reader.stdout is not None
    for _ in range(3):  # three files resized and stored: the rest are on their way
        assert reader.stdout.readline().startswith("read ")
    os.kill(pid, 9)
    reader.communicate(timeout=60)
    assert wait_until(lambda: not any(alive(w) for w in [pid, *workers]), 10)
    umount(mounter, mps["killed"], said="cleared the stale mount")

    mount_at(mounter, data, mps["after"], cache, "48x48", "64x64")
    mount_at(mounter, data, mps["nocache"], None, "48x48", "64x64")
    try:
        for spec in ("48x48", "64x64"):
            for path in files_under(mps["nocache"] / "resized" / spec):
                rel = path.relative_to(mps["nocache"])
                assert (mps["after"] / rel).read_bytes() == path.read_bytes(), rel
                if spec == "64x64" and rel in shared:
                    assert shared[rel] == path.read_bytes(), rel
        env = lmdb.open(str(cache / "resize-cache.lmdb"), subdir=False, readonly=True, max_dbs=3)
        with env.begin(db=env.open_db(b"data", create=False)) as txn:
            for _, value in txn.cursor():
                with Image.open(io.BytesIO(value)) as img:
                    img.load()  # whole JPEGs only
        env.close()
    finally:
        umount(mounter, mps["after"])
        umount(mounter, mps["nocache"])


def test_warm_a_mount_with_its_own_settings(mounter: Mounter, data: Path, tmp_path: Path) -> None:
    """`imagenetfs warm MOUNTPOINT` fills that mount's cache, at its quality: afterwards the
    mount resizes nothing. Options that would warm anything else are refused."""
    cache = tmp_path / "cache"
    mounted = mounter.mount(
        tmp_path / "mnt", data, "--resize", "40x40", "--resize-quality", "70",
        "--cache-dir", cache, "--cache-size", "64M", index=data / "i.lmdb",
    )  # fmt: skip
    result = mounter.cli("warm", mounted.mp, "--split", "val", "-q", timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"warmed {cache}: 6 resized, 0 already cached, 0 failed")
    val = sorted((mounted.mp / "val").rglob("*.JPEG"))
    for original in val:
        view = mounted.mp / "resized" / "40x40" / original.relative_to(mounted.mp)
        assert view.read_bytes() == resize.resize(
            original.read_bytes(), parse_spec("40x40"), quality=70
        )
    stats = cache_stats(mounted)
    assert stats["hits"] >= len(val) == 6 and stats["stores"] == 0, stats
    for args, problem in (
        (["--resize-quality", "90"], "--resize-quality differs from the mount's own (70)"),
        (["--cache-dir", tmp_path / "elsewhere"], "--cache-dir differs"),
        (["--resize", "64x64"], "serves resized/ 40x40 only"),
        (["--source", data], "a MOUNTPOINT or --source, not both"),
    ):
        refused = mounter.cli("warm", mounted.mp, *args)
        assert refused.returncode == 1 and problem in refused.stderr, refused.stderr
    plain = mounter.mount(tmp_path / "plain", data, index=data / "i.lmdb")
    refused = mounter.cli("warm", plain.mp)
    assert refused.returncode == 1 and "serves no resized views" in refused.stderr
