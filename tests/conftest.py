"""Fixtures shared by every test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Mounter


@pytest.fixture
def mounter(tmp_path: Path) -> Iterator[Mounter]:
    """Mounts as root, with a state directory of its own; undone after the test."""
    harness = Mounter(tmp_path)
    try:
        yield harness
    finally:
        harness.cleanup()
