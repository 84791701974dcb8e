"""`imagenetfs doctor`: what a mount needs, checked one thing at a time, each with its fix.

Every check returns a `Check`: ok, warn (a mount works, but something is worth knowing) or
fail (a mount would not work), a one-line detail, and -- when not ok -- the command or step
that fixes it. The checks only read: they create nothing a later mount would not create, never
build an index, and never touch a mount point other than through the kernel's mount table,
except for one `stat` in a child process bounded by a timeout (a daemon that stopped answering
must not hang the doctor).

The last check is a real one: a throw-away FUSE filesystem is mounted in a private temporary
directory by a child process and unmounted again (`probe`), which proves /dev/fuse,
fusermount3 and the kernel together as a mount will use them, and reads the kernel's FUSE
protocol version from libfuse's own report of the INIT request.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from imagenetfs import config, index, mountinfo, places, registry, source
from imagenetfs.errors import ImagenetfsError
from imagenetfs.pack import size_text
from imagenetfs.views import resize

OK, WARN, FAIL = "ok", "warn", "fail"

#: A mount point's daemon must answer a `stat` within this, or it is reported as hung.
STAT_TIMEOUT = 5.0
#: The probe mount's whole life: start, one request, unmount.
PROBE_TIMEOUT = 30.0
#: Free space below which a place imagenetfs writes small files to is reported.
LOW_SPACE = 100 << 20


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f" -- fix: {self.fix}" if self.fix else ""
        return f"{self.status.upper():4}  {self.name}: {self.detail}{fix}"


@dataclass(frozen=True)
class Wanted:
    """What the user asks the doctor about: the mount they mean to make, or one that exists."""

    source: Path | None = None
    index: Path | None = None
    allow_other: bool = False
    mountpoint: Path | None = None


def run(wanted: Wanted) -> list[Check]:
    checks: list[Check] = []
    for name, step in _steps(wanted):
        try:
            checks.extend(step())
        except ImagenetfsError as e:  # a check's own inputs refused: that is its finding
            checks.append(Check(name, FAIL, str(e)))
    return checks


def _steps(wanted: Wanted) -> Iterator[tuple[str, Callable[[], list[Check]]]]:
    yield "/dev/fuse", fuse_device
    yield "fusermount3", fusermount
    yield "--allow-other", lambda: allow_other(wanted.allow_other)
    yield "versions", versions
    found: list[tuple[Path, source.Source]] = []  # (filled by the source check)
    yield "source", lambda: source_and_index(wanted, found)
    yield "places", lambda: places_written(found)
    yield "staging", lambda: staging_room(found)
    if wanted.mountpoint is not None:
        mountpoint = wanted.mountpoint
        yield f"mount {mountpoint}", lambda: mount_health(mountpoint)
    yield "probe mount", probe


# --- the machine -------------------------------------------------------------------------


def fuse_device(path: str = "/dev/fuse") -> list[Check]:
    try:
        st = os.stat(path)
    except OSError:
        return [
            Check(
                "/dev/fuse",
                FAIL,
                "missing: this machine (or container) has no FUSE",
                "an admin: modprobe fuse; in a container, start it with --device /dev/fuse",
            )
        ]
    if not stat.S_ISCHR(st.st_mode):
        return [Check("/dev/fuse", FAIL, "not a character device", "an admin: modprobe fuse")]
    if not os.access(path, os.R_OK | os.W_OK):
        mode = stat.S_IMODE(st.st_mode)
        return [
            Check(
                "/dev/fuse",
                FAIL,
                f"not readable and writable for you (mode {mode:04o})",
                "an admin: chmod 0666 /dev/fuse (its usual mode)",
            )
        ]
    return [Check("/dev/fuse", OK, "present, readable and writable")]


def fusermount() -> list[Check]:
    """fusermount3 mounts and unmounts for a user who is not root; it must be setuid root, and
    it reads /etc/mtab to let a user unmount."""
    exe = shutil.which("fusermount3")
    if os.getuid() == 0:
        where = exe or "not installed"
        return [Check("fusermount3", OK, f"not needed as root ({where})")]
    if exe is None:
        return [Check("fusermount3", FAIL, "not found on PATH", "an admin: apt-get install fuse3")]
    st = os.stat(exe)
    if not (st.st_mode & stat.S_ISUID and st.st_uid == 0):
        return [
            Check(
                "fusermount3",
                FAIL,
                f"{exe} is not setuid root: it cannot mount for you",
                f"an admin: chown root {exe} && chmod u+s {exe}",
            )
        ]
    checks = [Check("fusermount3", OK, f"{exe}, setuid root")]
    if not os.path.exists("/etc/mtab"):
        checks.append(
            Check(
                "/etc/mtab",
                WARN,
                "missing: fusermount3 reads it to let you unmount",
                "an admin: ln -s ../proc/self/mounts /etc/mtab",
            )
        )
    return checks


def allow_other(wanted: bool, conf: Path = Path("/etc/fuse.conf")) -> list[Check]:
    if not wanted:
        return []
    if os.getuid() == 0:
        return [Check("--allow-other", OK, "allowed (root)")]
    try:
        lines = conf.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    if any(line.split("#", 1)[0].strip() == "user_allow_other" for line in lines):
        return [Check("--allow-other", OK, f"user_allow_other is set in {conf}")]
    return [
        Check(
            "--allow-other",
            FAIL,
            f"{conf} does not set user_allow_other: fusermount3 refuses --allow-other",
            f"an admin: echo user_allow_other >> {conf}",
        )
    ]


def versions() -> list[Check]:
    import pyfuse3

    python = ".".join(map(str, sys.version_info[:3]))
    libfuse = _libfuse_version()
    detail = (
        f"kernel {os.uname().release}, Python {python}, pyfuse3 {pyfuse3.__version__}, "
        f"libfuse {libfuse or 'unknown'}"
    )
    if not _kernel_has_fuse():
        return [
            Check("versions", FAIL, f"{detail}; the kernel has no FUSE", "an admin: modprobe fuse")
        ]
    return [Check("versions", OK, detail)]


def _libfuse_version() -> str | None:
    name = ctypes.util.find_library("fuse3") or "libfuse3.so.3"
    try:
        number = int(ctypes.CDLL(name).fuse_version())
    except (OSError, AttributeError):
        return None
    return f"{number // 100}.{number % 100}"


def _kernel_has_fuse() -> bool:
    try:
        with open("/proc/filesystems") as f:
            return any(line.split()[-1:] == ["fuse"] for line in f)
    except OSError:
        return os.path.exists("/sys/fs/fuse")


# --- what would be served, and where it writes ------------------------------------------


def source_and_index(wanted: Wanted, found: list[tuple[Path, source.Source]]) -> list[Check]:
    root = source.find_source(wanted.source)
    given = wanted.source is not None or "IMAGENETFS_SOURCE" in os.environ
    if not given and not root.exists():
        sample = source.sample_dir()
        checks = [
            Check(
                "source",
                WARN,
                f"no ImageNet at {root}: a mount serves the built-in sample ({sample})",
                "give --source DIR, or set IMAGENETFS_SOURCE",
            )
        ]
        if not (sample / "train.squashfs").is_file():
            return checks  # (made at the first mount: nothing more to check yet)
        root = sample
    else:
        checks = []
    src = source.open_source(root)
    found.append((root, src))
    checks.append(Check("source", OK, src.describe()))
    path = source.find_index(wanted.index, root)
    if not path.exists():
        writable = _nearest_dir(path)
        if not os.access(writable, os.W_OK | os.X_OK):
            return [
                *checks,
                Check(
                    "index",
                    FAIL,
                    f"{path} is not built, and {writable} is not writable for you",
                    "give --index a path you can write, or set IMAGENETFS_INDEX",
                ),
            ]
        build = f"imagenetfs index --source {root}"
        if wanted.index is not None:
            build += f" --index {path}"
        detail = f"{path} is not built yet: the first mount builds it (every image is read once)"
        return [*checks, Check("index", WARN, detail, f"build it now: {build}")]
    try:
        with index.Index.open(path, source=root, names=src.image_names) as ix:
            stats = ix.stats
    except index.IndexError_ as e:
        return [*checks, Check("index", FAIL, str(e))]
    detail = f"{path}: {stats.entries:,} entries, {stats.files:,} files; matches the images"
    return [*checks, Check("index", OK, detail)]


def places_written(found: list[tuple[Path, source.Source]]) -> list[Check]:
    checks = [_state_dir()]
    cache = resize.default_cache_dir()
    checks.append(_place("resize cache", cache, config.DEFAULT_CACHE_SIZE, shared_ok=False))
    if found:
        root = found[0][0]
        path = source.find_index(None, root)
        if not path.exists():
            checks.append(_place("index cache", path.parent, LOW_SPACE, shared_ok=True))
    return checks


def _state_dir() -> Check:
    directory = registry.state_dir()
    try:
        registry.ensure_dir()
    except registry.StateDirError as e:
        return Check("mount state", FAIL, str(e))
    logs = f"{directory} (state, users and logs of mounts)"
    return Check("mount state", OK, logs)


def _place(label: str, directory: Path, wants: int, *, shared_ok: bool) -> Check:
    """Where `label` goes: its filesystem (a network one is worth knowing) and free space."""
    existing = _nearest_dir(directory)
    mount = mountinfo.filesystem_of(existing)
    fstype = mount.fstype if mount is not None else "unknown"
    try:
        free = shutil.disk_usage(existing).free
    except OSError as e:
        return Check(label, FAIL, f"{directory}: {e.strerror}", "give another directory")
    detail = f"{directory} ({fstype}, {size_text(free)} free)"
    if not os.access(existing, os.W_OK | os.X_OK):
        return Check(label, WARN, f"{detail}; not writable for you", "give another directory")
    if fstype in mountinfo.NETWORK_FILESYSTEMS and not shared_ok:
        return Check(
            label,
            WARN,
            f"{detail}; a network filesystem shared by every node: slow, and on your quota",
            "give --cache-dir a node-local directory (inside a job: $SLURM_TMPDIR)",
        )
    if free < wants:
        return Check(
            label,
            WARN,
            f"{detail}; less than the {size_text(wants)} it may use",
            "free some space or give another directory",
        )
    return Check(label, OK, detail)


def staging_room(found: list[tuple[Path, source.Source]]) -> list[Check]:
    scratch = places.job_scratch()
    if scratch is None:
        return []  # (--stage DIR is checked when given)
    if not found:
        return []
    needed = sum(path.stat().st_size for path in found[0][1].image_list)
    try:
        free = shutil.disk_usage(scratch).free
    except OSError as e:
        return [Check("staging", FAIL, f"{scratch}: {e.strerror}", "ask for a job with scratch")]
    detail = f"{scratch}: {size_text(free)} free, the images need {size_text(needed)}"
    if free < needed:
        fix = "mount without --stage, or ask for a node with more local disk"
        return [Check("staging", WARN, f"{detail}: --stage would not fit", fix)]
    return [Check("staging", OK, f"{detail}: --stage fits")]


# --- an existing mount ----------------------------------------------------------------


def mount_health(mountpoint: Path) -> list[Check]:
    point = mountinfo.canonical(mountpoint)
    mounted = mountinfo.at(point)
    state = registry.find_state(point)
    label = f"mount {point}"
    if state is None:
        if mounted is None:
            return [Check(label, FAIL, "not mounted", f"imagenetfs mount {point}")]
        return [
            Check(
                label,
                WARN,
                f"mounted ({mounted.fstype}), but this node has no imagenetfs record of it",
                f"imagenetfs umount {point}",
            )
        ]
    pid = state.get("pid")
    log = registry.log_file(point)
    alive = registry.is_alive(state)
    if mounted is None:
        if alive:
            return [Check(label, WARN, f"not mounted here, but its daemon (pid {pid}) runs")]
        return [
            Check(label, FAIL, f"gone: its daemon ended; log: {log}", f"imagenetfs mount {point}")
        ]
    if not alive:
        return [
            Check(
                label,
                FAIL,
                f"stale: its daemon (pid {pid}) died; log: {log}",
                f"imagenetfs umount {point}, then mount again",
            )
        ]
    answer = _answers(point)
    if answer is not None:
        return [Check(label, FAIL, f"daemon (pid {pid}) {answer}; log: {log}",
                      f"imagenetfs umount --force {point}")]  # fmt: skip
    checks = [Check(label, OK, f"serving, daemon pid {pid}")]
    workers, running = state.get("workers") or 0, state.get("workers_running") or 0
    if workers and running < workers:
        checks.append(Check("workers", WARN, f"{running} of {workers} running; log: {log}"))
    elif workers:
        checks.append(Check("workers", OK, f"{running} of {workers} running"))
    fs = (state.get("stats") or {}).get("fs") or {}
    errors = int(fs.get("errors") or 0)
    updated = state.get("updated")
    age = f" (counted {time.time() - updated:.0f} s ago)" if isinstance(updated, float) else ""
    if errors:
        checks.append(Check("errors", WARN, f"{errors:,} requests failed{age}; log: {log}"))
    else:
        checks.append(Check("errors", OK, f"no failed requests{age}"))
    return checks


def _answers(point: Path) -> str | None:
    """None when the mount answers a `stat` in time; else what went wrong. Asked by a child
    process: a stat on a stopped daemon waits until killed."""
    code = "import os, sys; os.stat(sys.argv[1])"
    try:
        result = subprocess.run(
            [sys.executable, "-S", "-c", code, str(point)],
            capture_output=True,
            text=True,
            timeout=STAT_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return f"does not answer (a stat waited {STAT_TIMEOUT:.0f} s)"
    if result.returncode != 0:
        said = result.stderr.strip().splitlines()
        return f"fails: {said[-1] if said else 'stat failed'}"
    return None


# --- a real mount -------------------------------------------------------------------------


def probe() -> list[Check]:
    """Mount a throw-away FUSE filesystem, stat its root, unmount it: in a child process."""
    with tempfile.TemporaryDirectory(prefix="imagenetfs-doctor-") as tmp:
        point = Path(tmp) / "mnt"
        point.mkdir()
        try:
            result = subprocess.run(
                [sys.executable, "-m", "imagenetfs.doctor", str(point)],
                capture_output=True,
                text=True,
                timeout=PROBE_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            _detach(point)
            return [Check("probe mount", FAIL, f"no answer in {PROBE_TIMEOUT:.0f} s")]
        if mountinfo.at(point) is not None:
            _detach(point)
    said = result.stderr.strip().splitlines()
    if result.returncode != 0:
        reason = said[-1].removeprefix("fusermount3: ") if said else "failed"
        return [Check("probe mount", FAIL, f"a FUSE mount fails here: {reason}")]
    kernel = re.search(r"INIT: (\d+)\.(\d+)", result.stderr)
    protocol = f"kernel FUSE protocol {kernel[1]}.{kernel[2]}" if kernel else "protocol unknown"
    return [Check("probe mount", OK, f"a FUSE mount works here ({protocol})")]


def _detach(point: Path) -> None:
    exe = shutil.which("fusermount3")
    command = [exe, "-u", "-z", str(point)] if exe else ["umount", "-l", str(point)]
    subprocess.run(command, capture_output=True, timeout=30)


def _probe_main(point: str) -> int:
    """The probe's child: mount with libfuse's debug log on stderr (it prints the kernel's
    INIT version), answer one stat, unmount."""
    import pyfuse3
    import trio

    class Empty(pyfuse3.Operations):
        async def getattr(
            self, inode: int, ctx: pyfuse3.RequestContext | None = None
        ) -> pyfuse3.EntryAttributes:
            attrs = pyfuse3.EntryAttributes()
            attrs.st_ino = inode
            attrs.st_mode = stat.S_IFDIR | 0o555
            attrs.st_nlink = 2
            return attrs

    options = {"fsname=imagenetfs-doctor", "subtype=imagenetfs-doctor", "ro", "debug"}
    pyfuse3.init(Empty(), point, options)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pyfuse3.main)
            await trio.to_thread.run_sync(os.stat, point)
            pyfuse3.terminate()

    try:
        trio.run(main)
    finally:
        pyfuse3.close(unmount=True)
    return 0


# --- helpers ------------------------------------------------------------------------------


def _nearest_dir(path: Path) -> Path:
    path = path.absolute()
    while not path.is_dir() and path.parent != path:
        path = path.parent
    return path


def as_json(checks: list[Check]) -> dict[str, object]:
    return {"ok": all(c.status != FAIL for c in checks), "checks": [asdict(c) for c in checks]}


if __name__ == "__main__":
    sys.exit(_probe_main(sys.argv[1]))
