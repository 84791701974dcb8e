#!/usr/bin/env bash
# The whole test suite: install/refresh everything (scripts/setup.sh), prepare what the tests
# need besides (scripts/test-prepare.sh: Debian's zip, unzip, Slurm and debootstrap; the test
# venv with torch and torchvision, cached once per machine), lint, type-check, pytest in the
# test venv. No test installs anything; under this command one that finds its tool missing
# fails (IMAGENETFS_TEST_PREPARED=1, tests/prepared.py).
#
#   scripts/test.sh [PYTEST ARGS...]      e.g. scripts/test.sh -k squashfs -x
#
# The suite runs as root: it mounts FUSE as root and as a throw-away unprivileged user, makes
# device nodes for SquashFS images and edits /etc/fuse.conf for --allow-other (restored after).
# Started as a normal user, it re-runs itself with sudo, keeping pytest, ruff, mypy and
# hypothesis caches out of the checkout (pip's editable install still writes its egg-info).
# pytest's "no tests collected" (exit 5) fails the run like any other failure.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "test: needs root (or sudo)" >&2; exit 1; }
    exec sudo PYTHONDONTWRITEBYTECODE=1 IMAGENETFS_TEST_NO_CACHE=1 \
        ${IMAGENETFS_PREFIX:+IMAGENETFS_PREFIX="$IMAGENETFS_PREFIX"} \
        ${IMAGENETFS_TEST_CACHE:+IMAGENETFS_TEST_CACHE="$IMAGENETFS_TEST_CACHE"} bash "$0" "$@"
fi
cache_opts=()
if [ -n "${IMAGENETFS_TEST_NO_CACHE:-}" ]; then
    cache_opts=(-p no:cacheprovider)
    HYPOTHESIS_STORAGE_DIRECTORY=$(mktemp -d)
    export HYPOTHESIS_STORAGE_DIRECTORY
fi

bash scripts/setup.sh
venv=${IMAGENETFS_PREFIX:-/opt/imagenetfs}/venv
py=${IMAGENETFS_PREFIX:-/opt/imagenetfs}/test-venv/bin/python

echo "test: ruff check, ruff format --check, mypy" >&2
ruff_opts=()
[ -n "${IMAGENETFS_TEST_NO_CACHE:-}" ] && ruff_opts=(--no-cache)
"$venv/bin/ruff" check "${ruff_opts[@]}" imagenetfs tests scripts
"$venv/bin/ruff" format "${ruff_opts[@]}" --check imagenetfs tests scripts
"$venv/bin/mypy" ${IMAGENETFS_TEST_NO_CACHE:+--cache-dir=/dev/null} imagenetfs

bash scripts/test-prepare.sh
echo "test: pytest (in $(dirname "$(dirname "$py")"))" >&2
IMAGENETFS_TEST_PREPARED=1 "$py" -m pytest "${cache_opts[@]}" -m "not slow" "$@"
