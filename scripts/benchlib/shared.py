"""The shared-filesystem scenario (issue 13): the images on a busy shared filesystem.

Clusters keep ImageNet's SquashFS images on Lustre or GPFS. Modelled here by stormfs
(benchlib/storm.py) mounted over `<work>/storm-images` (hard links to the set's images and
listings) at `<work>/mnt/shared`: the storm's delay per metadata operation and queue, and a
cap on the total READ bandwidth (`--shared-mbps`, default 200 MB/s). stormfs leaves the kernel
page cache on (keep_cache): the first read of each byte on the node pays the capped rate, a
repeated read of bytes still cached is local, as on a Lustre client. Caches are dropped before
each contender so each starts cold.

Contenders, each from a fresh stormfs mount and dropped caches:
- `none`: `imagenetfs mount --source <stormfs>/<set> --index I MP`;
- `stage`: the same with `--stage <work>/shared-local/stage` (emptied before each run, so the
  first run copies): served at once from the shared filesystem while the images are copied
  to local disk, verified and switched to;
- `manual`: the user's recipe: `cp` the images and listings from the shared filesystem to
  `<work>/shared-local/manual/<set>` (timed), then mount from the copy.

Measured: time to the first file (from the mount command; `manual`: from the start of the
copy; a whole file read through the mount); epoch 1 with 8 readers; for `stage`, when the
mount's state says staging is done (`wait_staged`); then caches dropped and epoch 2 with 8
readers on the same mount -- ImageNet does not fit a node's page cache, so an epoch after the
first reads from storage again: local disk for `stage` (once staged) and `manual`, the shared
filesystem for `none`; and the bytes and metadata operations the shared filesystem served.

The index: the images are fingerprinted by their bytes and named relative to `--source` (the
relocatable index), so one index built from the local set serves all three. An imagenetfs
without that records absolute image paths (and mtimes) and serves what it recorded whatever
`--source` says: then one index per source path (see `relocatable`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchlib.contenders import Imagenetfs

#: How long a mount's state may lack a "staging" entry before --stage counts as not working.
NO_STAGING_GRACE = 15.0


class StagingFailed(RuntimeError):
    pass


def staging_state(mountpoint: Path) -> dict[str, Any] | None:
    """The mount's staging state (registry state file, republished every ~2 s), if any:
    {"dir", "done", "images": [{"name", "state", "bytes", "size", "error"}], "bytes", "total",
    "rate", ...}."""
    from imagenetfs import registry  # bench.py runs in the imagenetfs environment

    state = registry.find_state(Path(mountpoint))
    staging = state.get("staging") if state else None
    return staging if isinstance(staging, dict) else None


def describe(st: dict[str, Any]) -> str:
    images = st.get("images", [])
    parts = [f"{i.get('name')}: {i.get('state')} {i.get('bytes', 0) / 1e6:.0f} MB" for i in images]
    errors = [f"{i.get('name')}: {i.get('error')}" for i in images if i.get("error")]
    return "; ".join(parts + errors)


def wait_staged(
    mountpoint: Path,
    timeout: float,
    poll: float = 0.25,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Poll the mount's registry state until its staging is done; return that state.

    Raises StagingFailed when an image failed to stage, when the state has no staging entry
    for NO_STAGING_GRACE seconds (a mount without --stage, or a daemon gone), on `timeout`,
    or when `stop` is set."""
    start = time.monotonic()
    last: dict[str, Any] | None = None
    while True:
        st = staging_state(mountpoint)
        if st is not None:
            last = st
            failed = [i for i in st.get("images", []) if i.get("state") == "failed"]
            if failed:
                raise StagingFailed(f"staging failed: {describe(st)}")
            if st.get("done"):
                return st
        elapsed = time.monotonic() - start
        if last is None and elapsed > NO_STAGING_GRACE:
            raise StagingFailed(f"no staging in the state of the mount at {mountpoint}")
        if elapsed > timeout:
            where = describe(last) if last else "no state"
            raise StagingFailed(f"staging not done after {timeout:.0f} s ({where})")
        if stop is None:
            time.sleep(poll)
        elif stop.wait(poll):
            raise StagingFailed("stopped waiting for staging")


class Watch:
    """`wait_staged` in a thread, from the mount on: when staging was seen done
    (`time.perf_counter()`, to within `poll` + the state's ~2 s republishing), or why not."""

    def __init__(self, mountpoint: Path, timeout: float, poll: float = 0.5) -> None:
        self.done_at: float | None = None
        self.state: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(mountpoint, timeout, poll), daemon=True
        )
        self._thread.start()

    def _run(self, mountpoint: Path, timeout: float, poll: float) -> None:
        try:
            self.state = wait_staged(mountpoint, timeout, poll, self._stop)
            self.done_at = time.perf_counter()
        except BaseException as e:  # reported by `result`
            self.error = e

    def result(self) -> tuple[float, dict[str, Any]]:
        """Wait for the thread; (when staging was seen done, the state) or the failure."""
        self._thread.join()
        if self.error is not None:
            raise self.error
        assert self.done_at is not None and self.state is not None
        return self.done_at, self.state

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def empty_dir(d: Path) -> Path:
    """`d`, made empty (nothing staged or copied by an earlier run is reused)."""
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def copy_set(src: Path, dst: Path) -> None:
    """The user's recipe: `cp` every image and listing of the set to local disk. `-p` keeps
    mtimes: an imagenetfs without the relocatable index fingerprints images by mtime too."""
    names = sorted(p for p in src.iterdir() if p.suffix in (".squashfs", ".txt"))
    subprocess.run(["cp", "-p", "--", *map(str, names), str(dst)], check=True)


def build_index(inet: Imagenetfs, source: Path) -> Path:
    """`imagenetfs index --source SOURCE --index <inet's index for SOURCE>`, from scratch."""
    index = inet.index_path(source)
    inet.forget_index(source)
    index.parent.mkdir(parents=True, exist_ok=True)
    cmd = [*inet.cmd, "index", "-q", "--source", str(source), "--index", str(index)]
    r = subprocess.run(cmd, env=inet.env, cwd=inet.cwd, capture_output=True, text=True)
    if r.returncode != 0:
        tail = " | ".join(r.stderr.strip().splitlines()[-2:])
        raise RuntimeError(f"imagenetfs index --source {source} failed: {tail}")
    return index


def relocatable(inet: Imagenetfs, index: Path) -> bool:
    """Does this imagenetfs name images relative to --source (the relocatable index: records
    with a "name"), rather than by absolute path? Asked of the imagenetfs the bench runs
    (--imagenetfs-src honoured); False when it cannot tell."""
    code = (
        "import sys; from pathlib import Path; from imagenetfs.index import Index; "
        "i = Index.open(Path(sys.argv[1]), verify=False); "
        "print(all('name' in r and 'path' not in r for r in i.image_records))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(index)],
        env=inet.env,
        cwd=inet.cwd,
        capture_output=True,
        text=True,
    )
    return r.returncode == 0 and r.stdout.strip() == "True"


def image_bytes(setdir: Path) -> int:
    return sum(p.stat().st_size for p in setdir.iterdir() if p.suffix == ".squashfs")
