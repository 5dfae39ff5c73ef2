"""Imports point one way: worker/ never imports supervisor/; protocol/ imports neither."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "protocol": {"supervisor", "worker"},
    "worker": {"supervisor"},
}


def imported(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_import_arrows() -> None:
    wrong = []
    for package, banned in FORBIDDEN.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            bad = imported(path) & banned
            if bad:
                wrong.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert wrong == []


def test_launcher_holds_no_zeromq() -> None:
    # The launcher forks; a ZeroMQ context must never exist in it.
    for name in ("supervisor/launcher.py", "supervisor/pool.py", "worker/sandbox.py", "worker/monitor.py"):
        assert "zmq" not in imported(ROOT / name), name
