# Sourced by scripts/test-prepare.sh (torch) and scripts/test-prepare-tf.sh (TensorFlow): an
# environment of pinned packages beside the project's dependencies and test extras, cached once
# per machine, and a small venv over it that holds this checkout. The caller sets repo, prefix,
# cache and python, and defines say and die.
#
#   cached_env NAME WHAT IMPORTS PIN...   $env: $cache/NAME-KEY, KEY a hash of the interpreter,
#                                         the machine, the pins and pyproject.toml's
#                                         dependencies and test extras (a change to any of them
#                                         builds a new one); built under a lock and marked
#                                         complete last (a half-built one is built again); ones
#                                         of other keys unused for two days are removed
#   venv_over ENV VENV IMPORTS            VENV made anew: sees ENV (a .pth), holds this
#                                         checkout, editable, with its `imagenetfs` command

cached_env() {
    local name=$1 what=$2 imports=$3 requirements key started old
    shift 3
    requirements=$("$python" - "$repo/pyproject.toml" "$@" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
print("\n".join([*sys.argv[2:], *project["dependencies"], *project["optional-dependencies"]["test"]]))
EOF
)
    local recipe=1  # bump to rebuild every machine's environments for a change not in the key
    key=$(printf '%s\n' "recipe $recipe" "$("$python" -VV)" "$(uname -m)" "$requirements" \
          | sha256sum | cut -c1-16)
    env="$cache/$name-$key"
    mkdir -p "$cache"
    exec 9>"$cache/.lock-$name"
    flock 9  # one builder at a time; the others wait, then find it complete
    if [ ! -e "$env/.complete" ]; then
        rm -rf "$env"  # left half-built by an interrupted run, if anything
        say "building the $what $env ($*, the project's dependencies and test extras; once" \
            "per machine, a few minutes)"
        started=$SECONDS
        "$python" -m venv "$env"
        printf '%s\n' "$requirements" >"$env/requirements.txt"
        local pip=("$env/bin/python" -m pip install -q --disable-pip-version-check)
        "${pip[@]}" --upgrade pip
        "${pip[@]}" -r "$env/requirements.txt"
        "$env/bin/python" -c "import $imports" || die "$env does not import $imports"
        printf '%s\n' "$key" >"$env/.complete"
        say "built $env in $((SECONDS - started)) s"
    fi
    touch "$env/.used"
    for old in "$cache/$name"-*; do
        [ -d "$old" ] && [ "$old" != "$env" ] || continue
        [ -n "$(find "$old/.used" -mtime -2 2>/dev/null)" ] && continue
        say "removing a $what unused for two days: $old"
        rm -rf "$old"
    done
    flock -u 9
}

venv_over() {
    local env=$1 venv=$2 imports=$3
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv --without-pip "$venv"
    site() { "$1" -c 'import sysconfig; print(sysconfig.get_path("purelib"))'; }
    printf 'import site; site.addsitedir(%s)\n' "'$(site "$env/bin/python")'" \
        >"$(site "$venv/bin/python")/imagenetfs-test-env.pth"
    # pip itself comes from the cached environment (through the .pth), installing into VENV
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e "$repo"
    "$venv/bin/python" -c "import imagenetfs, $imports" \
        || die "$venv does not import imagenetfs, $imports"
}
