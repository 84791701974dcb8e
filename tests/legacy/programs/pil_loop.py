"""A PIL loop over random images, the way one looks at a dataset: format, mode, size, pixels.

    python pil_loop.py ROOT [COUNT] [SEED]

Prints one line per image (sorted sample of COUNT images from ROOT, by SEED): its path, what
PIL says it is, its first and last pixel as stored and the MD5 of its RGB pixels.
"""

import hashlib
import os
import random
import sys

from PIL import Image


def main() -> None:
    root = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    images = sorted(
        os.path.relpath(os.path.join(dirpath, name), root)
        for dirpath, _, names in os.walk(root)
        for name in names
        if name.endswith(".JPEG")
    )
    for rel in random.Random(seed).sample(images, min(count, len(images))):
        with Image.open(os.path.join(root, rel)) as image:
            fmt, mode, (w, h) = image.format, image.mode, image.size
            first, last = image.getpixel((0, 0)), image.getpixel((w - 1, h - 1))
            rgb = image.convert("RGB").tobytes()
        print(rel, fmt, mode, w, h, first, last, hashlib.md5(rgb).hexdigest())


if __name__ == "__main__":
    main()
