"""The real input pipeline (`scripts/bench.py --pipeline`): training's reads, decodes and
augmentations on the node's cores, through each contender.

torchvision's `ImageFolder` over a split's train tree, `RandomResizedCrop(224)`,
`RandomHorizontalFlip`, `ToTensor`, `Normalize`, a `DataLoader` with one worker per core
(benchlib/torch_epochs.py, run by an interpreter that has torch and torchvision: `python()`
finds the test environment, as the test suite does). Per round, per contender (the order
rotated every round): a fresh mount with caches dropped, a cold epoch (the folder scan
included), then a warm one on the same mount; images/s and, from /proc of the daemon and
its children (imagenetfs's workers; squashfuse_ll's three daemons), the daemon's CPU seconds
per 1,000 images; also the pipeline's own CPU (its main process and DataLoader workers: the
decoding, and the kernel's work on their behalf -- for the kernel's mount and the unpacked
tree all of the reading). The images: an equal number of each class's first train files (by
name), about `images` in all -- real-size JPEGs of the realistic set, as the read rows use.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from benchlib import contenders as C
from benchlib import data

#: Who the pipeline compares, in this order (those of --only that are here).
WHO = ["unpacked", "kernel", "squashfuse_ll", "imagenetfs", "floor"]
#: rows: (epoch, what) -> title
ROWS = {
    "cold images/s": "cold epoch, images/s",
    "warm images/s": "warm epoch, images/s",
    "cold daemon CPU s/1k": "cold epoch, daemon CPU s per 1,000 images",
    "warm daemon CPU s/1k": "warm epoch, daemon CPU s per 1,000 images",
    "cold pipeline CPU s/1k": "cold epoch, pipeline CPU s per 1,000 images (decoders + kernel)",
    "warm pipeline CPU s/1k": "warm epoch, pipeline CPU s per 1,000 images (decoders + kernel)",
    "cold scan s": "cold epoch: of which ImageFolder's scan, s",
}
SCRIPT = Path(__file__).with_name("torch_epochs.py")


def candidates() -> list[Path]:
    """Where torch may be: this interpreter, then the test environment the test command
    makes (scripts/test-prepare.sh: `$IMAGENETFS_PREFIX/test-venv`, default
    /opt/imagenetfs/test-venv)."""
    prefix = Path(os.environ.get("IMAGENETFS_PREFIX", "/opt/imagenetfs"))
    out = [Path(sys.executable), prefix / "test-venv" / "bin" / "python"]
    default = Path("/opt/imagenetfs/test-venv/bin/python")
    return out if default in out else [*out, default]


def python(given: Path | None) -> tuple[Path | None, str]:
    """The interpreter that imports torch and torchvision (`given`, else the first of
    `candidates()`), and a line saying which, or why there is none."""
    tried = [given] if given else candidates()
    said = []
    for exe in tried:
        if not exe.exists():
            said.append(f"{exe}: absent")
            continue
        r = subprocess.run(
            [str(exe), "-c", "import torch, torchvision; print(torch.__version__, "
             "torchvision.__version__)"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if r.returncode == 0:
            return exe, f"{exe} (torch {r.stdout.split()[0]}, torchvision {r.stdout.split()[1]})"
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        said.append(f"{exe}: {last}")
    return None, (
        "torch and torchvision do not import in "
        + "; ".join(said)
        + " -- the test command (`bash scripts/test.sh`, i.e. scripts/test-prepare.sh) makes "
        "the test environment that has them, or give --pipeline-python"
    )


def subset(work: Path, scale: data.Scale, images: int) -> tuple[Path, int]:
    """A file listing an equal share of each class's first train files (sorted by name),
    `images` in all or a little fewer; and how many it lists."""
    by_class: dict[str, list[str]] = {}
    for f in data.files(work, scale):
        if f.split == "train":
            by_class.setdefault(f.relpath.split("/", 1)[0], []).append(f.relpath)
    per = max(1, images // max(1, len(by_class)))
    chosen = [r for wnid in sorted(by_class) for r in sorted(by_class[wnid])[:per]]
    out = work / "pipeline" / f"{scale.name}-{len(chosen)}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(f"{r}\n" for r in chosen))
    return out, len(chosen)


class Epochs:
    """The torch process (benchlib/torch_epochs.py), started once, before any mount."""

    def __init__(self, exe: Path, work: Path) -> None:
        self.proc = subprocess.Popen(
            [str(exe), str(SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=work,  # never inside a mount
        )
        self.hello = self._answer()

    def _answer(self) -> dict[str, Any]:
        out: IO[str] | None = self.proc.stdout
        assert out is not None
        line = out.readline()
        if not line:
            raise RuntimeError(f"the pipeline process ended (exit {self.proc.wait()})")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"pipeline: {answer['error']}")
        return answer

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, RuntimeError, ValueError):
                self.ask(quit=True)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def one(
    epochs: Epochs,
    m: C.Mounted,
    listing: Path,
    n: int,
    seed: int,
    workers: int,
    batch: int,
) -> dict[str, float]:
    """A cold epoch then a warm one over `m`'s train tree (just mounted, caches dropped)."""
    out: dict[str, float] = {}
    epochs.ask(root=str(m.roots["train"]), subset=str(listing))
    for e, when in enumerate(("cold", "warm")):
        cpu0 = C.cpu_seconds(m.pids)
        r = epochs.ask(epoch=seed + e, workers=workers, batch=batch)
        daemon = C.cpu_seconds(m.pids) - cpu0
        if r["images"] != n:
            raise RuntimeError(f"pipeline: {r['images']} images in an epoch, expected {n}")
        out[f"{when} images/s"] = n / r["seconds"]
        if m.pids:
            out[f"{when} daemon CPU s/1k"] = 1000 * daemon / n
        out[f"{when} pipeline CPU s/1k"] = 1000 * r["cpu_s"] / n
        if when == "cold":
            out["cold scan s"] = r["scan_s"]
    return out


def section(pl: dict[str, Any]) -> list[str]:
    """results.md's part: one table per variant, images/s as a ratio to the unpacked tree."""
    import statistics

    cfg = pl["config"]
    md = [
        f"### the input pipeline ({cfg['images']:,} train images of {cfg['set']})\n",
        f"torchvision `ImageFolder` + `RandomResizedCrop(224)`, `RandomHorizontalFlip`, "
        f"`ToTensor`, `Normalize`; `DataLoader(batch_size={cfg['batch']}, shuffle=True, "
        f"num_workers={cfg['workers']})` (one per core), in {cfg['python']}. Per round and "
        "contender (the order rotated each round): fresh mount, caches dropped, a cold epoch "
        "(ImageFolder's scan included), then a warm one on the same mount. Medians of "
        f"{cfg['rounds']} interleaved round(s). In brackets: images/s ÷ the unpacked tree's "
        "(above 1: faster than local disk), or CPU ÷ squashfuse_ll's. Daemon CPU: user + "
        "system of the serving processes and their children (/proc); the kernel's mount and "
        "the unpacked tree have none (their work is in the pipeline's system time).\n",
    ]
    for variant, results in pl["results"].items():
        med = {row: {w: statistics.median(v) for w, v in by.items()} for row, by in results.items()}
        who = [w for w in WHO if any(w in by for by in med.values())]
        md += [
            f"#### {variant} images\n",
            "| | " + " | ".join(who) + " |",
            "|---|" + "---|" * len(who),
        ]
        for row, title in ROWS.items():
            by = med.get(row, {})
            base = by.get("unpacked") if "images/s" in row else by.get("squashfuse_ll")
            cells = []
            for w in who:
                v = by.get(w)
                if v is None:
                    cells.append("–")
                elif base and w != ("unpacked" if "images/s" in row else "squashfuse_ll"):
                    cells.append(f"{v:,.3g} ({v / base:.2f}×)")
                else:
                    cells.append(f"{v:,.3g}")
            md.append(f"| {title} | " + " | ".join(cells) + " |")
        md.append("")
        goals = []
        for when, goal in (("warm", 0.95), ("cold", 0.9)):
            i, u = (
                med.get(f"{when} images/s", {}).get("imagenetfs"),
                med.get(f"{when} images/s", {}).get("unpacked"),
            )
            if i and u:
                verdict = "met" if i / u >= goal else "NOT met"
                goals.append(
                    f"- {when}: imagenetfs ÷ the unpacked tree {i / u:.2f} (goal ≥ {goal}) — "
                    f"{verdict}"
                )
        for when in ("cold", "warm"):
            by = med.get(f"{when} daemon CPU s/1k", {})
            i, s = by.get("imagenetfs"), by.get("squashfuse_ll")
            if i is not None and s:
                verdict = "met" if i <= s else "NOT met"
                goals.append(
                    f"- {when}: imagenetfs's daemon CPU per image ÷ squashfuse_ll's {i / s:.2f} "
                    f"(goal ≤ 1) — {verdict}"
                )
        md += [f"Goals ({variant}):", "", *goals, ""]
        runs = pl.get("runs", {}).get(variant)
        if runs:
            md += [f"Each round ({variant}; images/s cold / warm):", ""]
            for i, rnd in enumerate(runs):
                md.append(
                    f"- round {i + 1}: "
                    + ", ".join(
                        f"{w} {r['cold images/s']:,.0f} / {r['warm images/s']:,.0f}"
                        for w, r in rnd.items()
                    )
                )
            md.append("")
    for w, why in pl.get("failed", {}).items():
        md.append(f"- {w} failed: {why}")
    return md
