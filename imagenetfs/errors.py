"""User-facing errors: each carries one clear line; the CLI prints it and exits non-zero."""


class ImagenetfsError(Exception):
    """Base of every error a user can cause or fix (bad input, missing tool, corrupt data)."""


class UsageError(ImagenetfsError):
    """Bad command-line input: an option out of range, a missing or unusable path."""


class ToolError(ImagenetfsError):
    """An external tool (mksquashfs, fusermount3, ...) is missing or failed."""


class MatFileError(ImagenetfsError):
    """A MAT file (the devkit's meta.mat) that is malformed, truncated or unexpected."""


class CorruptImageError(ImagenetfsError):
    """A SquashFS image that is not valid: the message names the image path and the problem."""
