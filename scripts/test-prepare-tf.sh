#!/usr/bin/env bash
# The TensorFlow test environment: tensorflow-cpu beside the project's dependencies and test
# extras, for the one test that reads the TFRecord view with TensorFlow's own reader
# (tests/test_tfrecord.py, marked `tensorflow`). Not part of scripts/test.sh and not run by CI:
# TensorFlow is ~1.5 GB, for one test. Made the way scripts/test-prepare.sh makes the torch one:
#
#   - $IMAGENETFS_TEST_CACHE (default /var/cache/imagenetfs-test)/tensorflow-KEY, KEY a hash of
#     the interpreter, the pin below and pyproject.toml's dependencies and test extras; built
#     once per machine under a lock and marked complete last (a half-built one is built again);
#     ones of other keys unused for two days are removed;
#   - $IMAGENETFS_PREFIX (default /opt/imagenetfs)/test-venv-tf: a small venv made anew on each
#     run that sees the cached environment (a .pth) and holds this checkout, editable.
#
#   scripts/test-prepare-tf.sh                       # as root (or with a prefix you can write)
#   /opt/imagenetfs/test-venv-tf/bin/python -m pytest -m tensorflow tests/test_tfrecord.py
#
# Idempotent: about 15 s when everything is there.
set -euo pipefail
umask 022

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=${IMAGENETFS_PREFIX:-/opt/imagenetfs}
cache=${IMAGENETFS_TEST_CACHE:-/var/cache/imagenetfs-test}
python=$(command -v "${IMAGENETFS_PYTHON:-/usr/bin/python3}")

say() { printf 'test-prepare-tf: %s\n' "$*" >&2; }
die() { printf 'test-prepare-tf: error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=testenv.sh
. "$repo/scripts/testenv.sh"

tf_pins=(tensorflow-cpu==2.21.0)
cached_env tensorflow "TensorFlow test environment" tensorflow "${tf_pins[@]}"
venv="$prefix/test-venv-tf"
venv_over "$env" "$venv" tensorflow
say "TensorFlow test venv: $venv (tensorflow from $env)"
