"""contrib/cellblock.service, and what `cellblock doctor` says of an installed unit."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

from supervisor.tools import doctor, unit_check

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "contrib" / "cellblock.service"
CELLBLOCK = ROOT / ".venv" / "bin" / "cellblock"


def install(unit_dir: pathlib.Path, drop_in: str = "", text: str | None = None) -> pathlib.Path:
    """The shipped unit in ``unit_dir``, run from this checkout, with an optional drop-in."""
    unit = unit_dir / "cellblock.service"
    body = SHIPPED.read_text() if text is None else text
    unit.write_text(body.replace("/opt/cellblock/.venv/bin/cellblock", str(CELLBLOCK)))
    if drop_in:
        (unit_dir / "cellblock.service.d").mkdir(exist_ok=True)
        (unit_dir / "cellblock.service.d" / "local.conf").write_text(f"[Service]\n{drop_in}\n")
    return unit


def states(unit_dir: pathlib.Path) -> list[tuple[str, str]]:
    return [(state, found) for _, state, found, _ in unit_check.rows([str(unit_dir)])]


def test_the_shipped_unit_is_fit_for_the_sandboxes(tmp_path: pathlib.Path) -> None:
    install(tmp_path)
    found = states(tmp_path)
    assert all(state == unit_check.OK for state, _ in found), found
    assert any("fit for the sandboxes" in text for _, text in found)


def test_systemd_analyze_verifies_the_shipped_unit(tmp_path: pathlib.Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed here (apt-get install systemd)")
    unit = install(tmp_path)
    proc = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "drop_in",
    [
        "RestrictNamespaces=yes",
        "RestrictNamespaces=net",
        "ProtectControlGroups=yes",
        "ProtectHostname=true",
        "PrivateUsers=yes",
        "ProtectKernelTunables=yes",
    ],
)
def test_hardening_that_breaks_the_sandboxes_is_named(tmp_path: pathlib.Path, drop_in: str) -> None:
    install(tmp_path, drop_in)
    missing = [text for state, text in states(tmp_path) if state == unit_check.MISSING]
    assert len(missing) == 1 and missing[0].startswith(drop_in.split("=")[0]), missing


@pytest.mark.parametrize(
    ("drop_in", "says"),
    [
        ("KillMode=control-group", "KillMode"),
        ("TimeoutStopSec=30s", "TimeoutStopSec"),
        ("TimeoutStopSec=1min", "TimeoutStopSec"),
        ("Type=simple", "Type"),
        ("MemoryDenyWriteExecute=yes", "MemoryDenyWriteExecute"),
        ("User=nobody", "not root"),
    ],
)
def test_what_would_cut_a_stop_short_or_weaken_runs_is_a_warning(
    tmp_path: pathlib.Path, drop_in: str, says: str
) -> None:
    install(tmp_path, drop_in)
    warned = [text for state, text in states(tmp_path) if state == unit_check.WARN]
    assert any(says in text for text in warned), warned


def test_a_unit_whose_command_is_not_there_is_missing(tmp_path: pathlib.Path) -> None:
    install(tmp_path, text=SHIPPED.read_text().replace("/opt/cellblock/.venv/bin/cellblock", "/nonexistent/cellblock"))
    missing = [text for state, text in states(tmp_path) if state == unit_check.MISSING]
    assert any("/nonexistent/cellblock" in text for text in missing), missing


def test_no_unit_installed_is_fine(tmp_path: pathlib.Path) -> None:
    assert states(tmp_path) == [(unit_check.OK, "no cellblock.service installed (optional)")]


def test_doctor_reports_an_installed_unit(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(tmp_path, "RestrictNamespaces=yes")
    monkeypatch.setattr(unit_check, "UNIT_DIRS", [str(tmp_path)])
    rows = [r for r in doctor.checks() if r[0] == "systemd"]
    assert any(state == doctor.MISSING and "RestrictNamespaces" in found for _, state, found, _ in rows), rows
    assert doctor.run_doctor(str(tmp_path / "no.sock")) == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [("100", 100.0), ("90s", 90.0), ("2min", 120.0), ("1min 30s", 90.0), ("infinity", None), ("5 parsecs", None)],
)
def test_time_spans_read_as_systemd_reads_them(value: str, expected: float | None) -> None:
    assert unit_check.seconds(value) == expected
