"""Run a script with the interpreter that has imagenetfs installed.

`scripts/setup.sh` installs the package into a virtual environment (default
/opt/imagenetfs/venv). When a script is started with another interpreter (e.g. `python3
scripts/x.py`, or through its `#!/usr/bin/env python3` line) and cannot import imagenetfs,
it re-executes itself with that environment's Python.
"""

import os
import sys


def ensure() -> None:
    try:
        import imagenetfs  # noqa: F401
    except ImportError:
        prefix = os.environ.get("IMAGENETFS_PREFIX", "/opt/imagenetfs")
        venv = os.path.join(prefix, "venv")
        python = os.path.join(venv, "bin", "python")
        if not os.path.exists(python) or os.path.samefile(sys.prefix, venv):
            sys.exit("imagenetfs is not installed: run scripts/setup.sh first")
        os.execv(python, [python, *sys.argv])


ensure()
