#!/usr/bin/env bash
# Install imagenetfs for yourself, without root or sudo: a virtual environment in your home
# and the `imagenetfs` command linked into ~/.local/bin.
#
#   bash scripts/install-user.sh       # from a clone of this repository; re-run to upgrade
#   bash scripts/install-user.sh --uninstall    # remove it (caches and indexes are kept)
#
# Needs system packages that an admin installs once (the script checks and, if one is missing,
# prints one line naming it with the command to run, and exits 1 having created nothing):
#   Debian/Ubuntu: apt-get install -y fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv
#   RHEL family:   dnf install -y fuse3 fuse3-devel gcc python3-devel
# plus squashfs-tools for the built-in sample (used when there is no ImageNet on the machine).
# Writes only under the prefix and the bin directory (pip's build files go to $TMPDIR and are
# removed). The package is copied from the checkout, so the checkout may move or go away after.
# Atomic: each install is a new $prefix/venv-<time>, made at its final path (venvs hardcode
# it) and switched to by renaming the symlinks $prefix/venv and $bindir/imagenetfs only once it
# works; a failure or interrupt removes it and leaves any earlier install as it was. Older
# versions are removed afterwards, except one a running process (a mount) still uses.
# Environment: IMAGENETFS_PREFIX (default ~/.local/share/imagenetfs), IMAGENETFS_BIN (default
# ~/.local/bin), IMAGENETFS_PYTHON (default python3, else python3.13/3.12/3.11: >= 3.11).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ -n "${HOME:-}" ] || { echo "install-user: error: HOME is not set" >&2; exit 1; }
prefix=${IMAGENETFS_PREFIX:-$HOME/.local/share/imagenetfs}
bindir=${IMAGENETFS_BIN:-$HOME/.local/bin}
prefix=${prefix%/}
bindir=${bindir%/}

say() { printf 'install-user: %s\n' "$*" >&2; }
die() { printf 'install-user: error: %s\n' "$*" >&2; exit 1; }

case "${1:-}" in
    "") ;;
    --uninstall)
        # What the install wrote: $prefix (every version) and the command's link; not the
        # caches (indexes, the sample, resized images), which are data: named, to remove by hand.
        link=$bindir/imagenetfs
        for v in "$prefix"/venv-*; do
            if [ -d "$v" ] && grep -qsF -- "$v/" /proc/[0-9]*/maps 2>/dev/null; then
                die "a running process (a mount?) uses $v: unmount first (imagenetfs status lists your mounts)"
            fi
        done
        removed=()
        if [ -L "$link" ]; then
            case $(readlink "$link") in
                "$prefix"/*) rm -f "$link"; removed+=("$link") ;;
                *) say "left $link: it points elsewhere ($(readlink "$link"))" ;;
            esac
        fi
        if [ -d "$prefix" ]; then
            rm -rf "$prefix"/venv-* "$prefix/venv" "$prefix/.lock"
            rmdir "$prefix" 2>/dev/null || say "left $prefix: it holds files the install did not write"
            removed+=("$prefix")
        fi
        [ ${#removed[@]} -gt 0 ] || die "no imagenetfs installed in $prefix"
        cache=${XDG_CACHE_HOME:-$HOME/.cache}/imagenetfs
        say "removed ${removed[*]}"
        [ ! -d "$cache" ] || say "kept $cache ($(du -sh "$cache" 2>/dev/null | cut -f1); indexes, the sample, resized images): rm -r $cache frees it"
        exit 0
        ;;
    *) die "unknown argument $1 (usage: bash scripts/install-user.sh [--uninstall])" ;;
esac

if [ ! -f "$repo/pyproject.toml" ] || [ ! -d "$repo/imagenetfs" ]; then
    die "$repo is not an imagenetfs checkout (no pyproject.toml or imagenetfs/)"
fi
case $prefix in /*) ;; *) die "IMAGENETFS_PREFIX must be an absolute path: $prefix" ;; esac
case $bindir in /*) ;; *) die "IMAGENETFS_BIN must be an absolute path: $bindir" ;; esac

# --- checks: nothing is created before they all pass ---------------------------------------
# Which package manager names the packages: Debian/Ubuntu (apt) or RHEL/Fedora (dnf).
family=other
if [ -r /etc/os-release ]; then
    # shellcheck disable=SC1091
    ids=$(. /etc/os-release && echo " ${ID:-} ${ID_LIKE:-} ")
    case $ids in
        *" debian "* | *" ubuntu "*) family=debian ;;
        *" rhel "* | *" fedora "* | *" centos "*) family=rhel ;;
    esac
fi
# pkg NAME: the package providing NAME here (Debian names are the keys; X.Y versioned pythons).
pkg() {
    local deb=$1 rpm
    case $1 in
        libfuse3-dev) rpm=fuse3-devel ;;
        pkg-config) rpm=pkgconf-pkg-config ;;
        libc6-dev) rpm=glibc-devel ;;
        python3*-dev) rpm=${1%-dev}-devel ;;
        python3*-venv) rpm=${1%-venv} ;;  # venv and ensurepip's wheels come with python3
        *) rpm=$1 ;;
    esac
    if [ "$family" = rhel ]; then echo "$rpm"; else echo "$deb"; fi
}
missing=()   # packages
why=()       # what showed each one missing
need() { missing+=("$(pkg "$1")"); why+=("$2"); }

command -v fusermount3 >/dev/null 2>&1 || need fuse3 "no fusermount3"
if command -v pkg-config >/dev/null 2>&1; then
    pkg-config --exists fuse3 || need libfuse3-dev "pkg-config finds no fuse3"
else
    need pkg-config "no pkg-config"
    found_pc=
    for d in /usr/lib/pkgconfig /usr/lib64/pkgconfig /usr/share/pkgconfig /usr/lib/*/pkgconfig \
             /usr/local/lib/pkgconfig; do
        [ -e "$d/fuse3.pc" ] && found_pc=1
    done
    [ -n "$found_pc" ] || need libfuse3-dev "no fuse3.pc"
fi

# The interpreter: $IMAGENETFS_PYTHON, else the first python3[.X] that is >= 3.11.
python=
is_new_enough() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }
if [ -n "${IMAGENETFS_PYTHON:-}" ]; then
    command -v "$IMAGENETFS_PYTHON" >/dev/null 2>&1 \
        || die "IMAGENETFS_PYTHON=$IMAGENETFS_PYTHON: not found"
    python=$(command -v "$IMAGENETFS_PYTHON")
    is_new_enough "$python" \
        || die "$python is $("$python" -V 2>&1); imagenetfs needs Python >= 3.11"
else
    for c in python3 python3.13 python3.12 python3.11; do
        if command -v "$c" >/dev/null 2>&1 && is_new_enough "$(command -v "$c")"; then
            python=$(command -v "$c")
            break
        fi
    done
fi
if [ -z "$python" ]; then
    if command -v python3 >/dev/null 2>&1; then
        # An old python3 (Ubuntu 22.04, RHEL 9): a newer one beside it.
        oldver=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo '?')
        need python3.11 "python3 is $oldver, imagenetfs needs >= 3.11"
        need python3.11-dev "no Python.h for python3.11"
        [ "$family" = rhel ] || need python3.11-venv "no venv for python3.11"
    else
        need python3 "no python3"
        need python3-dev "no Python.h"
        [ "$family" = rhel ] || need python3-venv "no venv"
    fi
else
    # The packages of this interpreter: python3-dev for the system's python3, else python3.X-dev.
    ver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    sysver=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
    if [ "$ver" = "$sysver" ]; then pypkg=python3; else pypkg=python$ver; fi
    include=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
    [ -f "$include/Python.h" ] || need "$pypkg-dev" "no $include/Python.h"
    "$python" -c 'import ensurepip, venv; ensurepip.version()' >/dev/null 2>&1 \
        || need "$pypkg-venv" "$python has no venv/ensurepip"
fi

# The C compiler pip will use to build pyfuse3: $CC, else the one Python was built with, else
# gcc or cc (then passed as CC).
cc=
if [ -n "${CC:-}" ]; then
    cc=${CC%% *}
else
    if [ -n "$python" ]; then
        cc=$("$python" -c 'import sysconfig; print((sysconfig.get_config_var("CC") or "").split(" ")[0])' 2>/dev/null || true)
    fi
    if [ -z "$cc" ] || ! command -v "$cc" >/dev/null 2>&1; then
        cc=
        for c in gcc cc; do
            if command -v "$c" >/dev/null 2>&1; then cc=$c; export CC=$c; break; fi
        done
    fi
fi
if [ -z "$cc" ] || ! command -v "$cc" >/dev/null 2>&1; then
    need gcc "no C compiler"
elif ! printf '#include <stdio.h>\n' | "$cc" -fsyntax-only -x c - >/dev/null 2>&1; then
    need libc6-dev "$cc cannot compile: no C library headers"
fi

if [ ${#missing[@]} -gt 0 ]; then
    what=${why[0]}
    for w in "${why[@]:1}"; do what="$what; $w"; done
    case $family in
        debian) admin="apt-get install -y ${missing[*]}" ;;
        rhel) admin="dnf install -y ${missing[*]}" ;;
        *) admin="install ${missing[*]} (Debian/Ubuntu names; RHEL: fuse3-devel, python3-devel)" ;;
    esac
    die "missing system packages: ${missing[*]} ($what); ask an admin to run: $admin"
fi

link=$bindir/imagenetfs
if [ -e "$link" ] && [ ! -L "$link" ]; then
    die "$link exists and is not a symlink: move it away, or set IMAGENETFS_BIN"
fi

# --- install into a new directory, switch to it when it works ------------------------------
# Directories this run creates (removed again, if empty, on failure).
created=()
d=$prefix
while [ ! -e "$d" ]; do created=("$d" "${created[@]}"); d=$(dirname "$d"); done
mkdir -p "$prefix"
new=$prefix/venv-$(date +%Y%m%d-%H%M%S)-$$
done_ok=
switched=
cleanup() {
    local status=$?
    [ -n "$done_ok" ] && return
    if [ -n "$switched" ]; then   # failed mid-switch: $prefix/venv back to what it was
        if [ -d "$prefix/venv-old-$$" ]; then
            rm -f "$prefix/venv"
            mv -T "$prefix/venv-old-$$" "$prefix/venv"
        elif [ -n "$prev" ]; then
            ln -sfn "$prev" "$prefix/venv"
        else
            rm -f "$prefix/venv"
        fi
    fi
    rm -rf "$new" "$prefix/.venv.new-$$" "$bindir/.imagenetfs.new-$$"
    if [ ${#created[@]} -gt 0 ]; then rm -f "$prefix/.lock"; fi
    local i
    for ((i = ${#created[@]} - 1; i >= 0; i--)); do rmdir "${created[i]}" 2>/dev/null || true; done
    if [ "$status" -ne 0 ]; then say "failed: nothing was installed or changed"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# One install at a time per prefix. A lock file opened for writing, as NFS homes need; where
# locks do not work at all (no flock, no lockd), installs go unlocked.
if command -v flock >/dev/null 2>&1; then
    exec 9>>"$prefix/.lock"
    locked=0
    flock -n -E 75 9 || locked=$?
    [ "$locked" -ne 75 ] || die "another install into $prefix is running"
fi

say "installing imagenetfs from $repo into $new (python: $python $ver)"
"$python" -m venv "$new"
# Built from a copy of what the build reads, so the checkout gets no build/ or *.egg-info
# (and may be read-only).
src=$new/.src
mkdir "$src"
members=(pyproject.toml README.md imagenetfs)
for f in setup.py setup.cfg MANIFEST.in LICENSE LICENSE.txt LICENSE.md; do
    [ -e "$repo/$f" ] && members+=("$f")
done
tar -C "$repo" --exclude=__pycache__ -cf - "${members[@]}" | tar -C "$src" -xf -
say "pip install (downloads the dependencies, compiles pyfuse3: a minute or two)"
env -u PIP_TARGET -u PIP_PREFIX -u PIP_ROOT PIP_USER=0 \
    "$new/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check \
    "$src"
rm -rf "$src"
version=$("$new/bin/imagenetfs" --version) || die "the installed imagenetfs does not run"

# Switch: rename a new symlink over the old one (atomic), first $prefix/venv, then the command;
# not interrupted by signals, and undone by cleanup if a step fails.
trap '' INT TERM HUP
prev=$(readlink "$prefix/venv" || true)
switched=1
if [ -d "$prefix/venv" ] && [ ! -L "$prefix/venv" ]; then
    mv "$prefix/venv" "$prefix/venv-old-$$"   # a plain directory from elsewhere: retired below
fi
ln -sfn "$(basename "$new")" "$prefix/.venv.new-$$"
mv -Tf "$prefix/.venv.new-$$" "$prefix/venv"
mkdir -p "$bindir"
ln -sfn "$prefix/venv/bin/imagenetfs" "$bindir/.imagenetfs.new-$$"
mv -Tf "$bindir/.imagenetfs.new-$$" "$link"
done_ok=1
trap - INT TERM HUP

# Older versions go, unless a running process (a mount's daemon) has files of one mapped.
for old in "$prefix"/venv-*; do
    if [ ! -d "$old" ] || [ "$old" = "$new" ]; then continue; fi
    if grep -qsF -- "$old/" /proc/[0-9]*/maps 2>/dev/null; then
        say "kept $old: a running process uses it (the next install removes it)"
    else
        rm -rf "$old"
    fi
done

say "installed $version: $link -> $new/bin/imagenetfs"
command -v mksquashfs >/dev/null 2>&1 \
    || say "note: no mksquashfs: the built-in sample (used when there is no ImageNet here) needs $(pkg squashfs-tools)"
if [ ! -e /dev/fuse ]; then
    say "note: no /dev/fuse on this machine: mounting will fail here (it may work on other nodes)"
elif [ ! -r /dev/fuse ] || [ ! -w /dev/fuse ]; then
    say "note: /dev/fuse is not readable and writable for you here: mounting will fail on this machine"
fi
case ":$PATH:" in
    *":$bindir:"* | *":$bindir/:"*) ;;
    *)
        shown=$bindir
        case $bindir in "$HOME"/*) shown="\$HOME${bindir#"$HOME"}" ;; esac
        say "$bindir is not on your PATH: add this line to ~/.bashrc: export PATH=\"$shown:\$PATH\""
        ;;
esac
