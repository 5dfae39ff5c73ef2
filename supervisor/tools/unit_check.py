"""``cellblock doctor``'s look at an installed systemd unit (contrib/cellblock.service).

Finds ``cellblock.service`` where systemd looks for units (and its drop-ins),
reads its [Service] section and says what would break the sandboxes
(hardening that forbids namespaces, cgroups or hostnames), what would break
a clean stop (a kill mode or stop timeout that cuts the drain short), and
what ``systemd-analyze verify`` says of it where that is installed.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable

OK, WARN, MISSING = "ok", "warn", "MISSING"
Row = tuple[str, str, str, str]
UNIT = "cellblock.service"
UNIT_DIRS = ["/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system", "/usr/lib/systemd/system",
             "/lib/systemd/system"]
DRAIN_S = 90.0  # [service] drain_s by default: the stop timeout must leave room for it
_TRUE = {"1", "yes", "true", "on"}

# Directives that take from the service what every sandbox needs: (directive, when its value breaks, why).
BREAKS: list[tuple[str, Callable[[str], bool], str]] = [
    ("RestrictNamespaces", lambda v: v.lower() not in ("", "no", "false", "0", "off"), "sandboxes need new namespaces"),
    ("ProtectControlGroups", lambda v: v.lower() in _TRUE, "the launcher writes the sandboxes' cgroups"),
    ("ProtectHostname", lambda v: v.lower() in _TRUE, "it forbids sethostname, which every sandbox calls"),
    ("PrivateUsers", lambda v: v.lower() in _TRUE, "per-slot uids need the host's uids"),
    ("ProtectKernelTunables", lambda v: v.lower() in _TRUE, "sandboxes mount a fresh /proc and write cgroups"),
]


def find_unit(dirs: list[str] | None = None) -> str | None:
    for directory in dirs or UNIT_DIRS:
        path = os.path.join(directory, UNIT)
        if os.path.exists(path):
            return path
    return None


def service_section(path: str, dirs: list[str] | None = None) -> dict[str, str]:
    """[Service] directives of the unit and its drop-ins (a later assignment wins, as in systemd)."""
    files = [path]
    for directory in dirs or UNIT_DIRS:
        files += sorted(glob.glob(os.path.join(directory, f"{UNIT}.d", "*.conf")))
    found: dict[str, str] = {}
    for name in files:
        try:
            with open(name, encoding="utf-8") as src:
                text = src.read().replace("\\\n", " ")
        except OSError:
            continue
        section = ""
        for line in text.splitlines():
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = line.strip("[]")
            elif section == "Service" and "=" in line:
                key, _, value = line.partition("=")
                found[key.strip()] = value.strip()
    return found


def seconds(value: str) -> float | None:
    """A systemd time span ("100", "90s", "2min", "1min 30s"); None for infinity or nonsense."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    parts = re.findall(r"([0-9.]+)\s*([a-z]*)", value.lower())
    if not parts or value.strip().lower() == "infinity":
        return None
    for number, unit in parts:
        if unit not in units:
            return None
        total += float(number) * units[unit]
    return total


def judge(directives: dict[str, str]) -> list[Row]:
    rows: list[Row] = []
    start = shlex.split(directives.get("ExecStart", ""))
    binary = start[0].lstrip("-@+!:") if start else ""
    if "serve" not in start or not binary.endswith("cellblock"):
        rows.append(("systemd", MISSING, f"ExecStart does not run `cellblock serve`: {start}", "see contrib/"))
    elif not os.access(binary, os.X_OK):
        rows.append(("systemd", MISSING, f"ExecStart names {binary}, which is not there", "install the checkout there"))
    for key, breaks, why in BREAKS:
        if breaks(directives.get(key, "")):
            rows.append(("systemd", MISSING, f"{key}={directives[key]}: {why}", f"remove {key}="))
    if directives.get("MemoryDenyWriteExecute", "").lower() in _TRUE:
        rows.append(("systemd", WARN, "MemoryDenyWriteExecute=yes: Node.js and Swift cannot compile", "remove it"))
    if directives.get("User", "root") not in ("root", "0") or directives.get("DynamicUser", "").lower() in _TRUE:
        rows.append(("systemd", WARN, "not root: unprivileged mode (memory limits per process)", "drop User="))
    if directives.get("KillMode", "control-group") != "mixed":
        rows.append(("systemd", WARN, "KillMode is not mixed: a stop kills runs mid-drain", "KillMode=mixed"))
    stop = seconds(directives.get("TimeoutStopSec", "90"))
    if stop is not None and stop < DRAIN_S + 5:
        rows.append(("systemd", WARN, f"TimeoutStopSec={stop:g}s is shorter than the drain", "TimeoutStopSec=100"))
    if directives.get("Type", "simple") != "notify":
        rows.append(("systemd", WARN, "Type is not notify: `systemctl start` returns before it serves", "Type=notify"))
    return rows


def verify(path: str) -> list[Row]:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        return []
    proc = subprocess.run([tool, "verify", path], capture_output=True, text=True, timeout=60, check=False)
    said = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    if proc.returncode == 0 and not said:
        return [("systemd", OK, "systemd-analyze verify: no complaint", "")]
    return [("systemd", WARN, f"systemd-analyze verify: {said[0] if said else proc.returncode}", "fix the unit")]


def rows(dirs: list[str] | None = None) -> list[Row]:
    """What doctor prints about the unit: nothing wrong, what is, or that none is installed."""
    path = find_unit(dirs)
    if path is None:
        return [("systemd", OK, f"no {UNIT} installed (optional)", "")]
    found = judge(service_section(path, dirs))
    found += verify(path)
    if not any(state != OK for _, state, _, _ in found):
        found.insert(0, ("systemd", OK, f"{path}: fit for the sandboxes", ""))
    return found
