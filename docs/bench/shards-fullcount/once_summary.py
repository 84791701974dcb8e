#!/usr/bin/env python3
"""The tables of docs/bench/shards-fullcount.md's "once per mount" section, from once-*.log."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent


def rows(name: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in (HERE / name).read_text().splitlines() if line]


def first() -> None:
    runs: dict[tuple[str, str], list[dict]] = defaultdict(list)  # type: ignore[type-arg]
    for row in rows("once-first.log"):
        runs[(row["code"], row["index"])].append(row["r"])
    print("| index | code | first `ls shards/wds` (s) | median | then `ls shards/tfrecord` |")
    print("|---|---|---|---|---|")
    for (code, ix), rs in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0] != "main")):
        times = [r["ls_wds"] for r in rs]
        tf = statistics.median(r["ls_tfrecord"] for r in rs)
        print(
            f"| {ix} | {code} | {', '.join(f'{t:.2f}' for t in times)} | "
            f"**{statistics.median(times):.2f}** | {tf * 1000:.0f} ms |"
        )


def memory() -> None:
    runs: dict[tuple[str, str, bool], list[dict]] = defaultdict(list)  # type: ignore[type-arg]
    for row in rows("once-memory.log"):
        runs[(row["code"], row["index"], row["r"]["shards"])].append(row["r"])
    med = {
        k: {
            f: statistics.median(r["after_walk"][f] for r in rs)
            for f in ("pss_anon", "pss_file", "pss", "rss", "hwm")
        }
        for k, rs in runs.items()
    }
    print("| index | code | `--shards` | PSS anon | PSS file | PSS | RSS | peak (VmHWM) | runs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k in sorted(med, key=lambda k: (k[1], k[0] != "main", k[2])):
        m = med[k]
        print(
            f"| {k[1]} | {k[0]} | {'yes' if k[2] else 'no'} | {m['pss_anon']:.1f} | "
            f"{m['pss_file']:.1f} | {m['pss']:.1f} | {m['rss']:.1f} | {m['hwm']:.1f} | "
            f"{len(runs[k])} |"
        )
    print()
    print("| index | code | the view's cost: PSS anon | PSS file |")
    print("|---|---|---|---|")
    for ix in ("full", "full-info"):
        for code in ("main", "branch"):
            on, off = med.get((code, ix, True)), med.get((code, ix, False))
            if on and off:
                print(
                    f"| {ix} | {code} | +{on['pss_anon'] - off['pss_anon']:.1f} | "
                    f"+{on['pss_file'] - off['pss_file']:.1f} |"
                )
    print()
    print("Per process, median after the walk (PSS anon / file, MiB):")
    for k in sorted(runs, key=lambda k: (k[1], k[0] != "main", k[2])):
        per: dict[int, list[tuple[float, float]]] = defaultdict(list)
        for r in runs[k]:
            for i, p in enumerate(sorted(r["per_process"].items(), key=lambda kv: int(kv[0]))):
                per[i].append((p[1]["pss_anon"], p[1]["pss_file"]))
        cells = [
            f"{statistics.median(a for a, _ in v):.1f} / {statistics.median(f for _, f in v):.1f}"
            for _, v in sorted(per.items())
        ]
        shards = "with" if k[2] else "without"
        print(
            f"- {k[1]}, {k[0]}, {shards} `--shards`: supervisor {cells[0]}; "
            f"workers {'; '.join(cells[1:])}"
        )


if __name__ == "__main__":
    first()
    print()
    memory()
