#!/bin/sh
# The integration and sandbox tests again, as an unprivileged user (uid 65534):
# the service then runs without root, on user namespaces. On a host with cgroup
# v1 hierarchies, root first delegates a subtree of each to that user (the
# commands `cellblock doctor` prints), so runs get a memory cgroup of their own,
# and removes it again at the end; elsewhere the service falls back to rlimits.
# `make test` runs this after the root run.
set -eu
cd "$(dirname "$0")/.."
here=$(pwd)
VENV=${VENV:-.venv}
TESTS=${TESTS:-tests/integration tests/sandbox}
USER_ID=${UNPRIVILEGED_UID:-65534}

if [ "$(id -u)" != 0 ]; then
    echo "test-unprivileged: not root, so this is already the unprivileged run"
    exec "$VENV/bin/python" -m pytest $TESTS
fi
if ! command -v setpriv >/dev/null 2>&1; then
    echo "test-unprivileged: SKIPPED: setpriv (util-linux) is not installed" >&2
    exit 0
fi
as_user() { setpriv --reuid="$USER_ID" --regid="$USER_ID" --clear-groups "$@"; }

work=$(mktemp -d /tmp/cellblock-unprivileged.XXXXXX)
cellblock() { PYTHONPATH="$here" "$here/$VENV/bin/python" -m supervisor.tools.cli "$@"; }
cleanup() {
    # What the services left in the delegated subtree (nothing, if they stopped as
    # they should), then the subtree itself: the host as it was.
    cellblock doctor --undelegate-cgroups "$USER_ID" | sh || echo "test-unprivileged: cgroups left behind" >&2
    rm -rf "$work"
}
trap cleanup EXIT
chmod 755 "$work"
memory_cgroup=0
if grep -q ' - cgroup cgroup .*memory' /proc/self/mountinfo; then
    if cellblock doctor --delegate-cgroups "$USER_ID" | sh -e; then
        memory_cgroup=1  # the memory tests then fail, not skip, if the service does not use it
    else
        echo "test-unprivileged: could not delegate cgroups to uid $USER_ID; memory tests skip" >&2
    fi
fi
src=$here
if ! as_user test -r "$here/pyproject.toml" -a -x "$here/$VENV/bin/python" 2>/dev/null \
   || ! as_user "$here/$VENV/bin/python" -c 'import zmq, msgspec, prctl' 2>/dev/null; then
    # The checkout is not readable by that user (e.g. under /root): test a copy.
    echo "test-unprivileged: copying the checkout to $work/src for uid $USER_ID"
    mkdir "$work/src"
    (cd "$here" && tar cf - --exclude=./.git .) | (cd "$work/src" && tar xf -)
    chmod -R a+rX "$work/src"
    src=$work/src
fi
mkdir -p "$work/home" "$work/tmp"
chown "$USER_ID:$USER_ID" "$work/home" "$work/tmp"
cd "$src"
as_user env -i PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 HOME="$work/home" \
    XDG_RUNTIME_DIR="$work/home" XDG_STATE_HOME="$work/home/state" TMPDIR="$work/tmp" \
    CELLBLOCK_TESTS_MEMORY_CGROUP=$memory_cgroup \
    PYTHONPATH="$src" "$src/$VENV/bin/python" -m pytest $TESTS --basetemp="$work/tmp/pytest" "$@"
