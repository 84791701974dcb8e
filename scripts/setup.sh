#!/usr/bin/env bash
# Install everything imagenetfs needs on Debian/Ubuntu, idempotently.
#
#   scripts/setup.sh            # system packages + the package in /opt/imagenetfs/venv,
#                               # `imagenetfs` linked into /usr/local/bin
#   scripts/setup.sh --uninstall  # remove that venv and link (system packages stay)
#
# Runs as root, or as a normal user with sudo (only apt and the install prefix need it).
# Environment: IMAGENETFS_PREFIX (default /opt/imagenetfs), IMAGENETFS_BIN (default
# /usr/local/bin), IMAGENETFS_PYTHON (default: Debian's /usr/bin/python3, >= 3.11).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=${IMAGENETFS_PREFIX:-/opt/imagenetfs}
bindir=${IMAGENETFS_BIN:-/usr/local/bin}

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -eq 0 ]; then
    as_root() { "$@"; }
elif command -v sudo >/dev/null 2>&1; then
    as_root() { sudo "$@"; }
else
    die "not root and no sudo: to install for yourself without root, run: bash $repo/scripts/install-user.sh"
fi

case "${1:-}" in
    "") ;;
    --uninstall)
        # The venv and the command's link; the system packages stay (other software may use
        # them: `apt-get remove fuse3 ...` is the admin's call), and so do users' caches.
        venv="$prefix/venv"
        [ -d "$venv" ] || die "no imagenetfs installed in $prefix"
        if grep -qsF -- "$venv/" /proc/[0-9]*/maps 2>/dev/null; then
            die "a running process (a mount?) uses $venv: unmount first (imagenetfs status, as each user)"
        fi
        link="$bindir/imagenetfs"
        if [ -L "$link" ] && [ "$(readlink "$link")" = "$venv/bin/imagenetfs" ]; then
            as_root rm -f "$link"
        fi
        as_root rm -rf "$venv"
        as_root rmdir "$prefix" 2>/dev/null || true
        say "removed $venv and $link; kept the system packages and each user's ~/.cache/imagenetfs"
        exit 0
        ;;
    *) die "unknown argument $1 (usage: scripts/setup.sh [--uninstall])" ;;
esac

# --- system packages ---------------------------------------------------------------------
# fuse3: fusermount3 for unprivileged mounts; libfuse3-dev + pkg-config + gcc + python3-dev:
# pyfuse3 compiles against libfuse; squashfs-tools/squashfuse: image building and test oracles;
# strace: the test that a walk of the mount makes no per-file stat (tests/legacy).
apt_pkgs=(fuse3 libfuse3-dev pkg-config gcc python3 python3-dev python3-venv
          squashfs-tools squashfuse strace ca-certificates)
missing=()
for p in "${apt_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install by hand: ${missing[*]}"
    say "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    say "system packages already installed"
fi

# --- Python package ----------------------------------------------------------------------
# Debian's interpreter by default: a venv links to its base interpreter, and one under a
# private home (pyenv in /root, say) would be unusable for the other users who mount.
python=${IMAGENETFS_PYTHON:-/usr/bin/python3}
command -v "$python" >/dev/null 2>&1 || die "$python not found"
python=$(command -v "$python")
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$python is $("$python" -V 2>&1); imagenetfs needs Python >= 3.11"

venv="$prefix/venv"
base=$("$python" -c 'import sys; print(sys.base_prefix)')
if [ -x "$venv/bin/python" ] && [ "$("$venv/bin/python" -c 'import sys; print(sys.base_prefix)' 2>/dev/null)" != "$base" ]; then
    say "recreating $venv for $python"
    as_root rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
    say "creating virtual environment $venv"
    as_root mkdir -p "$prefix"
    as_root "$python" -m venv "$venv"
fi
say "installing imagenetfs (with test extras) from $repo"
as_root "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
# Editable, so the checkout's code is what runs (tests and CLI alike).
as_root "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$repo[test]"

# fusermount3 reads /etc/mtab to let a user unmount what they mounted; installed systems have it
# (a link to the kernel's table), minimal roots and some containers do not
if [ ! -e /etc/mtab ] && [ ! -L /etc/mtab ]; then
    say "linking /etc/mtab to /proc/self/mounts (fusermount3 needs it for unprivileged unmounts)"
    as_root ln -s ../proc/self/mounts /etc/mtab
fi

as_root mkdir -p "$bindir"
as_root ln -sfn "$venv/bin/imagenetfs" "$bindir/imagenetfs"
say "done: $(command -v imagenetfs || echo "$bindir/imagenetfs") -> $venv/bin/imagenetfs"
