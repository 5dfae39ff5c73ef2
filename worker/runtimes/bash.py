"""Shell: bash --noprofile --norc, warm, reading the script from the job pipe.

The payload execs bash before the job exists: it says it is ready on fd 4
and blocks reading the job's first word from fd 3. For a one-shot run
("run") it sets an EXIT trap that reports the exit status there, then
sources the rest of the pipe as the script (``.`` reads it whole first, so
line numbers in errors are the script's own).

For a session ("session") it reads cells one after another, each ended by
a NUL byte, and evaluates each in the same shell: variables, functions and
the working directory stay. SIGINT is "stop this cell": the foreground
program gets it too, and a trap returns from the innermost function running
(the cell's own, unless the cell called one of its functions: then only
that one returns, and a cell that goes on after it is ended with the
session at the grace). The trap is set again before every cell: bash never
re-enters a trap that was left by ``return``. ``exit`` in a cell ends the
session, and says so on fd 4.

Scripts see a small fixed set of programs (``TOOLS``, the ones this host
has), copied with the libraries they link into bash's own root: no other
interpreter (python3, perl, node) and nothing else of /usr.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import NoReturn

from protocol.messages import Job
from protocol.profile import Profile
from worker.runtimes.base import Runtime

BASH = shutil.which("bash") or "/bin/bash"
# Debian's `which` is a /bin/sh script, and there is no sh in this root: the
# same answer from bash itself (`type -P`), as a function scripts can call.
WHICH = 'which() { local found=0 name; for name; do type -P "$name" || found=1; done; return $found; }'
SESSION = r"""
trap 'printf "QX%d" "$?" >&4' EXIT
__cellblock_cell() { eval "$1"; }
while :; do
  trap 'return 130 2>/dev/null' INT
  if IFS= read -r -d '' __cellblock_code <&3; then
    __cellblock_cell "$__cellblock_code"; printf 'X%d' "$?" >&4
  elif [ "$?" -gt 128 ]; then continue
  else break
  fi
done
trap - EXIT
exit 0
"""
BOOT = (
    WHICH
    + "; printf R >&4; IFS= read -r -d '' __cellblock_mode <&3; "
    + 'if [ "$__cellblock_mode" = session ]; then unset __cellblock_mode; '
    + SESSION
    + '\nfi; unset __cellblock_mode; trap \'printf "X%d" "$?" >&4\' EXIT; . /dev/fd/3'
)
# coreutils a script reaches for, the text tools around them, and curl for
# runs holding a network grant (HTTP_PROXY points it at the egress proxy)
TOOLS = (
    "basename cat chmod comm cp cut date dd df dirname du env expr false fold head id install "
    "join ln ls md5sum mkdir mktemp mv nl nproc od paste printf pwd readlink realpath rm rmdir "
    "seq sha1sum sha256sum sleep sort split stat sum tac tail tee test timeout touch tr true "
    "truncate uname uniq wc whoami yes base64 "
    "awk grep sed find xargs diff gzip tar curl"
).split()


class BashRuntime(Runtime):
    name = "bash"
    languages = ("bash", "sh", "shell", "zsh")
    self_test = ("echo $((6 * 7)) | cat", "42\n")
    execs = True
    needs_exec_syscall = True
    sessions = True

    def probe(self) -> tuple[bool, str]:
        if not os.access(BASH, os.X_OK):
            return False, "bash is not installed"
        try:
            out = subprocess.run([BASH, "--version"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            return False, f"bash does not run ({exc})"
        return True, "GNU bash " + out.split("version ")[1].split()[0] if "version " in out else "bash"

    def tools(self) -> list[str]:
        found = [shutil.which(name, path="/usr/bin:/bin") for name in TOOLS]
        return [BASH, *(path for path in found if path)]

    def encode_job(self, job: Job, first: bool = True) -> bytes:
        if not job.session:
            return b"run\0" + job.code.encode()
        # A shell variable cannot hold a NUL: a session's cell is ended by one.
        cell = job.code.encode().replace(b"\0", b"") + b"\0"
        return b"session\0" + cell if first else cell

    def exec_interpreter(self, profile: Profile) -> NoReturn:
        os.execv(BASH, ["bash", "--noprofile", "--norc", "-c", BOOT, "bash"])  # noqa: S606 - no shell wanted
