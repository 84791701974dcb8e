"""Plot scripts/bench.py's results.json (run with the benchmark venv's Python: matplotlib).

    <work>/bench-venv/bin/python scripts/benchlib/plot.py results.json results.png

One panel per workload: a bar per contender and image variant (median), log scale, so that
the kernel's microseconds and ratarmount's minutes fit; the storm in the last panels (a bar
per delay, the first solid, the others hatched, as each panel's title says). The
shared-filesystem scenario, when run, in a small figure of its own beside it
(`results-shared.png`: time to first file, both epochs, GB read from the shared filesystem).
"""

from __future__ import annotations

import json
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ORDER = [
    "imagenetfs",
    "kernel",
    "squashfuse",
    "squashfuse_ll",
    "ratarmount",
    "imagenetfs-tar",
    "ratarmount-tar",
    "imagenetfs-packed",
    "unpacked",
    "floor",
]
STORM_COLORS = {"unpacked": "tab:gray", "imagenetfs": "tab:green"}
HATCHES = ["", "//", "xx", ".."]  # the storm's bars, one per delay
ROWS = [
    ("first-mount build", "first-mount build (s)"),
    ("mount ready", "mount ready (s)"),
    ("walk", "os.walk, fresh (s)"),
    ("stat after walk", "stat all, after walk (s)"),
    ("stat fresh mount", "stat all, fresh (s)"),
    ("read 1 cold", "read epoch, 1 reader, cold (s)"),
    ("read 1 warm", "read epoch, 1 reader, warm (s)"),
    ("read 8 cold", "read epoch, 8 readers, cold (s)"),
    ("read 8 warm", "read epoch, 8 readers, warm (s)"),
    ("peak RSS 3 epochs", "daemon peak RSS (MiB)"),
]


SHARED_WHO = ["none", "stage", "manual"]
SHARED_PANELS = [
    ("first file", "time to first file (s)"),
    ("epoch 1", "epoch 1, 8 readers (s)"),
    ("epoch 2", "epoch 2, 8 readers, cold (s)"),
    ("shared GB", "GB read from the shared fs"),
]


def shared_plot(doc: dict, dst: str) -> None:
    sh = doc["shared"]
    variants = [v for v, r in sh["results"].items() if r]
    if not variants:
        return
    fig, axes = plt.subplots(1, len(SHARED_PANELS), figsize=(14, 3.4))
    colors = ["tab:blue", "tab:orange"]
    width = 0.8 / len(variants)
    for ax, (key, title) in zip(axes, SHARED_PANELS, strict=True):
        for j, v in enumerate(variants):
            by = sh["results"][v].get(key, {})
            vals = [statistics.median(by[w]) if by.get(w) else 0 for w in SHARED_WHO]
            xs = [i + j * width for i in range(len(SHARED_WHO))]
            ax.bar(xs, vals, width, label=v, color=colors[j % 2])
            for x, w in zip(xs, SHARED_WHO, strict=True):
                if not by.get(w):  # failed or not run
                    ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=8)
        ax.set_xticks([i + width * (len(variants) - 1) / 2 for i in range(len(SHARED_WHO))])
        ax.set_xticklabels(SHARED_WHO, fontsize=9)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"shared filesystem (stormfs): reads capped at {sh['config']['read_mbps']:g} MB/s, "
        f"{sh['config']['delay_ms']} ms per metadata op; {sh['files']:,} files, "
        f"{doc['machine']['nproc']} cores",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(dst, dpi=90)
    plt.close(fig)


def main(src: str, dst: str) -> None:
    with open(src) as f:
        doc = json.load(f)
    if doc.get("shared"):
        shared_plot(doc, dst.removesuffix(".png") + "-shared.png")
    meds = {
        v: {row: {c: statistics.median(x) for c, x in by.items()} for row, by in r.items()}
        for v, r in doc["results"].items()
    }
    variants = list(meds)
    # one storm per delay (before issue 16: doc["storm"] alone): {delay: {row: {who: median}}}
    storms = {
        f"{st['config']['delay_ms']:g} ms": {
            row: {w: statistics.median(x) for w, x in by.items()}
            for row, by in st.items()
            if row.endswith("(s)")
        }
        for st in [doc.get("storm"), *doc.get("more_storms", [])]
        if st
    }
    storm_rows = list(dict.fromkeys(r for st in storms.values() for r in st))
    panels = len(ROWS) + len(storm_rows)
    cols = 3
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(15, 3.2 * rows))
    axes = axes.ravel()
    colors = ["tab:blue", "tab:orange", "tab:green"]  # gzip, noD-noF, tars
    for ax, (key, title) in zip(axes, ROWS, strict=False):
        who = [c for c in ORDER if any(c in meds[v].get(key, {}) for v in variants)]
        width = 0.8 / max(len(variants), 1)
        for j, v in enumerate(variants):
            vals = [meds[v].get(key, {}).get(c, 0) for c in who]
            xs = [i + j * width for i in range(len(who))]
            ax.bar(xs, vals, width, label=v, color=colors[j % len(colors)])
        ax.set_xticks([i + width * (len(variants) - 1) / 2 for i in range(len(who))])
        ax.set_xticklabels(who, rotation=30, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    for ax, key in zip(axes[len(ROWS) :], storm_rows, strict=False):
        who = ["unpacked", "imagenetfs"]
        width = 0.8 / max(len(storms), 1)
        for j, st in enumerate(storms.values()):
            by = st.get(key, {})
            xs = [i + j * width for i in range(len(who))]
            ax.bar(
                xs,
                [by.get(w, 0) for w in who],
                width,
                color=[STORM_COLORS[w] for w in who],
                alpha=1.0 if j == 0 else 0.55,
                hatch=HATCHES[j % len(HATCHES)] or None,
            )
        ax.set_xticks([i + width * (len(storms) - 1) / 2 for i in range(len(who))])
        ax.set_xticklabels(who, fontsize=9)
        ax.set_yscale("log")
        bars = ", ".join(
            f"{d} {HATCHES[j % len(HATCHES)] or 'solid'}" for j, d in enumerate(storms)
        )
        ax.set_title(f"storm: {key}\n({bars})", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[panels:]:
        ax.axis("off")
    fig.suptitle(
        f"{doc['command']}  —  {doc['machine']['nproc']} cores, {doc['machine']['kernel']}"
    )
    fig.tight_layout()
    fig.savefig(dst, dpi=90)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
