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

tf_pins=(tensorflow-cpu==2.21.0)
requirements=$("$python" - "$repo/pyproject.toml" "${tf_pins[@]}" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
print("\n".join([*sys.argv[2:], *project["dependencies"], *project["optional-dependencies"]["test"]]))
EOF
)
recipe=1  # bump to rebuild every machine's environment for a change not in the key
key=$(printf '%s\n' "recipe $recipe" "$("$python" -VV)" "$(uname -m)" "$requirements" \
      | sha256sum | cut -c1-16)
env="$cache/tensorflow-$key"

mkdir -p "$cache"
exec 9>"$cache/.lock-tensorflow"
flock 9
if [ ! -e "$env/.complete" ]; then
    rm -rf "$env"
    say "building the TensorFlow test environment $env (${tf_pins[*]}, the project's" \
        "dependencies and test extras; once per machine, a few minutes)"
    started=$SECONDS
    "$python" -m venv "$env"
    printf '%s\n' "$requirements" >"$env/requirements.txt"
    pip=("$env/bin/python" -m pip install -q --disable-pip-version-check)
    "${pip[@]}" --upgrade pip
    "${pip[@]}" -r "$env/requirements.txt"
    "$env/bin/python" -c 'import tensorflow' || die "tensorflow does not import in $env"
    printf '%s\n' "$key" >"$env/.complete"
    say "built $env in $((SECONDS - started)) s"
fi
touch "$env/.used"
for old in "$cache"/tensorflow-*; do
    [ -d "$old" ] && [ "$old" != "$env" ] || continue
    [ -n "$(find "$old/.used" -mtime -2 2>/dev/null)" ] && continue
    say "removing a TensorFlow test environment unused for two days: $old"
    rm -rf "$old"
done
flock -u 9

venv="$prefix/test-venv-tf"
rm -rf "$venv"
mkdir -p "$prefix"
"$python" -m venv --without-pip "$venv"
site() { "$1" -c 'import sysconfig; print(sysconfig.get_path("purelib"))'; }
printf 'import site; site.addsitedir(%s)\n' "'$(site "$env/bin/python")'" \
    >"$(site "$venv/bin/python")/imagenetfs-test-env.pth"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e "$repo"
"$venv/bin/python" -c 'import imagenetfs, tensorflow' \
    || die "the venv $venv does not import imagenetfs and tensorflow"
say "TensorFlow test venv: $venv (tensorflow from $env)"
