"""OpenCV reading every image by path: `cv2.imread` in colour and unchanged.

    python cv2_read.py ROOT

Prints, per image (sorted): path, the shape and dtype of both reads and the MD5 of the BGR
pixels.
"""

import hashlib
import os
import sys

import cv2


def main() -> None:
    root = sys.argv[1]
    images = sorted(
        os.path.relpath(os.path.join(dirpath, name), root)
        for dirpath, _, names in os.walk(root)
        for name in names
        if name.endswith(".JPEG")
    )
    for rel in images:
        path = os.path.join(root, rel)
        color = cv2.imread(path, cv2.IMREAD_COLOR)
        unchanged = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if color is None or unchanged is None:
            print(rel, "UNREADABLE")
            continue
        digest = hashlib.md5(color.tobytes()).hexdigest()
        print(rel, color.shape, color.dtype, unchanged.shape, digest)


if __name__ == "__main__":
    main()
