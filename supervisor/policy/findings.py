"""Static findings: what the code looks like it will try. Advice, not enforcement.

Python is read through its AST; JavaScript and shell through a few line
rules. Each finding names its rule, line and severity, and the capability it
implies where one is clear (a literal host, a literal absolute path). The
sandbox enforces whatever the code really does.
"""

from __future__ import annotations

import ast
import re
import urllib.parse
from collections.abc import Iterator

from protocol import messages as m

MAX_ANALYSED = 256 * 1024
K = m.CapabilityKind

PROCESS_CALLS = {
    "os.system",
    "os.popen",
    "os.execv",
    "os.execve",
    "os.execvp",
    "os.execl",
    "os.execlp",
    "os.spawnv",
    "os.spawnl",
    "os.posix_spawn",
    "os.fork",
    "pty.spawn",
    "subprocess.run",
    "subprocess.Popen",
    "subprocess.call",
    "subprocess.check_call",
    "subprocess.check_output",
    "subprocess.getoutput",
}
NETWORK_MODULES = {
    "socket",
    "urllib",
    "http",
    "requests",
    "httpx",
    "aiohttp",
    "ftplib",
    "smtplib",
    "ssl",
    "telnetlib",
    "websocket",
    "websockets",
    "paramiko",
}
NATIVE_MODULES = {"ctypes", "cffi", "mmap"}
# The host of a URL; its userinfo (``deploy:pw@``) is skipped, never taken for a host.
URL = re.compile(r"\b(?:https?|ftp|wss?)://(?:[^\s/?#@]*@)?([A-Za-z0-9.-]+)")
SANDBOX_PATHS = ("/work", "/tmp", "/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/proc/self")


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _name(node.value)
        return f"{base}.{node.attr}" if base else node.attr
    return ""


def _finding(rule: str, line: int, severity: str, message: str, implies: m.Capability | None = None) -> m.Finding:
    return m.Finding(rule=rule, line=line, severity=severity, message=message, implies=implies)  # type: ignore[arg-type]


def _host_path(path: str) -> bool:
    return path.startswith("/") and not path.startswith(SANDBOX_PATHS)


def _open_mode(call: ast.Call) -> str:
    mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
    return mode.value if isinstance(mode, ast.Constant) and isinstance(mode.value, str) else "r"


def python(code: str) -> Iterator[m.Finding]:
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError):
        return
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                if top in NETWORK_MODULES:
                    yield _finding("network_module", line, "info", f"imports {name}: the network is off unless granted")
                elif top in NATIVE_MODULES:
                    yield _finding("native_code", line, "warning", f"imports {name}: native code and raw memory")
                elif top == "subprocess":
                    yield _finding("process_spawn", line, "warning", "imports subprocess: starts other programs")
        elif isinstance(node, ast.Call):
            name = _name(node.func)
            if name in PROCESS_CALLS:
                yield _finding("process_spawn", line, "warning", f"{name}() starts another program")
            elif name in ("eval", "exec", "compile") and node.args and not isinstance(node.args[0], ast.Constant):
                yield _finding("dynamic_code", line, "warning", f"{name}() of a computed string")
            elif name in ("__import__", "importlib.import_module"):
                yield _finding("dynamic_import", line, "info", f"{name}() imports by name at run time")
            elif name in ("open", "io.open", "os.open", "pathlib.Path") and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str) and _host_path(first.value):
                    write = name != "pathlib.Path" and any(c in _open_mode(node) for c in "wax+")
                    kind = K.FS_WRITE if write else K.FS_READ
                    yield _finding(
                        "absolute_path_write" if write else "absolute_path_read",
                        line,
                        "warning" if write else "info",
                        f"{'writes' if write else 'reads'} {first.value}, a host path the sandbox does not have",
                        m.Capability(kind, first.value),
                    )
            elif name.split(".")[-1] in ("rmtree", "remove", "unlink", "rmdir") and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str) and _host_path(first.value):
                    yield _finding(
                        "absolute_path_delete",
                        line,
                        "danger",
                        f"deletes {first.value}",
                        m.Capability(K.FS_WRITE, first.value),
                    )
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            for host in URL.findall(node.value):
                yield _finding(
                    "network_host",
                    line,
                    "info",
                    f"mentions {host}; reaching it needs a net grant",
                    m.Capability(K.NET, host.lower()),
                )


JS_RULES = (
    ("process_spawn", "warning", re.compile(r"\bchild_process\b|\bexecSync\b|\bspawnSync\b"), "starts other programs"),
    ("dynamic_code", "warning", re.compile(r"\beval\s*\(|\bnew\s+Function\s*\("), "runs a computed string"),
    (
        "network_module",
        "info",
        re.compile(r"\bfetch\s*\(|require\(['\"](?:https?|net|dgram|tls)['\"]\)"),
        "uses the network, which is off unless granted",
    ),
    ("fs_write", "info", re.compile(r"\bwriteFileSync?\s*\(\s*['\"]/(?!work|tmp)"), "writes a host path"),
)
SHELL_RULES = (
    ("network_tool", "info", re.compile(r"\b(?:curl|wget|nc|ncat|ssh|scp)\b|/dev/tcp/"), "uses the network"),
    (
        "destructive",
        "danger",
        re.compile(r"\brm\s+-[a-z]*r[a-z]*f?\s+/(?:\s|$)|\bmkfs\b|\bdd\s+if="),
        "deletes or overwrites a whole filesystem",
    ),
    ("privilege", "warning", re.compile(r"\bsudo\b|\bsu\s+-|\bchmod\s+[0-7]*7{2}\b"), "asks for privilege"),
    ("fork_bomb", "danger", re.compile(r":\(\)\s*\{\s*:\|:&\s*\};:"), "a fork bomb (the pids limit stops it)"),
)


def _lines(code: str, rules: tuple[tuple[str, str, re.Pattern[str], str], ...]) -> Iterator[m.Finding]:
    for number, text in enumerate(code.splitlines(), 1):
        for rule, severity, pattern, message in rules:
            if pattern.search(text):
                yield _finding(rule, number, severity, message)
        for host in URL.findall(text):
            yield _finding(
                "network_host",
                number,
                "info",
                f"mentions {host}; reaching it needs a net grant",
                m.Capability(K.NET, host.lower()),
            )


def analyse(language: str, code: str) -> list[m.Finding]:
    """Findings about the code; never raises, since the broker analyses a run
    after its job has gone out, when an exception could no longer be its reply."""
    if len(code) > MAX_ANALYSED:
        return [_finding("not_analysed", 0, "info", f"code over {MAX_ANALYSED} bytes was not analysed")]
    try:
        if language == "python":
            found = list(python(code))
        elif language == "javascript":
            found = list(_lines(code, JS_RULES))
        elif language in ("bash", "shell"):
            found = list(_lines(code, SHELL_RULES))
        else:
            found = []
    except Exception as exc:  # noqa: BLE001 - informational only; say so instead of failing the run
        return [_finding("not_analysed", 0, "info", f"the analysis failed: {type(exc).__name__}")]
    unique = {(f.rule, f.line, f.message): f for f in found}
    return sorted(unique.values(), key=lambda f: (f.line, f.rule))[:50]


def hosts(findings: list[m.Finding]) -> list[str]:
    return sorted(
        {
            urllib.parse.urlsplit("//" + f.implies.target).hostname or ""
            for f in findings
            if f.implies is not None and f.implies.kind is K.NET
        }
        - {""}
    )
