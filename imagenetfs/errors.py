"""Errors, and the one mapping from each to the errno a FUSE request answers with.

Every exception of ours derives from `ImagenetfsError`. Two kinds:

- *failures* -- bad input, a missing tool, a corrupt image or index, an image that cannot be
  resized: the CLI prints the message as one line and exits 1; a FUSE request that meets one
  answers EIO, and the operation core logs it (one line) and counts it as an error;
- *answers* (`Answer` subclasses) -- the regular outcome of a request: no such entry, not a
  directory, read-only. Each carries its errno; they are neither logged nor counted.

`errno_of(exc)` is the mapping, for any exception: an answer's own errno, EIO for everything
else (a failure of ours, an `OSError` from the disk, a bug). Tenet 1 of docs/SEMANTICS.md:
exact bytes or an error, and that error is EIO; the daemon's log says what it was.
"""

from __future__ import annotations

import errno as _errno
from typing import ClassVar


class ImagenetfsError(Exception):
    """Base of every error of ours; alone, a failure a user can cause or fix."""


class UsageError(ImagenetfsError):
    """Bad command-line input: an option out of range, a missing or unusable path."""


class ToolError(ImagenetfsError):
    """An external tool (mksquashfs, fusermount3, ...) is missing or failed."""


class MatFileError(ImagenetfsError):
    """A MAT file (the devkit's meta.mat) that is malformed, truncated or unexpected."""


class CorruptImageError(ImagenetfsError):
    """A SquashFS image that is not valid: the message names the image path and the problem."""


class ReplyRefused(ImagenetfsError):
    """A reply the kernel refuses, or would (a READLINK reply of 4,096 bytes or more): that
    request fails with EIO, said once; the serving process goes on."""


# --- answers ------------------------------------------------------------------------------


class Answer(ImagenetfsError):
    """The regular outcome of a request, said with an errno: not a failure."""

    errno: ClassVar[int]


class NoSuchEntry(Answer):
    """lookup/getattr of a name or inode that the tree does not have."""

    errno = _errno.ENOENT


class NotADirectory(Answer):
    """readdir/lookup on something that is not a directory."""

    errno = _errno.ENOTDIR


class IsADirectory(Answer):
    """open of a directory as a file."""

    errno = _errno.EISDIR


class InvalidRequest(Answer):
    """readlink of what is not a symlink, open of what is not a file, a listing buffer too
    small for one entry."""

    errno = _errno.EINVAL


class ReadOnly(Answer):
    """Anything that would write: the tree is read-only."""

    errno = _errno.EROFS


class NoAttribute(Answer):
    """getxattr: there are no extended attributes (as on squashfs and ext4)."""

    errno = _errno.ENODATA


class NotATerminal(Answer):
    """ioctl: no ioctls (Python's `open()` asks `isatty` of every file it opens)."""

    errno = _errno.ENOTTY


class NotImplemented_(Answer):
    """An operation the filesystem does not implement (the kernel stops asking)."""

    errno = _errno.ENOSYS


def errno_of(exc: BaseException) -> int:
    """The errno a request that raised `exc` answers with: an answer's own, else EIO."""
    return exc.errno if isinstance(exc, Answer) else _errno.EIO
