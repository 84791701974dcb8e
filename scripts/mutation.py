#!/usr/bin/env python3
"""Mutation testing of the reader and serving core with cosmic-ray (a uniform random sample).

    git -C REPO worktree add --detach /tmp/mut HEAD       # a checkout of its own (see below)
    python3 -m venv /tmp/mut-venv
    /tmp/mut-venv/bin/pip install -e '/tmp/mut[test]' 'cosmic-ray==8.7.0'
    cd /tmp/mut && mkdir -p .mutation && nice -n 19 /tmp/mut-venv/bin/python scripts/mutation.py \\
        --sample 80 --seed 30 --budget-minutes 65 > .mutation/run.log 2>&1
    cd /tmp/mut && nice -n 19 /tmp/mut-venv/bin/python scripts/mutation.py --recheck \\
        --budget-minutes 15 >> .mutation/run.log 2>&1          # survivors vs. wider tests
    /tmp/mut-venv/bin/python scripts/mutation.py --report      # counts and every survivor

Modules: ops.py, squashfs.py, archive.py, index.py, views/tree.py in imagenetfs/. For each,
cosmic-ray (`cosmic-ray init`) lists every mutant into `.mutation/<module>.sqlite`; mutants that
only change a type annotation are set aside (every module has `from __future__ import annotations`,
so annotations are strings never evaluated: such a mutant is equivalent by construction); of
the rest `--sample` per module are drawn with `random.Random(seed)`, and the draws of all modules
are run interleaved, so a run stopped by `--budget-minutes` still holds a uniform sample of
each module (the first k of a random permutation). A re-run goes on where the last one
stopped. `--report` prints per module: mutants, annotation-only, run, killed, timed out,
survived, the survival rate with a 95% Wilson interval, and each survivor's diff.

Each mutant is applied by cosmic-ray to the module file *on disk* and the module's tests run
in a new process: the daemons those tests start as subprocesses import the same editable
install, so they run the mutant too (mutmut 3's trampolines live in a copy under `mutants/`
that a daemon started as a subprocess would not import). Because the files are rewritten in
place, run this in a checkout of its own, installed editable into an environment of its own,
never in the one you are editing or testing.

Per module, a selection of test files that exercises it and takes seconds, not the full suite
(no Slurm, install, `slow`, or tests editing system state such as /etc/fuse.conf); `-x` stops at
the first failure; pytest's per-test `--timeout` and a per-mutant timeout end a mutant that
hangs (counted as killed, listed as timed out). `--recheck` runs the survivors again against
`WIDER` test files that also reach the module (slower, or mounting more); a mutant the first
selection kills they would kill too, so first pass plus recheck is a run with both selections.
Not in CI, and cosmic-ray is not a dependency of the project: install it beside it as above.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

from cosmic_ray.mutating import mutate_and_test
from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkItem, WorkResult

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".mutation"
#: where each module lives under imagenetfs/, where not `<name>.py`
PATHS = {"views": "views/tree.py"}

#: the tests that exercise each module, fastest and broadest first (`-x` stops at a failure)
TESTS: dict[str, list[str]] = {
    "ops": ["tests/test_ops.py", "tests/test_layouts.py", "tests/test_resize.py"],
    "views": ["tests/test_ops.py", "tests/test_resize.py", "tests/test_layouts.py"],
    "index": ["tests/test_index.py", "tests/test_ops.py", "tests/test_layouts.py"],
    "squashfs": ["tests/test_squashfs.py", "tests/test_read_nowait.py", "tests/test_layouts.py"],
    "archive": ["tests/test_archive.py", "tests/test_layouts.py"],
}
#: with `--recheck`: more tests that reach the module, run on the first pass's survivors only
#: (a mutant the first selection kills, a wider one would kill too)
WIDER: dict[str, list[str]] = {
    "ops": ["tests/test_wire.py", "tests/test_splice.py", "tests/test_metrics.py"],
    "views": ["tests/test_wire.py", "tests/test_splice.py"],
    "index": ["tests/test_wire.py", "tests/test_pack.py"],
    "squashfs": ["tests/test_splice.py", "tests/test_dirtree.py"],
    "archive": ["tests/test_splice.py", "tests/test_index.py"],
}
PER_TEST_TIMEOUT = 90  # seconds, pytest-timeout
PER_MUTANT_TIMEOUT = 420  # seconds, the whole pytest process


def test_command(module: str, wider: bool = False) -> str:
    args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-x", "-q"]
    args += ["-m", "not slow", f"--timeout={PER_TEST_TIMEOUT}"]
    return shlex.join([*args, *(WIDER if wider else TESTS)[module]])


def annotation_spans(path: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) of every annotation in the module, as (row, column)."""
    tree = ast.parse(path.read_text())
    assert any(
        isinstance(n, ast.ImportFrom)
        and n.module == "__future__"
        and any(a.name == "annotations" for a in n.names)
        for n in tree.body
    ), f"{path}: without `from __future__ import annotations` annotations are evaluated"
    found: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
            found.append(node.returns)
        elif isinstance(node, ast.arg | ast.AnnAssign) and node.annotation:
            found.append(node.annotation)
    return [
        ((n.lineno, n.col_offset), (n.end_lineno or n.lineno, n.end_col_offset or 0)) for n in found
    ]


def module_path(module: str) -> str:
    return PATHS.get(module, f"{module}.py")


def init(module: str, sample: int, seed: int) -> Path:
    """The module's session database: every mutant listed, those outside the sample skipped."""
    db_path = STATE / f"{module}.sqlite"
    if db_path.exists():
        return db_path
    config = STATE / f"{module}.toml"
    config.write_text(
        "[cosmic-ray]\n"
        f'module-path = "imagenetfs/{module_path(module)}"\n'
        f"timeout = {PER_MUTANT_TIMEOUT}.0\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(test_command(module))}\n"
        '[cosmic-ray.distributor]\nname = "local"\n'
    )
    cosmic_ray = Path(sys.executable).with_name("cosmic-ray")
    subprocess.run([str(cosmic_ray), "init", str(config), str(db_path)], check=True, cwd=ROOT)
    spans = annotation_spans(ROOT / "imagenetfs" / module_path(module))
    with use_db(str(db_path), WorkDB.Mode.open) as db:
        # job ids are fresh uuids: order by what the mutant is, for a reproducible draw
        items = sorted(db.work_items, key=key)
        runnable = []
        for item in items:
            (m,) = item.mutations
            if any(a <= m.start_pos and m.end_pos <= b for a, b in spans):
                db.set_result(item.job_id, skipped("annotation only: never evaluated"))
            else:
                runnable.append(item)
        chosen = {
            item.job_id
            for item in random.Random(f"{seed}/{module}").sample(
                runnable, min(sample, len(runnable))
            )
        }
        for item in runnable:
            if item.job_id not in chosen:
                db.set_result(item.job_id, skipped("not in the sample"))
    return db_path


def key(item: WorkItem) -> tuple[object, ...]:
    (m,) = item.mutations
    return (m.start_pos, m.end_pos, m.operator_name, m.occurrence)


def baseline() -> None:
    """Every module's tests pass on the unmutated code, or the run would mean nothing."""
    for module in TESTS:
        started = time.monotonic()
        done = subprocess.run(shlex.split(test_command(module)), capture_output=True, text=True)
        took = time.monotonic() - started
        print(f"baseline {module}: exit {done.returncode} ({took:.0f} s)", flush=True)
        if done.returncode != 0:
            sys.exit(f"{module}: the tests fail without a mutant:\n{done.stdout[-3000:]}")


def skipped(why: str) -> WorkResult:
    return WorkResult(output=why, worker_outcome=WorkerOutcome.SKIPPED)


def run(sample: int, seed: int, budget: float) -> None:
    STATE.mkdir(exist_ok=True)
    deadline = time.monotonic() + budget * 60
    queues = {}
    for module in TESTS:
        db_path = init(module, sample, seed)
        with use_db(str(db_path), WorkDB.Mode.open) as db:
            pending = sorted(db.pending_work_items, key=key)
        random.Random(f"{seed}/{module}/order").shuffle(pending)
        queues[module] = pending
    os.chdir(ROOT)
    if not any(STATE.glob("*.ran")):
        baseline()
        (STATE / "baseline.ran").touch()
    while any(queues.values()) and time.monotonic() < deadline:
        for module, pending in queues.items():
            if not pending or time.monotonic() >= deadline:
                continue
            item = pending.pop(0)
            started = time.monotonic()
            result = mutate_and_test(item.mutations, test_command(module), PER_MUTANT_TIMEOUT)
            with use_db(str(STATE / f"{module}.sqlite"), WorkDB.Mode.open) as db:
                db.set_result(item.job_id, result)
            (m,) = item.mutations
            print(
                f"{time.strftime('%H:%M:%S')} {module}:{m.start_pos[0]} {m.operator_name} "
                f"-> {outcome(result)} ({time.monotonic() - started:.0f} s)",
                flush=True,
            )


def recheck(budget: float) -> None:
    """Run the first pass's survivors against the module's `WIDER` tests; results in
    `.mutation/recheck.json` (job id -> killed, timeout or survived)."""
    deadline = time.monotonic() + budget * 60
    path = STATE / "recheck.json"
    done: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    os.chdir(ROOT)
    for module in TESTS:
        with use_db(str(STATE / f"{module}.sqlite"), WorkDB.Mode.open) as db:
            alive = [i for i, r in db.completed_work_items if outcome(r) == "survived"]
        for item in sorted(alive, key=key):
            if item.job_id in done or time.monotonic() >= deadline:
                continue
            result = mutate_and_test(item.mutations, test_command(module, True), PER_MUTANT_TIMEOUT)
            done[item.job_id] = outcome(result)
            path.write_text(json.dumps(done, indent=1))
            (m,) = item.mutations
            print(f"recheck {module}:{m.start_pos[0]} {m.operator_name} -> {done[item.job_id]}")


def outcome(result: WorkResult) -> str:
    if result.worker_outcome == WorkerOutcome.SKIPPED:
        return "annotation" if (result.output or "").startswith("annotation") else "unsampled"
    if result.worker_outcome != WorkerOutcome.NORMAL:
        return f"error ({result.worker_outcome.value})"
    if result.test_outcome == TestOutcome.SURVIVED:
        return "survived"
    if result.output == "timeout":
        return "timeout"
    return "killed"


def wilson(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    z, p = 1.96, k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, mid - half), min(1.0, mid + half))


def report() -> None:
    survivors = []
    path = STATE / "recheck.json"
    rechecked: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    for module in TESTS:
        db_path = STATE / f"{module}.sqlite"
        if not db_path.exists():
            continue
        counts: dict[str, int] = {}
        with use_db(str(db_path), WorkDB.Mode.open) as db:
            total = db.num_work_items
            for item, result in db.completed_work_items:
                o = outcome(result)
                counts[o] = counts.get(o, 0) + 1
                if o == "survived":
                    (m,) = item.mutations
                    again = rechecked.get(item.job_id, "not rechecked")
                    counts[f"wider: {again}"] = counts.get(f"wider: {again}", 0) + 1
                    survivors.append(
                        f"--- {module}:{m.start_pos[0]} {m.operator_name} ({item.job_id}; "
                        f"wider tests: {again})\n{result.diff}"
                    )
        ran = sum(
            v for k, v in counts.items() if k not in ("annotation", "unsampled") and ":" not in k
        )
        alive = counts.get("survived", 0)
        lo, hi = wilson(alive, ran)
        pending = total - sum(v for k, v in counts.items() if ":" not in k)
        print(
            f"{module}: {total} mutants, {counts.get('annotation', 0)} annotation-only, "
            f"{ran} run ({pending} of the sample not run), {counts.get('killed', 0)} killed, "
            f"{counts.get('timeout', 0)} timed out, {alive} survived"
            + "".join(f", {v} {k}" for k, v in counts.items() if k.startswith("error"))
            + (f": survival {alive / ran:.0%} (95% CI {lo:.0%}-{hi:.0%})" if ran else "")
        )
        if any(k.startswith("wider") for k in counts) and "wider: not rechecked" not in counts:
            alive = counts.get("wider: survived", 0)
            lo, hi = wilson(alive, ran)
            print(
                "  survivors against the wider tests: "
                + ", ".join(f"{v} {k[7:]}" for k, v in sorted(counts.items()) if k[:6] == "wider:")
                + (f"; survival {alive / ran:.0%} (95% CI {lo:.0%}-{hi:.0%})" if ran else "")
            )
    print()
    print("\n".join(survivors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sample", type=int, default=80, help="mutants per module")
    parser.add_argument("--seed", type=int, default=30)
    parser.add_argument("--budget-minutes", type=float, default=75)
    parser.add_argument("--report", action="store_true", help="print the results and stop")
    parser.add_argument("--recheck", action="store_true", help="survivors against WIDER tests")
    args = parser.parse_args()
    if args.report:
        report()
    elif args.recheck:
        recheck(args.budget_minutes)
        report()
    else:
        run(args.sample, args.seed, args.budget_minutes)
        report()


if __name__ == "__main__":
    main()
