"""`read(..., nowait=True)`: served from the page cache and block cache, or WouldBlock."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from helpers import drop_written, nowait_unsupported

from imagenetfs import generate
from imagenetfs.squashfs import SquashImage, WouldBlock

SPEC = generate.Spec(classes=2, train_per_class=6, val_per_class=0, test=0)


@pytest.mark.parametrize("args", [("-noD", "-noF"), ()])
def test_nowait_reads(tmp_path: Path, args: tuple[str, ...]) -> None:
    reason = nowait_unsupported(tmp_path)
    if reason is not None:
        pytest.skip(reason)  # (such an image: test_image_on_a_filesystem_without_rwf_nowait)
    generate.generate(tmp_path, generate.Spec(**{**SPEC.__dict__, "mksquashfs_args": args}))
    image_path = tmp_path / "train.squashfs"
    with SquashImage(image_path) as image:
        files = [e for e in image.walk() if e.extent is not None]
    assert len(files) == 12
    for entry in files:
        assert entry.extent is not None
        # Opening an image reads its superblock and tables, and the kernel reads ahead of
        # them into the first files' data: open first, then evict. The kernel may still keep
        # a page through one DONTNEED on a busy machine: evict again, a few times.
        for attempt in range(5):
            image = SquashImage(image_path)  # an empty block cache
            drop_written(image_path)
            try:
                image.read(entry.extent, 0, entry.size, nowait=True)
            except WouldBlock:
                break
            image.close()
            time.sleep(0.1 * (attempt + 1))
        else:
            pytest.fail("the file's pages stayed cached through five evictions")
        with image:
            whole = image.read(entry.extent, 0, entry.size)
            assert len(whole) == entry.size
            if args:  # uncompressed: now in the page cache, readable without waiting
                assert image.read(entry.extent, 0, entry.size, nowait=True) == whole
                assert image.read(entry.extent, 100, 5000, nowait=True) == whole[100:5100]
            else:  # compressed: the block cache holds the blocks just decompressed
                last = entry.size - 1
                assert image.read(entry.extent, last, 1, nowait=True) == whole[last:]


def test_image_on_a_filesystem_without_rwf_nowait(tmp_path: Path) -> None:
    """An image on FUSE (here: squashfuse over an image holding our image) has no RWF_NOWAIT:
    nowait reads say WouldBlock, never an error, and blocking reads work."""
    generate.generate(
        tmp_path / "data", generate.Spec(**{**SPEC.__dict__, "mksquashfs_args": ("-noD", "-noF")})
    )
    outer = tmp_path / "outer.squashfs"
    subprocess.run(
        ["mksquashfs", str(tmp_path / "data"), str(outer), "-quiet", "-no-progress"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    mp = tmp_path / "mnt"
    mp.mkdir()
    subprocess.run(["squashfuse", str(outer), str(mp)], check=True)
    try:
        with SquashImage(mp / "train.squashfs") as image:
            files = [e for e in image.walk() if e.extent is not None]
            for entry in files:
                assert entry.extent is not None
                whole = image.read(entry.extent, 0, entry.size)
                with pytest.raises(WouldBlock):
                    image.read(entry.extent, 0, entry.size, nowait=True)
                assert len(whole) == entry.size
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], check=False)


def test_a_nowait_miss_is_not_counted_as_a_block_inflated(tmp_path: Path) -> None:
    """A `nowait` read that finds a compressed block missing inflates nothing and counts no
    miss; the blocking read after it counts one: misses are blocks inflated (a worker's push
    tries a file `nowait` first, and the pipeline's counters read misses so)."""
    generate.generate(tmp_path, SPEC)
    with SquashImage(tmp_path / "train.squashfs") as image:
        files = [e for e in image.walk() if e.extent is not None]
        entry = next(e for e in files if e.extent and image.locate(e.extent, 0, e.size) is None)
        assert entry.extent is not None
        blocks = sum(1 for w in entry.extent.block_words() if w & 0xFFFFFF and not w & 1 << 24)
        blocks += entry.extent.fragment is not None and not image._fragment(entry.extent.fragment)[
            1
        ] & (1 << 24)
        with pytest.raises(WouldBlock):
            image.read(entry.extent, 0, entry.size, nowait=True)
        assert image.statistics().cache_misses == 0
        image.read(entry.extent, 0, entry.size)
        assert image.statistics().cache_misses == blocks > 0
        assert image.read(entry.extent, 0, entry.size, nowait=True)  # (now from the cache)
        assert image.statistics().cache_misses == blocks
