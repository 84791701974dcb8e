"""scripts/bench.py's report: results.json -> results.md (tables, storm, shared filesystem, the
goals of issues 6, 13, 15 and 16) + PNGs.

`render(doc)` needs only the JSON document, so a run can be re-rendered without measuring
again (`scripts/bench.py --render docs/bench/results.json`). Every ratio in the tables is
contender / imagenetfs: above 1, imagenetfs is faster (times) or smaller (memory); in the
table of the official tars (`--tars`), contender / imagenetfs-tar.
"""

from __future__ import annotations

import json
import statistics
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib import pipeline

META_ROWS = ["first-mount build", "mount ready", "walk", "stat after walk", "stat fresh mount"]
#: The contenders over the official tars (`--tars`), their table's variant and its base.
TAR_WHO = ["imagenetfs-tar", "ratarmount-tar", "imagenetfs-packed"]
TARS = "tars"
#: The read epochs (each with its speed and CPU rows), then the memory row of the reads.
EPOCH_ROWS = ["read 1 cold", "read 1 warm", "read 8 cold", "read 8 warm", "read 8 fresh cached"]
READ_ROWS = [*EPOCH_ROWS, "peak RSS 3 epochs", "read 1 sorted cold"]
#: The FUSE floor (benchlib/contenders.py: Floor): every epoch also as a fraction of it.
FLOOR = "floor"
#: imagenetfs's epochs that issue 28 wants at >= 0.8x the floor.
FLOOR_GOAL_ROWS = ["read 8 fresh cached", "read 8 warm"]
ROW_TITLES = {
    "first-mount build": "index / first-mount build (s)",
    "mount ready": "mount ready, built index (s)",
    "walk": "os.walk whole tree, fresh mount (s)",
    "stat after walk": "os.stat every file, after the walk (s)",
    "stat fresh mount": "os.stat every file, fresh mount (s)",
    "read 1 cold": "read epoch, 1 reader, cold (s)",
    "read 1 warm": "read epoch, 1 reader, warm (s)",
    "read 8 cold": "read epoch, 8 readers, cold (s)",
    "read 8 warm": "read epoch, 8 readers, warm (s)",
    "read 8 fresh cached": "read epoch, 8 readers, fresh mount, images cached (s)",
    "read 1 sorted cold": "read epoch, 1 reader, sorted order, cold (s)",
    "peak RSS 3 epochs": "daemon peak RSS after 3 epochs (MiB)",
    "PSS 3 epochs": "daemon PSS after 3 epochs (MiB)",
    "USS 3 epochs": "daemon USS after 3 epochs (MiB)",
    "PSS anon 3 epochs": "daemon PSS after 3 epochs, anonymous memory (MiB)",
    "meta RSS": "daemon RSS after walk + stat (MiB)",
    "meta PSS": "daemon PSS after walk + stat (MiB)",
    "meta USS": "daemon USS after walk + stat (MiB)",
    "meta PSS anon": "daemon PSS after walk + stat, anonymous memory (MiB)",
    "pack": "imagenetfs pack, alone (s)",
}
#: Memory rows of the read workload (after the third epoch of 8 readers) and of the metadata
#: workload (after the walk and the stat of every file): row -> key of contenders.memory().
MEM_ROWS = {
    "peak RSS 3 epochs": "hwm",
    "PSS 3 epochs": "pss",
    "USS 3 epochs": "uss",
    "PSS anon 3 epochs": "pss_anon",
}
META_MEM_ROWS = {
    "meta RSS": "rss",
    "meta PSS": "pss",
    "meta USS": "uss",
    "meta PSS anon": "pss_anon",
}
#: Per read epoch (EPOCH_ROWS): its speed and CPU seconds per GB read, by whom.
CPU_WHAT = {
    "MB/s": "MB/s",
    "daemon CPU s/GB": "CPU s per GB, daemon",
    "readers CPU s/GB": "CPU s per GB, readers",
    "CPU s/GB": "CPU s per GB, daemon + readers",
}
#: The epoch whose speed and CPU rows the tables show (all four are in results.json).
CPU_TABLE_EPOCH = "read 8 cold"


def cpu_row(epoch: str, what: str) -> str:
    """The results row of `what` (CPU_WHAT) in a read epoch, e.g. "read 8 cold: daemon CPU s/GB"."""
    return f"{epoch}: {what}"


for _epoch in EPOCH_ROWS:
    for _what, _title in CPU_WHAT.items():
        ROW_TITLES[cpu_row(_epoch, _what)] = f"{ROW_TITLES[_epoch].removesuffix(' (s)')}: {_title}"
#: Rows without a ratio in the tables (a speed: its time's row has one).
NO_RATIO = {cpu_row(e, "MB/s") for e in EPOCH_ROWS}
Medians = dict[str, dict[str, float]]
FULL_ENTRIES = 1_431_167  # files of the full metadata set: ImageNet's entry count
SHARED_WHO = ["none", "stage", "manual"]
SHARED_ROWS = {
    "first file": "time to first file (s): from the mount command; manual: from the cp",
    "epoch 1": "epoch 1, 8 readers (s)",
    "local copy": "images on local disk after (s): manual: the cp; stage: staging seen done",
    "epoch 2": "epoch 2, 8 readers, caches dropped (s); stage: once staged",
    "shared GB": "read from the shared filesystem, whole run (GB)",
    "shared GB epoch 2": "read from the shared filesystem in epoch 2 (GB)",
    "shared metadata ops": "metadata operations on the shared filesystem, whole run",
}


def medians(results: dict[str, dict[str, list[float]]]) -> Medians:
    return {row: {c: statistics.median(v) for c, v in cs.items()} for row, cs in results.items()}


def _set_of(desc: str, variant: str) -> str:
    """'real-100x100 (25,000 files ...)' -> the same for the variant's set directory."""
    name, _, rest = desc.partition(" ")
    if variant == "gzip" or desc == "not run":
        return desc
    suffix = "official" if variant == TARS else variant
    return f"{name.removesuffix('-gzip')}-{suffix} {rest}"


def table(variant: str, med: Medians, who: list[str], sets: dict[str, str]) -> str:
    tars = variant == TARS
    who = [c for c in who if (c in TAR_WHO) == tars or c == "unpacked"]
    base_who = "imagenetfs-tar" if tars else "imagenetfs"
    title = "the official tars (ILSVRC2012 downloads)" if tars else f"{variant} images"
    out = [
        f"### {title}\n",
        f"metadata rows: {_set_of(sets['meta'], variant)}; "
        f"read rows: {_set_of(sets['reads'], variant)}\n",
        "| workload | " + " | ".join(who) + " |",
        "|---|" + "---|" * len(who),
    ]
    rows = [*META_ROWS[:1], "pack", *META_ROWS[1:]] if tars else list(META_ROWS)
    rows += [r for r in META_MEM_ROWS if r in med]  # not in results before issue 16
    rows += READ_ROWS + [r for r in MEM_ROWS if r in med and r not in READ_ROWS]
    rows += [cpu_row(CPU_TABLE_EPOCH, w) for w in CPU_WHAT if cpu_row(CPU_TABLE_EPOCH, w) in med]
    for row in rows:
        cells = []
        base = med.get(row, {}).get(base_who)
        for c in who:
            v = med.get(row, {}).get(c)
            if v is None:
                cells.append("n/a")
            elif c == base_who or not base or row in NO_RATIO:
                cells.append(f"{v:,.3g}")
            else:
                cells.append(f"{v:,.3g} ({v / base:.2f}×)")
        out.append(f"| {ROW_TITLES[row]} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def floor_table(variant: str, med: Medians, who: list[str]) -> str:
    """Every epoch's speed as a fraction of the FUSE floor's (floor time ÷ contender time),
    with the floor's own files/s; "" when the floor was not measured."""
    if not any(FLOOR in med.get(r, {}) for r in EPOCH_ROWS):
        return ""
    tars = variant == TARS
    who = [c for c in who if c == "unpacked" or (c != FLOOR and (c in TAR_WHO) == tars)]
    out = [
        f"Speed as a fraction of the FUSE floor's ({variant}; floor time ÷ contender time: "
        "1 = as fast as a FUSE server doing nothing but answer; above 1 = faster than any "
        "FUSE filesystem can be on this kernel). The floor's daemon CPU s per GB in brackets.\n",
        "| epoch | floor (s) | " + " | ".join(who) + " |",
        "|---|---|" + "---|" * len(who),
    ]
    for row in EPOCH_ROWS:
        f = med.get(row, {}).get(FLOOR)
        if not f:
            continue
        cpu = med.get(cpu_row(row, "daemon CPU s/GB"), {}).get(FLOOR)
        cells = [f"{f:,.3g}" + (f" ({cpu:.2g})" if cpu is not None else "")]
        for c in who:
            v = med.get(row, {}).get(c)
            cells.append(f"{f / v:.2f}" if v else "n/a")
        out.append(f"| {ROW_TITLES[row].removesuffix(' (s)')} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def floor_goals(meds: dict[str, Medians], variants: list[str]) -> list[str]:
    """Issue 28 item 3: imagenetfs's 8-reader epochs as a fraction of the floor."""
    out = []
    for v in variants:
        for row in FLOOR_GOAL_ROWS:
            f = meds.get(v, {}).get(row, {}).get(FLOOR)
            i = meds.get(v, {}).get(row, {}).get("imagenetfs")
            out.append(
                _goal(
                    f"{ROW_TITLES[row].removesuffix(' (s)')} ({v}): imagenetfs speed ÷ the "
                    "floor's (goal ≥ 0.8)",
                    f / i if f and i else None,
                    lambda x: x >= 0.8,
                )
            )
    return out


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.3g}"


def storms(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every storm of a run, one per delay (before issue 16: one, in doc["storm"])."""
    return [st for st in [doc.get("storm"), *doc.get("more_storms", [])] if st]


def storm_at(doc: dict[str, Any], delay_ms: float) -> dict[str, Any] | None:
    return next((st for st in storms(doc) if st["config"]["delay_ms"] == delay_ms), None)


def storm_medians(st: dict[str, Any] | None) -> Medians:
    return storm_table(st)[1] if st else {}


def storm_table(st: dict[str, Any]) -> tuple[str, Medians]:
    med: Medians = {}
    delay = f"{st['config']['delay_ms']:g} ms"
    out = [
        f"| storm, {delay} per op | unpacked tree | imagenetfs | unpacked ÷ imagenetfs |",
        "|---|---|---|---|",
    ]
    for row, by in st.items():
        if row in ("config", "files", "variant") or row.endswith("ops by kind"):
            continue
        med[row] = {w: statistics.median(v) for w, v in by.items()}
        u, i = med[row].get("unpacked"), med[row].get("imagenetfs")
        ratio = f"{u / i:.1f}×" if u is not None and i else "–"
        out.append(f"| {row} | {_fmt(u)} | {_fmt(i)} | {ratio} |")
    kinds = []
    for row, by in st.items():
        if row.endswith("ops by kind"):
            for who, runs in by.items():
                nonzero = {k: v for k, v in runs[-1].items() if v}
                kinds.append(f"- {row.removesuffix(': ops by kind')}, {who}: {nonzero}")
    if kinds:
        out += [
            "",
            f"Operations the backing store received at {delay} (last run, all kinds):",
            "",
            *kinds,
        ]
    return "\n".join(out) + "\n", med


def _goal(text: str, v: float | None, ok: Callable[[float], bool] | None) -> str:
    if v is None:
        return f"- {text}: not measured"
    verdict = "reported" if ok is None else ("met" if ok(v) else "NOT met")
    return f"- {text}: {v:.3g} — {verdict}"


def shared_goals(med: Medians) -> list[str]:
    """Issue 13 point 4, from one variant's medians."""

    def get(row: str, who: str) -> float | None:
        return med.get(row, {}).get(who)

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    return [
        _goal("time to first file with stage, s (goal ≤ 1)", get("first file", "stage"),
              lambda v: v <= 1.0),
        _goal("epoch 2 with stage: speed ÷ manual's (goal ≥ 0.9)",
              ratio(get("epoch 2", "manual"), get("epoch 2", "stage")), lambda v: v >= 0.9),
        _goal("epoch 1 with stage: time ÷ none's (goal ≤ 1.10)",
              ratio(get("epoch 1", "stage"), get("epoch 1", "none")), lambda v: v <= 1.10),
    ]  # fmt: skip


def shared_section(doc: dict[str, Any]) -> list[str]:
    sh = doc["shared"]
    cfg = sh["config"]
    md = [
        f"### shared filesystem (issue 13; {doc['sets']['reads']})\n",
        "The images and listings behind scripts/storm/stormfs.c: "
        f"{cfg['delay_ms']} ms per metadata operation, at most {cfg['inflight']} at once, "
        f"entry/attr timeout {cfg['timeout_s']} s, reads capped at {cfg['read_mbps']:g} MB/s in "
        "total, the client's page cache kept (the first read of each byte pays, repeated reads "
        "of cached bytes are local). Contenders: `none` = imagenetfs with --source on it; "
        "`stage` = the same with `--stage` to local disk"
        f"{' --stage-rate ' + cfg['stage_rate'] if cfg.get('stage_rate') else ''}; `manual` = "
        "`cp` of the images and listings to local disk, then imagenetfs from the copy. Fresh "
        "stormfs mount, empty local directories and dropped caches before each; 8 readers, "
        "every file once in random order per epoch (the same orders for all); caches dropped "
        "again before epoch 2 (ImageNet does not fit a node's page cache: an epoch reads from "
        "storage). Staging is seen done through the mount's registry state (published every "
        "~2 s). Ratios: time ÷ time.\n",
    ]
    for variant, results in sh["results"].items():
        med = medians(results)
        failed = sh.get("failed", {}).get(variant, {})
        idx = sh.get("index", {}).get(variant, "")
        md += [
            f"#### {variant} images ({sh['image_bytes'].get(variant, 0) / 1e9:.2f} GB of "
            f"images; {idx})\n",
            "| | " + " | ".join(SHARED_WHO) + " | stage ÷ none | stage ÷ manual |",
            "|---|" + "---|" * (len(SHARED_WHO) + 2),
        ]
        for row, title in SHARED_ROWS.items():
            by = med.get(row, {})
            cells = [
                "failed" if w in failed and w not in by else _fmt(by.get(w)) for w in SHARED_WHO
            ]
            st = by.get("stage")
            for other in ("none", "manual"):
                o = by.get(other)
                cells.append(f"{st / o:.2f}×" if st is not None and o else "–")
            md.append(f"| {title} | " + " | ".join(cells) + " |")
        md += ["", f"Goals ({variant}):", "", *shared_goals(med)]
        md += [f"- {w} failed: {why}" for w, why in failed.items()]
        staging = sh.get("staging", {}).get(variant)
        if staging:
            images = ", ".join(
                f"{i.get('name')} {i.get('state')}" for i in staging.get("images", [])
            )
            md.append(
                f"- staging (last run): {staging.get('total', 0) / 1e9:.2f} GB in "
                f"{staging.get('seconds', 0):.1f} s by its own clock, "
                f"{staging.get('rate', 0) / 1e6:.0f} MB/s; {images}"
            )
        md.append("")
    if any(sh["results"].values()):
        md += ["![shared filesystem](results-shared.png)", ""]
    return md


def goals(med: Medians, storm_med: Medians) -> list[str]:
    """Issue 6 part 3, as ratios measured in this run."""

    def speedup(row: str, peer: str) -> float | None:
        a, b = med.get(row, {}).get("imagenetfs"), med.get(row, {}).get(peer)
        return b / a if a and b else None  # peer time / our time

    line = _goal

    walk = speedup("walk", "squashfuse_ll")
    out = [
        line(
            "random reads, 8 readers, first epoch: imagenetfs speed ÷ squashfuse_ll (goal ≥ 1.0)",
            speedup("read 8 cold", "squashfuse_ll"),
            lambda v: v >= 1.0,
        ),
        line(
            "random reads, 8 readers, first epoch: imagenetfs speed ÷ ratarmount (goal ≥ 3)",
            speedup("read 8 cold", "ratarmount"),
            lambda v: v >= 3.0,
        ),
        line(
            "random reads, 8 readers, second epoch: imagenetfs speed ÷ squashfuse_ll (goal ≥ 1.5)",
            speedup("read 8 warm", "squashfuse_ll"),
            lambda v: v >= 1.5,
        ),
        line(
            "fraction of the kernel mount's speed, 8 readers, first epoch",
            speedup("read 8 cold", "kernel"),
            None,
        ),
        line(
            "fraction of the kernel mount's speed, 8 readers, second epoch",
            speedup("read 8 warm", "kernel"),
            None,
        ),
        line(
            "os.walk: imagenetfs time ÷ squashfuse_ll time (goal ≤ 1.5)",
            1 / walk if walk else None,
            lambda v: v <= 1.5,
        ),
        line(
            "mount ready with a built index, seconds (goal < 1)",
            med.get("mount ready", {}).get("imagenetfs"),
            lambda v: v < 1.0,
        ),
    ]
    su = storm_med.get("epoch 8 readers cold (s)", {})
    out.append(
        line(
            "metadata storm, 8 readers, first epoch: unpacked time ÷ imagenetfs time (goal ≥ 10)",
            su["unpacked"] / su["imagenetfs"]
            if su.get("imagenetfs") and su.get("unpacked")
            else None,
            lambda v: v >= 10,
        )
    )
    sp = storm_med.get("epoch 8 readers cold: backing metadata ops per file", {})
    out.append(
        line(
            "metadata storm: backing-store metadata ops per file read by imagenetfs (goal 0)",
            sp.get("imagenetfs"),
            lambda v: v == 0,
        )
    )
    rss = med.get("peak RSS 3 epochs", {}).get("imagenetfs")
    out.append(line("imagenetfs daemon peak RSS after 3 epochs, MiB (see rss_by_epoch)", rss, None))
    return out


def issue16_goals(doc: dict[str, Any], meds: dict[str, Medians]) -> list[str]:
    """Issue 16, as far as one run of the benchmark measures it."""
    variants = [v for v in doc.get("variants", list(meds)) if v != TARS and meds.get(v)]
    out: list[str] = []

    def get(v: str, row: str, who: str) -> float | None:
        return meds.get(v, {}).get(row, {}).get(who)

    def over(v: str, row: str, a: str, b: str) -> float | None:
        """a's value ÷ b's in variant v."""
        x, y = get(v, row, a), get(v, row, b)
        return x / y if x is not None and y else None

    # 1. zero-copy reads: -noD -noF images against the unpacked tree, and what each costs
    nodf = "noD-noF"
    e8 = CPU_TABLE_EPOCH
    out.append(
        _goal(
            f"first epoch, 8 readers, {nodf} images: imagenetfs speed ÷ the unpacked tree's on "
            "local disk (goal ≥ 0.85)",
            over(nodf, e8, "unpacked", "imagenetfs"),
            lambda v: v >= 0.85,
        )
    )
    for who in ("imagenetfs", "unpacked"):
        mbs = get(nodf, cpu_row(e8, "MB/s"), who)
        if mbs is None:
            continue
        d = get(nodf, cpu_row(e8, "daemon CPU s/GB"), who)
        r = get(nodf, cpu_row(e8, "readers CPU s/GB"), who)
        cpu = f"readers {_fmt(r)} CPU s per GB (no daemon)"
        if d is not None:
            cpu = f"daemon {_fmt(d)} + readers {_fmt(r)} CPU s per GB"
        out.append(f"- first epoch, 8 readers, {nodf}, {who}: {mbs:,.0f} MB/s, {cpu}")
    # 2. lookups and stats, on the metadata set
    for v in variants:
        for row in ("stat fresh mount", "stat after walk"):
            out.append(
                _goal(
                    f"{ROW_TITLES[row].removesuffix(' (s)')} ({v}): imagenetfs time ÷ "
                    "squashfuse_ll's (goal ≤ 1.0)",
                    over(v, row, "imagenetfs", "squashfuse_ll"),
                    lambda x: x <= 1.0,
                )
            )
        walks = doc["results"].get(v, {}).get("walk", {})
        pairs = list(zip(walks.get("imagenetfs", []), walks.get("squashfuse_ll", []), strict=False))
        if not pairs:
            out.append(f"- os.walk ({v}): imagenetfs time ÷ squashfuse_ll's: not measured")
        else:
            ratios = [a / b for a, b in pairs if b]
            ok = sum(r <= 1.0 for r in ratios)
            verdict = "met" if ok == len(ratios) >= 3 else "NOT met"
            if ok == len(ratios) < 3:
                verdict = f"met in {ok} of {ok} (fewer readings than the goal's 3)"
            out.append(
                f"- os.walk ({v}): imagenetfs time ÷ squashfuse_ll's, each reading (goal ≤ 1.0 "
                f"in three of three): {', '.join(f'{r:.3g}' for r in ratios)} — {verdict}"
            )
    # 3. second epochs
    for v in variants:
        out.append(
            _goal(
                f"second epoch, 8 readers ({v}): imagenetfs speed ÷ the kernel mount's "
                "(goal ≥ 0.8)",
                over(v, "read 8 warm", "kernel", "imagenetfs"),
                lambda x: x >= 0.8,
            )
        )
    # 4. memory: PSS at the metadata set's entry count, after 3 epochs, and over the epochs
    meta_set = doc.get("sets", {}).get("meta", "?")
    full = f"{FULL_ENTRIES:,} files" in meta_set
    for v in variants:
        procs = doc.get("daemon_procs", {}).get(f"{v}/imagenetfs")
        who = f"{procs} processes" if procs else "all its processes"
        out.append(
            _goal(
                f"imagenetfs PSS after walk + stat of the metadata set "
                f"({_set_of(meta_set, v)}), MiB "
                "(goal ≤ 64 with 2 workers at the full entry count)",
                get(v, "meta PSS", "imagenetfs"),
                lambda x: x <= 64,
            )
            + ("" if full or "meta PSS" not in meds.get(v, {}) else " (not the full entry count)")
        )
        out.append(
            _goal(
                "of which anonymous memory (the rest: pages of the index file the workers "
                "have touched, shared page cache), MiB",
                get(v, "meta PSS anon", "imagenetfs"),
                None,
            )
        )
        out.append(
            _goal(
                f"imagenetfs PSS after 3 epochs of 8 readers ({v}, {who}), MiB (goal ≤ 64)",
                get(v, "PSS 3 epochs", "imagenetfs"),
                lambda x: x <= 64,
            )
        )
        runs = doc.get("pss_by_epoch", {}).get(f"{v}/imagenetfs", [])
        growth = max((r[-1] / r[0] - 1 for r in runs if r and r[0]), default=None)
        out.append(
            _goal(
                f"imagenetfs PSS growth from epoch 1 to epoch 3 ({v}), largest of the runs, % "
                "(goal: flat, here ≤ 5%)",
                None if growth is None else 100 * growth,
                lambda x: x <= 5,
            )
        )
    # 5. the storm at 5 ms per operation
    st5 = storm_at(doc, 5.0)
    su = storm_medians(st5).get("epoch 8 readers cold (s)", {})
    variant = f" ({st5.get('variant', 'gzip')} images)" if st5 else ""
    out.append(
        _goal(
            f"metadata storm at 5 ms per operation, 8 readers, first epoch{variant}: "
            "unpacked time ÷ imagenetfs time (goal ≥ 10, over -noD -noF images)",
            su["unpacked"] / su["imagenetfs"]
            if su.get("imagenetfs") and su.get("unpacked")
            else None,
            lambda x: x >= 10,
        )
    )
    return out


def tar_goals(meds: dict[str, Medians], sets: dict[str, str]) -> list[str]:
    """Issue 15, as ratios measured in this run: imagenetfs over the official tars against
    ratarmount over the same tars; the packed images against the default gzip images."""
    tars, gzip = meds.get(TARS, {}), meds.get("gzip", {})

    def ratio(med_a: Medians, a: str, med_b: Medians, b: str, row: str) -> float | None:
        """a's time / b's time: b's speed over a's."""
        x, y = med_a.get(row, {}).get(a), med_b.get(row, {}).get(b)
        return x / y if x and y else None

    build = tars.get("first-mount build", {})
    return [
        f"Index build on {_set_of(sets['meta'], TARS)}; the goals of the index build are "
        f"for the full entry count ({FULL_ENTRIES:,} files).\n",
        _goal(
            "index build: ratarmount-tar time ÷ imagenetfs-tar time (goal ≥ 5)",
            ratio(tars, "ratarmount-tar", tars, "imagenetfs-tar", "first-mount build"),
            lambda v: v >= 5,
        ),
        _goal(
            "index build: imagenetfs-tar, seconds (goal < 60)",
            build.get("imagenetfs-tar"),
            lambda v: v < 60,
        ),
        _goal(
            "reads, 8 readers, first epoch: imagenetfs-tar speed ÷ ratarmount-tar (goal ≥ 2)",
            ratio(tars, "ratarmount-tar", tars, "imagenetfs-tar", "read 8 cold"),
            lambda v: v >= 2,
        ),
        _goal(
            "reads, 8 readers, second epoch: imagenetfs-tar speed ÷ ratarmount-tar (goal ≥ 8)",
            ratio(tars, "ratarmount-tar", tars, "imagenetfs-tar", "read 8 warm"),
            lambda v: v >= 8,
        ),
        _goal(
            "reads, 8 readers, first epoch: imagenetfs-packed speed ÷ imagenetfs over the "
            "gzip images (goal ≥ 2)",
            ratio(gzip, "imagenetfs", tars, "imagenetfs-packed", "read 8 cold"),
            lambda v: v >= 2,
        ),
        _goal(
            "reads, 8 readers, first epoch: imagenetfs-packed speed ÷ ratarmount-tar",
            ratio(tars, "ratarmount-tar", tars, "imagenetfs-packed", "read 8 cold"),
            None,
        ),
    ]


def render(doc: dict[str, Any]) -> str:
    meds = {v: medians(r) for v, r in doc["results"].items()}
    variants = doc.get("variants", list(meds))
    who = doc.get("contenders") or [
        c
        for c in ["imagenetfs", "kernel", "squashfuse", "squashfuse_ll", "ratarmount", "unpacked"]
        if c not in doc["unavailable"]
    ]
    m = doc["machine"]
    md = [
        f"# imagenetfs vs peers{' (--quick)' if doc.get('quick') else ''}\n",
        f"Command: `{doc['command']}`\n",
        f"Machine: {m['nproc']} cores, {m['ram_gib']} GiB RAM, kernel {m['kernel']}, Python "
        f"{m['python']}, libfuse {m['libfuse']}, squashfuse {m['squashfuse']}, "
        f"{m['ratarmount']}; imagenetfs {m['imagenetfs_commit']} from {m['imagenetfs_src']}. "
        f"Started {m['date']}, took {m.get('wall_s', '?')} s. The machine is shared with other "
        f"work (load average {m['loadavg_start'][0]:.1f} at the start, "
        f"{m.get('loadavg_end', [0])[0]:.1f} at the end): numbers are noisy.\n",
        f"Medians of {doc['repeat']} run(s) (metadata workloads: {doc['meta_repeat']}). Cells: "
        "value (contender ÷ imagenetfs; above 1: imagenetfs faster or smaller). Caches "
        f"{'dropped' if m.get('caches_dropped') else 'NOT dropped (not root)'} before every "
        "cold measurement; cold = fresh mount + dropped caches, warm = the next epoch on the "
        "same mount. Files compared: every file of the train, val and test images, at the "
        "same paths inside each image (imagenetfs: train/, val/<wnid>/, test/). The unpacked "
        "tree is measured once and shown under each variant. RSS: VmHWM of the daemon "
        "process(es) serving the mount (the three per-image daemons summed for squashfuse and "
        "ratarmount). PSS and USS (from /proc/<pid>/smaps_rollup; rows absent before issue "
        "16), summed over the same processes and their children (imagenetfs: the supervisor "
        "and its workers): PSS shares each page among the processes mapping it, so pages the "
        "workers share with the supervisor count once; USS = Private_Clean + Private_Dirty. "
        "CPU s per GB: user + system seconds per 10^9 bytes read, of the daemon process(es) "
        "and their children (/proc/<pid>/stat; n/a for the kernel mount and the unpacked "
        "tree, whose work is in the kernel) and of the reader processes (their system time "
        "holds the kernel's work on their behalf; kernel threads, e.g. the loop device's, are "
        "not counted).\n",
    ]
    if TARS in doc.get("variants", []):
        md.append(
            "The official tars: the same files (names, sizes, a sample byte for byte checked) "
            "as the ILSVRC2012 downloads: a train tar of per-class tars, a val tar, a test tar "
            "(`test/<file>`), the devkit. ratarmount-tar: one `ratarmount --recursive` daemon "
            "per tar (files at `<wnid>.tar/<file>`, `<file>`, `test/<file>`; its three "
            "indexes built at once, RSS summed); imagenetfs-tar: one `imagenetfs mount "
            "--source` of the tars; imagenetfs-packed: `imagenetfs pack` (which indexes its source "
            "first), then a mount of the packed set (first-mount build = pack + first mount). "
            "Ratios in that table: contender ÷ imagenetfs-tar.\n"
        )
    md += [f"Note: {n}\n" for n in doc.get("notes", [])]
    md += [f"- {n}: not run: {why}" for n, why in doc["unavailable"].items()]
    md.append("")
    for variant in variants:
        if meds.get(variant):
            md.append(table(variant, meds[variant], who, doc["sets"]))
            floors = floor_table(variant, meds[variant], who)
            if floors:
                md.append(floors)
    all_storms = storms(doc)
    if all_storms:
        st = all_storms[0]
        delays = " and ".join(f"{x['config']['delay_ms']:g}" for x in all_storms)
        md += [
            f"### metadata storm ({doc['sets']['reads']}, {st.get('variant', 'gzip')} images)\n",
            "Backing store: scripts/storm/stormfs.c mounted over the work dir (unpacked tree + "
            f"images): {delays} ms per LOOKUP/GETATTR/OPENDIR/READDIR/OPEN/"
            f"STATFS/READLINK (one table each), at most {st['config']['inflight']} served at "
            f"once, reads free, entry/attr timeout {st['config']['timeout_s']} s. imagenetfs: "
            "--source = the images through stormfs, index on local disk built beforehand. "
            "Fresh stormfs mount and dropped caches before each measurement.\n",
        ]
        md += [storm_table(x)[0] for x in all_storms]
    # issue 6's storm: 0.5 ms per operation (a run before issue 16: its only storm)
    storm_med = storm_medians(storm_at(doc, 0.5) or (all_storms or [None])[0])
    if "shared" in doc:
        md += shared_section(doc)
    md += ["### issue 6 goals (gzip images)\n", *goals(meds.get("gzip", {}), storm_med), ""]
    if meds.get(TARS):
        md += ["### issue 15 goals (the official tars)\n", *tar_goals(meds, doc["sets"]), ""]
    md += ["### issue 16 goals\n", *issue16_goals(doc, meds), ""]
    image_variants = [v for v in variants if v != TARS and meds.get(v)]
    if any(FLOOR in meds[v].get(r, {}) for v in image_variants for r in EPOCH_ROWS):
        md += ["### issue 28 goals: the FUSE floor\n", *floor_goals(meds, image_variants), ""]
    if doc.get("pipeline"):
        md += pipeline.section(doc["pipeline"])
    for what in ("rss", "pss", "uss", "pss_anon"):
        if doc.get(f"{what}_by_epoch"):
            md += [f"{what.upper()} (MiB) after each of the 3 epochs, per run:", ""]
            md += [
                f"- {k}: {[[round(x, 1) for x in run] for run in v]}"
                for k, v in doc[f"{what}_by_epoch"].items()
            ]
            md.append("")
    if doc.get("errors"):
        md += ["### failures\n", *(f"- {e}" for e in doc["errors"]), ""]
    return "\n".join(md)


def write(json_path: Path, venv: Path) -> str:
    """results.md and results.png beside `json_path`; returns the Markdown."""
    doc = json.loads(json_path.read_text())
    text = render(doc)
    json_path.with_suffix(".md").write_text(text)
    plot = subprocess.run(
        [
            str(venv / "bin" / "python"),
            str(Path(__file__).with_name("plot.py")),
            str(json_path),
            str(json_path.with_suffix(".png")),
        ],
        capture_output=True,
        text=True,
    )
    if plot.returncode != 0:
        text += f"\n(plot failed: {plot.stderr.strip()[-300:]})\n"
    return text
