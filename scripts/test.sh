#!/usr/bin/env bash
# The whole test suite: install/refresh everything (scripts/setup.sh), lint, type-check, pytest.
#
#   scripts/test.sh [PYTEST ARGS...]      e.g. scripts/test.sh -k squashfs -x
#
# pytest's "no tests collected" (exit 5) fails the run like any other failure.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

bash scripts/setup.sh
venv=${IMAGENETFS_PREFIX:-/opt/imagenetfs}/venv
py="$venv/bin/python"

echo "test: ruff check, ruff format --check, mypy" >&2
"$venv/bin/ruff" check imagenetfs tests scripts
"$venv/bin/ruff" format --check imagenetfs tests scripts
"$venv/bin/mypy" imagenetfs

echo "test: pytest" >&2
"$py" -m pytest -m "not slow" "$@"
