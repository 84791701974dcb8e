"""What the test command prepares, and what a test does when it is missing.

`scripts/test.sh` runs `scripts/setup.sh` (strace, squashfs-tools, the test extras...) and
`scripts/test-prepare.sh` (Debian's zip, unzip, Slurm, munge and debootstrap; torch and
torchvision in the test venv) before pytest, with IMAGENETFS_TEST_PREPARED=1.
Under it a missing tool is a failure: the preparation broke, and a skip would hide that the
test it serves never ran (CI would stay green). Run any other way (pytest in the venv of
scripts/setup.sh, say), the test skips, naming the command that prepares what it needs. No
test installs anything.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType
from typing import NoReturn

import pytest

#: Set by scripts/test.sh once scripts/test-prepare.sh has run.
PREPARED = os.environ.get("IMAGENETFS_TEST_PREPARED") == "1"


def unprepared(what: str) -> NoReturn:
    """`what` (a tool, a module) is not there: fail under the test command, else skip."""
    if PREPARED:
        pytest.fail(f"{what}, though the test command prepared the tests' needs: see its output")
    pytest.skip(f"{what}: the test command, `bash scripts/test.sh`, prepares it")


def prepared_module(name: str) -> ModuleType:
    """The module `name`, which the test command's environment holds (torch, torchvision,
    timm, wids: scripts/test-prepare.sh); `unprepared` when it does not import here."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        unprepared(f"{name} does not import in this environment ({sys.executable}: {e})")
