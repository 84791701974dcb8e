#!/usr/bin/env python3
"""Generate a synthetic ImageNet of any size and layout; see --help.

Examples:
    scripts/make_fake_imagenet.py /data/fake --classes 100 --train-per-class 100
    scripts/make_fake_imagenet.py /data/full-tiny --full --tiny --mksquashfs-args='-noD -noF'
    scripts/make_fake_imagenet.py /data/kaggle --layout kaggle --classes 10 --train-per-class 20
"""

import sys

import _venv  # noqa: F401  (re-executes with the imagenetfs environment if needed)

from imagenetfs.cli import run_tool
from imagenetfs.generate import main

if __name__ == "__main__":
    sys.exit(run_tool(main))
