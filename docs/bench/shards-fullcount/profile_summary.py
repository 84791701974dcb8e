#!/usr/bin/env python3
"""Where the image pass's time goes: py-spy's raw (collapsed) samples of `index --image-info`,
each sample put in the first category whose function is on its stack.

    profile_summary.py PROFILE.txt
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

#: Within `_record_info` (the pass's own work per file): a function name on the stack -> its
#: category, first match wins.
INFO = [
    ("dimensions", "header (Pillow)"),
    ("value", "CRC32C"),
    ("extend", "CRC32C"),
    ("decompress", "inflate (gzip blocks)"),
    ("read", "read (image bytes)"),
]


def category(frames: list[str]) -> str:
    if "_record_info" in frames:
        inner = frames[frames.index("_record_info") + 1 :]
        return next((c for name, c in INFO if name in inner), "pass: other")
    if "_write" in frames:
        return "write the index"
    if "build" in frames:
        return "walk the images, place entries"
    return "other (start-up, imports)"


def main() -> None:
    counts: Counter[str] = Counter()
    for line in Path(sys.argv[1]).read_text().splitlines():
        stack, _, n = line.rstrip().rpartition(" ")
        counts[category([f.split(" (")[0] for f in stack.split(";")])] += int(n)
    total = sum(counts.values())
    for name, n in counts.most_common():
        print(f"{name:32} {n / total:6.1%}")


if __name__ == "__main__":
    main()
