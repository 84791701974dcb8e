"""Width and height of an image file, from its header: the optional pass of an index build
(`imagenetfs index --image-info`) that the shard view's `.json` members show.

Reads the first `HEAD` bytes of a file (a JPEG's SOF marker is there unless its EXIF or ICC
segments are larger) and asks Pillow, which parses the header without decoding pixels; when
that is not enough, the first `MOST` bytes. A file that is no image Pillow knows, or whose
header is not within them, has no size: None.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

HEAD = 64 << 10
MOST = 4 << 20


def dimensions(read: Callable[[int, int], bytes], size: int) -> tuple[int, int] | None:
    """(width, height) of the image whose bytes `read(offset, length)` gives (`size` in all),
    or None."""
    from PIL import Image  # only for this pass

    for length in (HEAD, MOST):
        data = read(0, min(length, size))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(io.BytesIO(data)) as image:
                    width, height = image.size
                    return int(width), int(height)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            if length >= size:
                return None
    return None
