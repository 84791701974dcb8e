"""Paths given on the command line, checked before a command starts its work.

A path option names something a command reads (a source, a mount point) or writes (an index
to build, the resize cache, pack's OUTDIR, the sample's DIR, a metrics file, a staging
directory). Each is checked first, so that a bad one costs one line and no work -- not a
traceback after an index build of minutes, nor a pool of processes failing for ever:

- `output_dir(path, label)`: created if missing (with its parents); must be a directory in which
  this user can create a file and write to it: a probe of `PROBE_BYTES` is written, synced and
  removed, so a directory without write permission, a read-only filesystem, a full disk or an
  exhausted quota all show here. What the check created is removed again if it fails;
- `output_file(path, label)`: not a directory; its directory as `output_dir`;
- `existing_dir(path, label)`: exists and is a directory (not created); with `writable`, as
  `output_dir`.

Each refusal is a `UsageError` of one line: `<label> <path>: <problem>; <what to do>` (`label`:
the option, or what the path is when it was not given -- "index", "resize cache"). The
checks cannot promise the work will succeed (a disk may fill meanwhile); the writers convert
what they meet later into lines of the same kind (`index.build`, `pack`), and `describe` turns
any `OSError` into one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from imagenetfs.errors import UsageError

#: Bytes written by the probe: a directory whose disk cannot take them is refused.
PROBE_BYTES = 4096

#: errno -> (the problem, in words; what to do, `{label}` filled in).
_WRITE_ADVICE = {
    errno.EACCES: ("permission denied", "give {label} a path you can write"),
    errno.EPERM: ("permission denied", "give {label} a path you can write"),
    errno.EROFS: ("a read-only filesystem", "give {label} a path you can write"),
    errno.ENOSPC: ("no space left on the device", "free space there or give {label} another path"),
    errno.EDQUOT: ("disk quota exceeded", "free space there or give {label} another path"),
    errno.ENOTDIR: ("a file is where a directory should be", "give {label} another path"),
    errno.EEXIST: ("a file is where a directory should be", "give {label} another path"),
    errno.ENOENT: ("does not exist", "give {label} an existing path"),
    errno.ENAMETOOLONG: ("name too long", "give {label} a shorter path"),
}


def describe(e: OSError, option: str) -> tuple[str, str]:
    """(the problem, what to do) for an `OSError` met using the path given as `option`."""
    problem, advice = _WRITE_ADVICE.get(
        e.errno or 0, (e.strerror or str(e), "give {label} another path")
    )
    return problem, advice.format(label=option)


def refusal(path: Path, label: str, e: OSError, option: str | None = None) -> UsageError:
    """The one line for `e`, met while using `path` (`label` names it: an option, OUTDIR, the
    index; `option` is what to give instead, `label` by default)."""
    problem, advice = describe(e, option or label)
    where = f" ({e.filename})" if e.filename and str(e.filename) != str(path) else ""
    return UsageError(f"{label} {path}: {problem}{where}; {advice}")


def output_dir(path: Path, label: str, option: str | None = None) -> Path:
    """`path` as a directory this user can write into, created if missing."""
    _writable_dir(path, path, label, option or label)
    return path


def output_file(path: Path, label: str, option: str | None = None) -> Path:
    """`path` as a file this user can write (atomically: its directory must take a new file)."""
    option = option or label
    try:
        if path.is_dir():
            raise UsageError(f"{label} {path}: a directory; give {option} the path of a file")
    except OSError as e:  # (a parent we may not search)
        raise refusal(path, label, e, option) from None
    _writable_dir(path.parent, path, label, option)
    return path


def existing_dir(path: Path, label: str, *, writable: bool = False) -> Path:
    """`path` as a directory that is there already (and, with `writable`, takes files)."""
    try:
        if not path.exists():
            raise UsageError(f"{label} {path}: no such directory; give {label} an existing one")
        if not path.is_dir():
            raise UsageError(f"{label} {path}: not a directory; give {label} a directory")
    except OSError as e:
        raise refusal(path, label, e) from None
    if writable:
        _writable_dir(path, path, label, label)
    return path


def _writable_dir(directory: Path, named: Path, label: str, option: str) -> None:
    """`directory`, created if missing, must take a new file; refusals name `named` (the
    path as given: the directory itself, or a file to be written in it)."""
    created: list[Path] = []
    try:
        for above in (directory, *directory.parents):  # the deepest that exists: a directory?
            if above.exists() or above.is_symlink():
                if not above.is_dir():
                    where = "not a directory" if above == named else f"{above} is not a directory"
                    raise UsageError(f"{label} {named}: {where}; give {option} another path")
                break
            created.append(above)
        directory.mkdir(parents=True, exist_ok=True)
        _probe(directory)
    except OSError as e:
        for made in created:  # deepest first: leave nothing behind
            with contextlib.suppress(OSError):
                made.rmdir()
        raise refusal(named, label, e, option) from None


def _probe(directory: Path) -> None:
    """Create, fill, sync and remove a small file in `directory` (OSError if it cannot)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".imagenetfs-probe-", dir=directory)
    except OSError as e:  # (named after the directory, not the probe's random name)
        raise OSError(e.errno, e.strerror, str(directory)) from None
    try:
        os.write(fd, bytes(PROBE_BYTES))
        os.fsync(fd)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(directory)) from None
    finally:
        os.close(fd)
        os.unlink(name)
