"""Imports point one way: worker/ never imports supervisor/; protocol/ imports neither;
no service module imports a client tool; and no import cycle, anywhere, even a lazy one."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("protocol", "supervisor", "worker")
FORBIDDEN = {
    "protocol": {"supervisor", "worker"},
    "worker": {"supervisor"},
}
TOOLS = "supervisor.tools"  # clients of the broker: cli, mcp, console, harness, doctor, embedded


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imports_of(path: pathlib.Path, known: set[str]) -> set[str]:
    """Every project module ``path`` imports, at any depth of the file (lazy imports too)."""
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name in known}


def graph() -> dict[str, set[str]]:
    known = modules()
    names = set(known)
    return {name: imports_of(path, names) - {name} for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Each import cycle once (as the path that closes it), by depth-first search."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def test_import_arrows() -> None:
    wrong = []
    for name, targets in graph().items():
        banned = FORBIDDEN.get(name.split(".")[0], set())
        bad = sorted({t for t in targets if t.split(".")[0] in banned})
        if bad:
            wrong.append(f"{name} imports {bad}")
    assert wrong == []


def test_no_service_module_imports_a_tool() -> None:
    wrong = [
        f"{name} imports {sorted(t for t in targets if t.startswith(TOOLS))}"
        for name, targets in graph().items()
        if not name.startswith(TOOLS) and any(t.startswith(TOOLS) for t in targets)
    ]
    assert wrong == []


def test_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_the_cycle_check_finds_a_cycle_even_through_a_lazy_import(tmp_path: pathlib.Path) -> None:
    a = tmp_path / "a.py"
    b = tmp_path / "b.py"
    a.write_text("from b import matches\n")
    b.write_text("def f():\n    from a import helper\n")
    edges = {"a": imports_of(a, {"a", "b"}), "b": imports_of(b, {"a", "b"})}
    assert cycles(edges) == [["a", "b", "a"]]
    # And on the real tree: the old egress <-> broker <-> grants loop would be found.
    real = graph()
    real["supervisor.policy.grants"] = real["supervisor.policy.grants"] | {"supervisor.egress.proxy"}
    assert any("supervisor.policy.grants" in cycle for cycle in cycles(real))


def test_launcher_holds_no_zeromq() -> None:
    # The launcher forks; a ZeroMQ context must never exist in it.
    for name in ("supervisor/launcher.py", "supervisor/pool.py", "worker/sandbox.py", "worker/monitor.py"):
        tree = ast.parse((ROOT / name).read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not any(x.split(".")[0] == "zmq" for x in names), name


def test_roles_stay_small() -> None:
    """No function in the service or the worker over 80 lines; the broker and the launcher
    under 450 each (what grows there belongs in a module of its own)."""
    long = []
    for package in ("supervisor", "worker"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = (node.end_lineno or node.lineno) - node.lineno + 1
                    if lines > 80:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} is {lines} lines")
    assert long == []
    for name in ("supervisor/broker.py", "supervisor/launcher.py"):
        assert len((ROOT / name).read_text().splitlines()) < 450, name
