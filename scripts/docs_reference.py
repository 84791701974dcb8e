#!/usr/bin/env python3
"""Write docs/reference.md, the command reference, from the CLI's own parser.

    scripts/docs_reference.py            # rewrite docs/reference.md
    scripts/docs_reference.py --check    # exit 1 if docs/reference.md differs (the tests do)

Every command, its usage line, description, arguments, options and example come from
`imagenetfs.cli.build_parser()`, so the page cannot say other than `--help` does.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "reference.md"

INTRO = """\
# Command reference

Every `imagenetfs` command and option, as `imagenetfs COMMAND --help` gives them (this page is
generated from the command's own parser by `scripts/docs_reference.py`; a test keeps the two
equal). Options may come before or after the command's arguments. Every command prints one line
on stderr and exits 1 for a problem you can fix (`--debug` adds the traceback); see
[troubleshooting.md](troubleshooting.md) for each message.

Environment: `IMAGENETFS_SOURCE` and `IMAGENETFS_INDEX` are the defaults of `--source` and
`--index`; `IMAGENETFS_WORKERS` of `mount --workers`; `IMAGENETFS_STATE_DIR` moves this node's
mount records (default `/tmp/imagenetfs-<uid>/mounts`); `XDG_CACHE_HOME` moves
`~/.cache/imagenetfs` (indexes of sources with none beside them, the sample, the resize cache
outside a job).
"""


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _option(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    if action.nargs == 0:
        return ", ".join(f"`{o}`" for o in action.option_strings)
    if action.choices:
        value = "{" + ",".join(map(str, action.choices)) + "}"
    else:
        value = str(action.metavar)
    if action.nargs == "?":
        value = f"[{value}]"
    return ", ".join(f"`{o} {value}`" for o in action.option_strings)


def render() -> str:
    os.environ["COLUMNS"] = "100"  # (argparse wraps usage lines to the terminal's width)
    sys.path.insert(0, str(REPO))
    from imagenetfs import cli

    parser = cli.build_parser()
    out = [INTRO]
    out.append("## imagenetfs\n")
    out.append("```\n" + parser.format_usage().strip() + "\n```\n")
    out.append(_cell(parser.description or "") + "\n")
    out.append("| option | |\n|---|---|")
    for action in parser._actions:
        if action.option_strings and action.help != argparse.SUPPRESS:
            out.append(f"| {_option(action)} | {_cell(str(action.help))} |")
    out.append("")
    for name, sub in _subcommands(parser).items():
        out.append(f"## imagenetfs {name}\n")
        usage = sub.format_usage().strip().removeprefix("usage: ")
        out.append("```\n" + usage + "\n```\n")
        out.append(_cell((sub.description or "").replace("%%", "%")) + "\n")
        out.append("| argument or option | |\n|---|---|")
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            text = (action.help or "").replace("%%", "%")
            out.append(f"| {_option(action)} | {_cell(text)} |")
        out.append("")
        if sub.epilog:
            out.append(f"Example: `{sub.epilog.removeprefix('example: ').strip()}`\n")
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    check = sys.argv[1:] == ["--check"]
    text = render()
    if check:
        if PAGE.read_text() != text:
            print(f"{PAGE} differs from the parser: run scripts/docs_reference.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
