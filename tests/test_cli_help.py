"""What `imagenetfs --help` and friends promise a newcomer, checked against the parser itself:
every option shows a placeholder a person wrote (not argparse's upper-cased destination),
every command has an example that parses, the descriptions name every kind of source,
`--debug` works after the command too, a closed pipe (`| head`) is no error, and `status`
says how old its counters are.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
from pathlib import Path

import pytest
from helpers import CLI, Mounter, one_error_line

from imagenetfs import cli

SOURCE_KINDS = ("SquashFS", "official", "Kaggle", "unpacked")


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices)


def test_no_placeholder_is_argparses_default() -> None:
    """`--resize-quality RESIZE_QUALITY` says nothing; every option taking a value names it."""
    for name, parser in subcommands().items():
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0 or action.choices:
                continue
            assert action.metavar is not None, f"{name} {action.option_strings}: no metavar"
            assert action.metavar != action.dest.upper(), (name, action.option_strings)


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_command_has_an_example_that_parses(name: str) -> None:
    parser = subcommands()[name]
    assert parser.epilog is not None and parser.epilog.startswith("example: "), name
    example = parser.epilog.removeprefix("example: ")
    commands = [part.strip() for part in example.split("&&")]
    assert any(shlex.split(c)[1] == name for c in commands), example
    for command in commands:
        words = shlex.split(command)
        assert words[0] == "imagenetfs", command
        args = cli.build_parser().parse_args(words[1:])  # (exits, failing the test, if not)
        assert args.command == words[1]


def test_descriptions_name_every_kind_of_source() -> None:
    for text in (cli.build_parser().description, subcommands()["index"].description):
        assert text is not None
        for kind in SOURCE_KINDS:
            assert kind in text, (kind, text)


def test_debug_after_the_command_shows_the_traceback(mounter: Mounter, tmp_path: Path) -> None:
    """`imagenetfs umount --debug X` as `imagenetfs --debug umount X`: the error line, and
    the traceback that --debug adds; without --debug, the line alone."""
    for args in (["umount", "--debug", tmp_path], ["--debug", "umount", tmp_path]):
        result = mounter.cli(*args)
        assert result.returncode == 1
        assert "Traceback" in result.stderr, args
        assert result.stderr.strip().splitlines()[-1].startswith("imagenetfs: error: ")
    one_error_line(mounter.cli("umount", tmp_path), "is not mounted")


@pytest.mark.parametrize("args", [["--help"], ["mount", "--help"], ["status"]])
def test_a_closed_pipe_is_no_error(mounter: Mounter, args: list[str]) -> None:
    """`imagenetfs status | head -1`: the reader goes away; exit 0, nothing on stderr."""
    process = subprocess.Popen(
        [CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=mounter.env()
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # (before the command has written a byte)
    assert process.wait(timeout=60) == 0
    assert process.stderr.read() == b""


def test_status_says_how_old_its_counters_are(mounter: Mounter, admin: Path) -> None:
    mp = mounter.mkdir("mnt")
    mounted = mounter.mount(mp, admin)
    mounted.stats()  # (the first counters are published)
    result = mounter.cli("status", mp)
    assert result.returncode == 0, result.stderr
    ages = [line for line in result.stdout.splitlines() if "counters as of" in line]
    assert len(ages) == 1, result.stdout
    seconds = int(ages[0].split("as of ")[1].split()[0])
    assert 0 <= seconds < 60, ages
