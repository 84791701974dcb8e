#!/usr/bin/env python3
"""Where the image pass's time goes: py-spy's raw (collapsed) samples of `index --image-info`,
each sample put in the first category whose function is on its stack.

    profile_summary.py PROFILE.txt
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path


def category(frames: list[str]) -> str:
    """A sample's category from its stack (frames `name (file:line)`, outermost first)."""
    names = [f.split(" (")[0] for f in frames]
    own = [k for k, name in enumerate(names) if name == "_record_info"]
    if own:  # the pass's own work on a file, by the line of `_record_info` it is at
        k = own[0]
        inner = " ".join(names[k + 1 :])
        if "dimensions" in inner:
            return "header (Pillow)"
        if "decompress" in inner:
            return "read: inflate (gzip blocks)"
        if "read" in inner:
            return "read: pread and copy"
        if not inner and "google_crc32c" not in inner:
            return "CRC32C (C, in _record_info)"
        return "pass: other"
    if "_write" in names:
        return "write the index"
    if "build" in names:
        return "walk the images, place entries"
    return "other (start-up, imports)"


def main() -> None:
    counts: Counter[str] = Counter()
    for line in Path(sys.argv[1]).read_text().splitlines():
        stack, _, n = line.rstrip().rpartition(" ")
        counts[category(stack.split(";"))] += int(n)
    total = sum(counts.values())
    built = total - counts["other (start-up, imports)"]
    print(f"{'':32} {'all':>6} {'build':>6}  ({total} samples)")
    for name, n in counts.most_common():
        share = f"{n / built:6.1%}" if not name.startswith("other") else ""
        print(f"{name:32} {n / total:6.1%} {share}")


if __name__ == "__main__":
    main()
