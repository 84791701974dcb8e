#!/usr/bin/env python3
"""The process that makes the layout (views/layoutfile.py), run as a serving process runs it,
over INDEX into a temporary directory: its wall time and peak RSS (ru_maxrss of children).

    child_peak.py INDEX          (the caller takes the locks)
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from imagenetfs.index import Index
from imagenetfs.views import layoutfile


def main() -> None:
    index = Index.open(Path(sys.argv[1]), verify=False)
    with tempfile.TemporaryDirectory() as tmp:
        shared = layoutfile.Shared(Path(tmp), index, 0, None, "shuffled")
        started = time.monotonic()
        layout = shared()
        took = time.monotonic() - started
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "index": sys.argv[1],
                "seconds": round(took, 2),
                "child_peak_rss_mib": round(peak, 1),
                "file_bytes": size,
                "samples": [len(s.inos) for s in layout.splits],
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
