#!/usr/bin/env python3
"""Medians over every pipeline run kept here (all rounds of all runs of one side pooled):
imagenetfs and squashfuse_ll images/s and daemon CPU s per 1,000 images, A (zng) and B (push).

    python3 docs/bench/push-copied/summarize.py [VARIANT]
"""

import json
import statistics
import sys
from pathlib import Path

here = Path(__file__).parent
variant = sys.argv[1] if len(sys.argv) > 1 else "gzip"
rows = [
    "cold images/s",
    "warm images/s",
    "cold daemon CPU s/1k",
    "warm daemon CPU s/1k",
    "cold pipeline CPU s/1k",
    "warm pipeline CPU s/1k",
]
pooled: dict[tuple[str, str, str], list[float]] = {}
for which in ("zng", "push"):
    for path in sorted(here.glob(f"pipeline-{variant}-*-{which}/results.json")):
        results = json.loads(path.read_text())["pipeline"]["results"][variant]
        for row in rows:
            for who in ("imagenetfs", "squashfuse_ll", "unpacked"):
                pooled.setdefault((which, row, who), []).extend(results[row].get(who, []))
print(f"{variant}: medians of all rounds (n)")
print(
    "| | A zng: imagenetfs | B push: imagenetfs | B ÷ A "
    "| squashfuse_ll (A runs, B runs) | unpacked (A, B) |"
)
print("|---|---|---|---|---|---|")


def median(v: list[float]) -> str:
    return f"{statistics.median(v):.3g} ({len(v)})" if v else "-"


for row in rows:
    got = {
        (which, who): pooled.get((which, row, who), [])
        for which in ("zng", "push")
        for who in ("imagenetfs", "squashfuse_ll", "unpacked")
    }
    a, b = got["zng", "imagenetfs"], got["push", "imagenetfs"]
    ratio = f"{statistics.median(b) / statistics.median(a):.3f}" if a and b else "-"
    print(
        f"| {row} | {median(a)} | {median(b)} | {ratio} "
        f"| {median(got['zng', 'squashfuse_ll'])}, {median(got['push', 'squashfuse_ll'])} "
        f"| {median(got['zng', 'unpacked'])}, {median(got['push', 'unpacked'])} |"
    )
