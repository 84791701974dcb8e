"""Docs that cannot rot: every relative link and anchor in the README and docs/ resolves, every
`imagenetfs ...` command shown in a code block parses with the CLI's own parser, the reference
page is what the parser renders, the README stays one screenful of sections (200 lines), and
pages for users name no issue numbers or commits (history lives in CHANGELOG.md and
docs/bench/).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from imagenetfs import cli

REPO = Path(__file__).resolve().parent.parent
USER_PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PAGES = [*USER_PAGES, REPO / "CHANGELOG.md", REPO / "docs" / "bench" / "README.md"]

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def name(page: Path) -> str:
    return str(page.relative_to(REPO))


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    text = FENCE.sub("", page.read_text())
    broken = []
    for match in LINK.finditer(text):
        target = match[1] or match[2]
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        where = (page.parent / path).resolve() if path else page
        if not where.exists():
            broken.append(f"{target}: no {where}")
        elif anchor and where.suffix == ".md" and anchor not in anchors(where):
            broken.append(f"{target}: no heading #{anchor} in {name(where)}")
    assert not broken, broken


def commands(page: Path) -> list[str]:
    """`imagenetfs ...` command lines in the page's code blocks (not usage synopses)."""
    found = []
    for block in FENCE.findall(page.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.removeprefix("$ ").strip()
            for part in re.split(r"&&|\|\||;|\|", line):
                part = part.split(" #", 1)[0].strip()
                if part.startswith(("imagenetfs ", "~/.local/bin/imagenetfs ")) and "[" not in part:
                    found.append(part)
    return found


@pytest.mark.parametrize("page", USER_PAGES, ids=name)
def test_every_command_shown_parses(page: Path) -> None:
    shown = commands(page)
    for command in shown:
        words = shlex.split(command)[1:]
        try:
            args = cli.build_parser().parse_args(words)
        except SystemExit as e:
            raise AssertionError(f"{name(page)}: `{command}` does not parse") from e
        assert args.command == words[0], command


def test_the_readme_shows_commands_that_parse() -> None:
    """(the check above finds the README's commands: it is not vacuous)"""
    shown = commands(REPO / "README.md")
    assert any(c.startswith("imagenetfs mount /tmp/inet") for c in shown), shown
    assert len(shown) >= 3, shown


def test_the_reference_page_is_the_parsers() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "docs_reference.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    page = (REPO / "docs" / "reference.md").read_text()
    for command in ("mount", "umount", "status", "index", "warm", "pack", "sample", "doctor"):
        assert f"## imagenetfs {command}\n" in page


def test_the_readme_is_one_screenful_of_sections() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 200, len(lines)
    readme = "\n".join(lines)
    # its two set-up commands, as CI runs the second
    assert (
        "bash scripts/setup.sh && imagenetfs mount /tmp/inet && ls /tmp/inet/train | head" in readme
    )
    assert "\nbash scripts/test.sh\n" in readme
    assert "exec scripts/test.sh" in (REPO / ".ci" / "run").read_text()


HASH = re.compile(r"(?<![\w/.\-])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}(?![\w/.\-])")


@pytest.mark.parametrize("page", USER_PAGES, ids=name)
def test_user_pages_name_no_issue_or_commit(page: Path) -> None:
    text = page.read_text()
    assert not re.findall(r"\b[Ii]ssues? \d+", text), name(page)
    assert not HASH.findall(text), (name(page), HASH.findall(text))
