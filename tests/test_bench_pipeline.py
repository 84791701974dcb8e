"""The benchmark's input pipeline (scripts/benchlib/pipeline.py, torch_epochs.py) counts what
it claims: an epoch reads exactly the images its listing names, through torchvision's
ImageFolder and a DataLoader with workers, and says so when the folder holds fewer; and
without torch the benchmark says where it looked and what makes the environment, instead of
measuring nothing silently. (Its speed is the benchmark's business, not a test's.)
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from helpers import jpeg
from prepared import prepared_module

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def pipeline() -> Iterator[ModuleType]:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from benchlib import pipeline

        yield pipeline
    finally:
        sys.path.remove(str(REPO / "scripts"))


def test_without_torch_the_reason_names_where_and_how(pipeline: ModuleType, tmp_path: Path) -> None:
    """An interpreter that cannot import torch is refused with its own words and the command
    that makes the test environment; a missing one is named as absent."""
    absent = tmp_path / "no-such-python"
    exe, said = pipeline.python(absent)
    assert exe is None and f"{absent}: absent" in said and "scripts/test.sh" in said
    bare = tmp_path / "bare-python"  # an interpreter where `import torch` fails
    bare.write_text("#!/bin/sh\necho 'ModuleNotFoundError: no torch here' >&2\nexit 1\n")
    bare.chmod(0o755)
    exe, said = pipeline.python(bare)
    assert exe is None and "no torch here" in said and "--pipeline-python" in said


def test_an_epoch_reads_exactly_the_listed_images(pipeline: ModuleType, tmp_path: Path) -> None:
    """Two epochs over an ImageFolder restricted to a listing: each reads every listed image
    once (not the unlisted one beside them), the first with the folder's scan; a listing
    naming an image the folder lacks is an error, not a shorter epoch."""
    prepared_module("torch")
    prepared_module("torchvision")
    root = tmp_path / "train"
    listed = []
    for c, wnid in enumerate(("n01", "n02")):
        (root / wnid).mkdir(parents=True)
        for i in range(5):
            (root / wnid / f"{wnid}_{i}.JPEG").write_bytes(jpeg((300, 250), (40 * c, 90, i)))
            if i < 4:
                listed.append(f"{wnid}/{wnid}_{i}.JPEG")
    listing = tmp_path / "listing.txt"
    listing.write_text("".join(f"{r}\n" for r in listed))
    epochs = pipeline.Epochs(Path(sys.executable), tmp_path)
    try:
        assert epochs.ask(root=str(root), subset=str(listing)) == {"ready": True}
        first = epochs.ask(epoch=1, workers=2, batch=3)
        second = epochs.ask(epoch=2, workers=2, batch=3)
        assert first["images"] == second["images"] == len(listed) == 8
        assert first["scan_s"] > 0 and second["scan_s"] == 0
        assert first["cpu_s"] > 0
        listing.write_text("".join(f"{r}\n" for r in [*listed, "n02/n02_9.JPEG"]))
        epochs.ask(root=str(root), subset=str(listing))
        with pytest.raises(RuntimeError, match="8 images found, 9 listed"):
            epochs.ask(epoch=3, workers=2, batch=3)
    finally:
        epochs.close()
    assert epochs.proc.returncode == 0
