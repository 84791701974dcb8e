#!/usr/bin/env bash
# What the test suite needs beyond scripts/setup.sh's install, prepared before pytest starts, so
# that no test installs anything and none skips for something this could have brought:
#
#   - Debian packages: zip and unzip (the zip oracles, tests/test_archive.py), slurmctld, slurmd,
#     slurm-client and munge (the two-node Slurm, tests/test_slurm.py), debootstrap and git (the
#     fresh Debian root of tests/test_install.py, and the checkout's files copied into it: a
#     checkout made elsewhere may lack git). Checked with dpkg; `apt-get update` only when apt
#     has no candidate for one of them or an install fails on stale lists.
#   - A free loop device (tests/test_pack.py mounts packed images with the kernel): the loop
#     module loaded if none is free, where the kernel allows it.
#   - The test environment: torch and torchvision (tests/test_rootfiles.py, tests/legacy/
#     test_torch.py, the torch.distributed job of tests/test_slurm.py) with the project's
#     dependencies and test extras, built once per machine into $IMAGENETFS_TEST_CACHE
#     (default /var/cache/imagenetfs-test)/torch-KEY, KEY a hash of the interpreter, these pins
#     and pyproject.toml's dependencies and test extras: a change to any of them builds a new one
#     (older ones unused for two days are removed). Built under a lock and marked complete last:
#     a half-built one (an interrupted run) is removed and built again. About 6 GB on x86_64,
#     75-80 s here (pip takes torch from the mirror in its configuration).
#   - $IMAGENETFS_PREFIX/test-venv (default /opt/imagenetfs/test-venv): a small venv made anew on
#     each run that sees the cached environment (a .pth) and holds this checkout, editable, with
#     its `imagenetfs` command. pytest runs in it (scripts/test.sh), so the daemons, programs and
#     Slurm jobs that tests start with the interpreter beside it import torch too.
#
#   scripts/test-prepare.sh        # as root; scripts/test.sh runs it
#
# Idempotent: about 15 s when everything is there (the test venv's editable install).
set -euo pipefail
umask 022  # the test users run the test venv and read the cached environment

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=${IMAGENETFS_PREFIX:-/opt/imagenetfs}
cache=${IMAGENETFS_TEST_CACHE:-/var/cache/imagenetfs-test}
python=$(command -v "${IMAGENETFS_PYTHON:-/usr/bin/python3}")

say() { printf 'test-prepare: %s\n' "$*" >&2; }
die() { printf 'test-prepare: error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=testenv.sh
. "$repo/scripts/testenv.sh"
[ "$(id -u)" -eq 0 ] || die "run as root (scripts/test.sh does)"

# --- Debian packages ---------------------------------------------------------------------
apt_pkgs=(zip unzip slurmctld slurmd slurm-client munge debootstrap git)
missing=()
for p in "${apt_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install by hand: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt_install() { apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
    for p in "${missing[@]}"; do
        if ! apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [^(]'; then
            say "apt-get update (no candidate for $p)"
            apt-get update -qq
            break
        fi
    done
    say "installing Debian packages: ${missing[*]}"
    if ! apt_install; then
        say "apt-get update (the install failed: stale package lists?), then again"
        apt-get update -qq
        apt_install
    fi
fi

# --- a loop device: the kernel's own mount of packed images (tests/test_pack.py) ----------
# Best effort: where the kernel has no loop driver to load (some containers), those tests skip,
# saying so.
if ! losetup --find >/dev/null 2>&1; then
    command -v modprobe >/dev/null 2>&1 && modprobe loop 2>/dev/null || true
    losetup --find >/dev/null 2>&1 || say "no free loop device here, and none could be added"
fi

# --- the cached torch environment ----------------------------------------------------------
case "$(uname -m)" in
    # The releases that import together on the CPU (torchvision from PyPI does not import
    # beside the CPU-only torch 2.13.0 wheel); the x86_64 ones are a CUDA build, run on the CPU.
    aarch64) torch_pins=(torch==2.9.1 torchvision==0.24.1) ;;
    *) torch_pins=(torch==2.14.1 torchvision==0.29.1) ;;
esac
# Readers of the shard view that need torch (tests/test_shards.py): timm's WebDataset reader
# and wids (webdataset's random-access reader, a package of its own).
torch_pins+=(timm==1.0.31 wids==0.1.11)
cached_env torch "test environment" "torch, torchvision" "${torch_pins[@]}"

# --- the test venv: this checkout, editable, over the cached environment -------------------
venv="$prefix/test-venv"
venv_over "$env" "$venv" "torch, torchvision"
say "test venv: $venv (torch from $env)"
