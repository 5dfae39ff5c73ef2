#!/bin/sh
# Set up a fresh machine for cellblock: system packages (as root, through apt),
# then a virtualenv with the Python dependencies. Safe to run again.
set -eu
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

pick_python() {
    # Prefer the system interpreter: it lives under /usr, which every sandbox
    # already binds read-only, and every user (also the unprivileged test
    # user) can read it.
    for candidate in ${PYTHON:-} /usr/bin/python3 python3.13 python3.12 python3.11 python3; do
        [ -n "$candidate" ] || continue
        path=$(command -v "$candidate" 2>/dev/null) || continue
        if "$path" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$path"
            return 0
        fi
    done
    return 1
}

need_apt=""
[ -e /usr/include/sys/capability.h ] || need_apt="$need_apt libcap-dev"
command -v bwrap >/dev/null 2>&1 || need_apt="$need_apt bubblewrap"
# curl: the bash runtime binds it into its sandboxes, and the tests fetch
# through the egress proxy with it.
command -v curl >/dev/null 2>&1 || need_apt="$need_apt curl"
ldconfig -p 2>/dev/null | grep -q libseccomp.so.2 || need_apt="$need_apt libseccomp2"
if [ -n "$need_apt" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing system packages:$need_apt"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q $need_apt >/dev/null \
            || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $need_apt >/dev/null; }
    else
        case "$need_apt" in
            *libcap-dev*|*libseccomp2*)
                echo "setup: missing system packages:$need_apt" >&2
                echo "setup: install them as root (Debian/Ubuntu: sudo apt-get install$need_apt), then run make again" >&2
                exit 1 ;;
        esac
        case "$need_apt" in
            *bubblewrap*) echo "setup: bubblewrap is missing; the benchmark will skip its baseline" >&2 ;;
        esac
        case "$need_apt" in
            *curl*) echo "setup: curl is missing; bash runs have no curl and its egress test skips" >&2 ;;
        esac
    fi
fi

# A real browser for the console's tests (tests/browser), driven by Playwright
# with this executable (Playwright's own browser download is not used). Not
# required: where it cannot be installed, those tests skip and say why.
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing chromium (for the console's browser tests)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } \
            || echo "setup: chromium could not be installed; the console's browser tests will skip" >&2
    else
        echo "setup: chromium is missing; the console's browser tests will skip (as root, setup installs it)" >&2
    fi
fi

PY=$(pick_python) || { echo "setup: need Python 3.11 or newer with the venv module" >&2; exit 1; }
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV with $PY"
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# Dependencies from pyproject.toml (runtime, dev and mcp extras).
deps=$("$VENV/bin/python" - <<'PYEOF'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = list(project["dependencies"])
for extra in ("dev", "mcp"):
    deps += project["optional-dependencies"][extra]
print("\n".join(deps))
PYEOF
)
echo "$deps" | tr '\n' '\0' | xargs -0 "$VENV/bin/python" -m pip install -q
# atheris (the fuzz extra): `make fuzz`'s coverage-guided target. Not required:
# where no wheel fits, make fuzz runs the property-based targets alone and says so.
fuzz_deps=$("$VENV/bin/python" -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["fuzz"]))')
"$VENV/bin/python" -m pip install -q --only-binary=atheris $fuzz_deps >/dev/null 2>&1 \
    || echo "setup: atheris could not be installed; make fuzz will skip its coverage-guided target" >&2
# The project itself, editable: `from protocol.client import Client` and the
# `cellblock` command work from any directory, and run this checkout's code.
"$VENV/bin/python" -m pip install -q --no-deps -e . >/dev/null 2>&1 \
    || "$VENV/bin/python" -m pip install --no-deps -e .
# The default config's package environments (numpy, pandas, matplotlib, ...):
# built once per requirement list, then reused. Without them the service runs
# and says so (`cellblock status`); `cellblock env build` tries again.
if ! "$VENV/bin/cellblock" env build ${CELLBLOCK_CONFIG:+--config "$CELLBLOCK_CONFIG"}; then
    echo "setup: a package environment did not build (see above); python runs without it" >&2
fi
touch "$VENV/.setup-done"
echo "setup: ready ($("$VENV/bin/python" --version))"
