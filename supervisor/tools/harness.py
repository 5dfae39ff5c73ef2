"""``cellblock harness``: attack a service with a corpus of hostile programs, score it.

A case is a program (.py, .js or .sh) with a comment header (``#`` or ``//``)::

    # category: network            resources, filesystem, network, privilege, escape,
    #                              seccomp, leaks, protocol, output, secrets (any word)
    # name: TCP to the host's loopback
    # safe-status: ok, error       the statuses that count as safe (default: ok)
    # kind: run | pair | client    run: one sandboxed run; pair: two runs split at
    #                              "# ---- second run ----"; client: a program run on
    #                              the host as a client, with $CELLBLOCK_SOCKET set
    # escaped-if-output: ESCAPED   comma-separated texts that mean the attack worked
    # expect-truncated: yes        the output must have been cut
    # stream: yes                  ask for streamed output (chunks are checked too)
    # timeout: 5                   seconds (a run's wall-clock limit)

``{{HOST_TCP_PORT}}``, ``{{HOST_UDP_PORT}}`` and ``{{RUNDIR}}`` in a case are
replaced by a TCP and a UDP listener the harness holds on the host's
loopback and by the service's runtime directory.

After every case the harness checks the host: the service still answers (and,
embedded, its processes are the same ones), no process is left in a finished
sandbox, no sandbox uid owns a process outside one, the loopback listeners
heard nothing, and no file appeared outside the work directory (a name with
``cellblock-escape-marker``, or owned by a sandbox uid). It prints a scorecard
by category, writes JSON, and exits 1 if any case escaped or was inconclusive.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import threading
import time

import psutil

from protocol import messages as m
from protocol.client import Client
from supervisor.policy.detect import ALIASES

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_CASES = PROJECT_ROOT / "tests" / "harness" / "cases"
SPLIT = "# ---- second run ----"
MARKER = "cellblock-escape-marker"
SPAWNED = {"swift-frontend"}  # what a warm worker of a spawned runtime holds beside its payload
WATCHED = ("/tmp", "/var/tmp", "/dev/shm", "/root", "/home", "/etc", "/usr")
LANGUAGES = {".py": "python", ".js": "javascript", ".sh": "bash", ".swift": "swift"}


@dataclasses.dataclass
class Case:
    path: pathlib.Path
    name: str
    category: str
    kind: str
    language: str
    code: str
    safe: set[str]
    escaped_if: list[str]
    truncated: bool
    stream: bool
    timeout_ms: int


@dataclasses.dataclass
class Outcome:
    case: str
    category: str
    verdict: str  # safe | escaped | inconclusive | skipped (its runtime is not offered here)
    detail: str
    seconds: float


def load_cases(directory: pathlib.Path) -> list[Case]:
    cases = []
    for path in sorted(directory.iterdir()):
        if path.suffix not in LANGUAGES:
            continue
        text = path.read_text()
        header: dict[str, str] = {}
        for line in text.splitlines():
            prefix = "//" if line.startswith("//") else "#" if line.startswith("#") else ""
            if not prefix:
                break
            key, sep, value = line[len(prefix) :].partition(":")
            if sep:
                header[key.strip().lower()] = value.strip()
        cases.append(
            Case(
                path=path,
                name=header.get("name", path.stem),
                category=header.get("category", "other"),
                kind=header.get("kind", "run"),
                language=header.get("language", LANGUAGES[path.suffix]),
                code=text,
                safe={s.strip() for s in header.get("safe-status", "ok").split(",")},
                escaped_if=[s.strip() for s in header.get("escaped-if-output", "ESCAPED").split(",") if s.strip()],
                truncated=header.get("expect-truncated", "no") == "yes",
                stream=header.get("stream", "no") == "yes",
                timeout_ms=int(float(header.get("timeout", "10")) * 1000),
            )
        )
    return cases


class Listeners:
    """A TCP and a UDP socket on the host's loopback; a sandbox must never reach them."""

    def __init__(self) -> None:
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.abstract.bind(f"\0cellblock-harness-{self.tcp.getsockname()[1]}")
        self.abstract.listen(4)
        self.heard: list[str] = []
        for sock in (self.tcp, self.udp, self.abstract):
            sock.settimeout(0.2)
        self.stopping = False
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()

    def _listen(self) -> None:
        while not self.stopping:
            for sock, name in ((self.tcp, "tcp"), (self.abstract, "abstract")):
                try:
                    conn, _ = sock.accept()
                    self.heard.append(f"{name} connection")
                    conn.close()
                except OSError:
                    pass
            try:
                data, _ = self.udp.recvfrom(4096)
                self.heard.append(f"udp datagram {data[:20]!r}")
            except OSError:
                pass

    def close(self) -> None:
        self.stopping = True
        self.thread.join(2)
        for sock in (self.tcp, self.udp, self.abstract):
            sock.close()


def _snapshot() -> set[str]:
    seen = set()
    for top in WATCHED:
        try:
            for entry in os.scandir(top):
                seen.add(entry.path)
        except OSError:
            continue
    return seen


class HostCheck:
    def __init__(self, service_pids: dict[str, int], worker_uids: range | None) -> None:
        self.service_pids = service_pids
        self.worker_uids = worker_uids

    def launcher(self) -> psutil.Process | None:
        pid = self.service_pids.get("launcher")
        try:
            return psutil.Process(pid) if pid else None
        except psutil.Error:
            return None

    def leftovers(self) -> list[str]:
        """Processes in a sandbox beyond a warm worker's own: monitor and payload, and for
        a spawned runtime (Swift) its waiting program."""
        problems = []
        launcher = self.launcher()
        inside: set[int] = set()
        if launcher is not None:
            for monitor in launcher.children():
                try:
                    tree = monitor.children(recursive=True)
                except psutil.Error:
                    continue
                inside |= {monitor.pid, *(p.pid for p in tree)}
                waiting = [p for p in tree[1:] if _name(p) in SPAWNED]
                if len(tree) > 1 + min(1, len(waiting)):
                    names = ", ".join(p.name() for p in tree[:5] if p.is_running())
                    problems.append(f"a finished sandbox still has {len(tree)} processes ({names})")
        if self.worker_uids is not None:
            main = self.service_pids.get("main")
            for proc in psutil.process_iter(["uids", "name"]):
                uid = proc.info["uids"].real if proc.info["uids"] else -1
                if uid in self.worker_uids and proc.pid not in inside and not _in_a_sandbox(proc, main):
                    problems.append(f"pid {proc.pid} ({proc.info['name']}) runs as a sandbox uid outside a sandbox")
        return problems

    def settle(self, timeout: float = 3.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            problems = self.leftovers()
            if not problems or time.monotonic() > deadline:
                return problems
            time.sleep(0.1)

    def alive(self, client: Client) -> list[str]:
        problems = []
        try:
            client.status(timeout=10)
        except Exception as exc:  # noqa: BLE001 - any failure to answer is the finding
            problems.append(f"the service stopped answering ({exc})")
        for role, pid in self.service_pids.items():
            if not psutil.pid_exists(pid):
                problems.append(f"the {role} (pid {pid}) died")
        return problems

    def new_files(self, before: set[str]) -> list[str]:
        problems = []
        for path in sorted(_snapshot() - before):
            try:
                owner = os.lstat(path).st_uid
            except OSError:
                continue
            if MARKER in path or (self.worker_uids is not None and owner in self.worker_uids):
                problems.append(f"{path} appeared on the host (owner {owner})")
        return problems


def _name(proc: psutil.Process) -> str:
    try:
        return str(proc.name())
    except psutil.Error:
        return ""


def _in_a_sandbox(proc: psutil.Process, main: int | None) -> bool:
    """Under some cellblock launcher, or under another service than ours (its sandboxes
    being torn down: a payload whose monitor just died is reaped by that service's main)."""
    try:
        for parent in proc.parents():
            line = " ".join(parent.cmdline())
            if "cellblock-launcher" in line:
                return True
            if parent.pid != main and ("supervisor.tools.cli serve" in line or "cellblock serve" in line):
                return True
    except psutil.Error:
        return True  # gone while we looked
    return False


def _substitute(code: str, listeners: Listeners, rundir: str) -> str:
    return (
        code.replace("{{HOST_TCP_PORT}}", str(listeners.tcp.getsockname()[1]))
        .replace("{{HOST_UDP_PORT}}", str(listeners.udp.getsockname()[1]))
        .replace("{{RUNDIR}}", rundir)
    )


def _run_case(case: Case, client: Client, socket_path: str, code: str) -> tuple[str, str]:
    """(verdict, detail) from the case's own outputs and statuses."""
    if case.kind == "client":
        env = {"PATH": "/usr/bin:/bin", "CELLBLOCK_SOCKET": socket_path, "PYTHONPATH": str(PROJECT_ROOT)}
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        output = proc.stdout + proc.stderr
        if any(text in output for text in case.escaped_if):
            return "escaped", _first_line(output, case.escaped_if)
        if proc.returncode != 0:
            return "inconclusive", f"client program exited {proc.returncode}: {proc.stderr.strip()[-200:]}"
        return (
            ("safe", _first_line(output, ["BLOCKED"]))
            if "BLOCKED" in output
            else ("inconclusive", "the program never reached its attack")
        )
    parts = code.split(SPLIT) if case.kind == "pair" else [code]
    limits = m.Limits(timeout_ms=case.timeout_ms)
    detail = ""
    for part in parts:
        chunks: list[m.OutputChunk] = []
        result = client.execute(
            part,
            case.language,
            limits=limits,
            client_id="cellblock-harness",
            on_chunk=chunks.append if case.stream else None,
        )
        output = result.stdout + result.stderr + "".join(c.data for c in chunks)
        if any(text in output for text in case.escaped_if):
            return "escaped", _first_line(output, case.escaped_if)
        if result.status.value not in case.safe:
            why = result.error.message if result.error else result.reason
            return "inconclusive", f"status {result.status.value} ({why}); safe would be {sorted(case.safe)}"
        if case.truncated and not (result.stdout_truncated or result.stderr_truncated):
            return "escaped", "the flood was not cut"
        detail = f"{result.status.value}; " + _first_line(output, ["BLOCKED"])
    return "safe", detail


def _first_line(output: str, needles: list[str]) -> str:
    for line in output.splitlines():
        if any(n in line for n in needles):
            return line.strip()[:160]
    return output.strip().splitlines()[0][:160] if output.strip() else ""


def run(
    cases: list[Case],
    socket_path: str,
    rundir: str,
    service_pids: dict[str, int],
    worker_uids: range | None,
    log: bool = True,
) -> list[Outcome]:
    outcomes = []
    listeners = Listeners()
    checks = HostCheck(service_pids, worker_uids)
    try:
        with Client(socket_path) as client:
            offered = {r.name: r for r in client.status(timeout=30).runtimes}
            for case in cases:
                runtime = offered.get(ALIASES.get(case.language, case.language))
                if case.kind != "client" and (runtime is None or not runtime.offered):
                    why = runtime.reason if runtime is not None else "unknown to this service"
                    outcome = Outcome(case.path.name, case.category, "skipped", f"{case.language}: {why}", 0.0)
                    outcomes.append(outcome)
                    if log:
                        print(f"  [{'skipped':^12}] {case.category:<10} {case.name}: {outcome.detail}", file=sys.stderr)
                    continue
                before = _snapshot()
                heard = len(listeners.heard)
                started = time.monotonic()
                try:
                    verdict, detail = _run_case(case, client, socket_path, _substitute(case.code, listeners, rundir))
                except Exception as exc:  # noqa: BLE001 - a case that breaks the harness is not safe
                    verdict, detail = "inconclusive", f"harness error: {exc!r}"
                problems = checks.alive(client) + checks.settle() + checks.new_files(before)
                problems += [f"the host's loopback heard a {what}" for what in listeners.heard[heard:]]
                if problems:
                    verdict, detail = "escaped", "; ".join(problems)
                outcome = Outcome(case.path.name, case.category, verdict, detail, round(time.monotonic() - started, 2))
                outcomes.append(outcome)
                if log:
                    print(f"  [{verdict:^12}] {case.category:<10} {case.name}: {detail}", file=sys.stderr)
    finally:
        listeners.close()
    return outcomes


def scorecard(outcomes: list[Outcome]) -> dict[str, dict[str, int]]:
    card: dict[str, dict[str, int]] = {}
    for outcome in outcomes:
        row = card.setdefault(outcome.category, {"cases": 0, "safe": 0, "escaped": 0, "inconclusive": 0, "skipped": 0})
        row["cases"] += 1
        row[outcome.verdict] += 1
    return card


def print_scorecard(card: dict[str, dict[str, int]]) -> None:
    print(f"{'category':<12} {'cases':>5} {'safe':>5} {'escaped':>8} {'inconclusive':>13} {'skipped':>8}")
    total = {"cases": 0, "safe": 0, "escaped": 0, "inconclusive": 0, "skipped": 0}
    for category, row in [*sorted(card.items()), ("all", total)]:
        print(
            f"{category:<12} {row['cases']:>5} {row['safe']:>5} {row['escaped']:>8} {row['inconclusive']:>13} "
            f"{row['skipped']:>8}"
        )
        if category != "all":
            for key in total:
                total[key] += row[key]


def _service_pids(main_pid: int) -> dict[str, int]:
    pids = {"main": main_pid}
    for child in psutil.Process(main_pid).children():
        line = " ".join(child.cmdline())
        if "cellblock-launcher" in line:
            pids["launcher"] = child.pid
        elif "supervisor.broker" in line:
            pids["broker"] = child.pid
    return pids


def main(
    cases_dir: str | None,
    socket_path: str | None,
    profile: str | None,
    json_out: str | None,
    categories: list[str] | None,
    config: str | None,
) -> int:
    from supervisor.config import ServiceSection
    from supervisor.tools.embedded import Embedded

    cases = load_cases(pathlib.Path(cases_dir) if cases_dir else DEFAULT_CASES)
    if categories:
        cases = [c for c in cases if c.category in categories]
    if not cases:
        print("cellblock harness: no cases found", file=sys.stderr)
        return 2
    embedded = None
    service_pids: dict[str, int] = {}
    worker_uids = None
    if socket_path is None:
        tmp = pathlib.Path(tempfile.mkdtemp(prefix="cellblock-harness-"))
        os.chmod(tmp, 0o711)  # noqa: S103 - traverse only, for the broker's own uid
        if config is None:
            config_path = tmp / "harness.toml"
            config_path.write_text(
                f'[service]\nstate_dir = "{tmp / "state"}"\n\n[policy]\nrate_per_minute = 100000\nconcurrency = 1000\n'
            )
            config = str(config_path)
        embedded = Embedded(config=config, pool=2, profile=profile)
        socket_path = embedded.start()
        assert embedded.proc is not None
        service_pids = _service_pids(embedded.proc.pid)
        if os.geteuid() == 0:
            base = ServiceSection().worker_uid_base
            worker_uids = range(base, base + ServiceSection().slots)
    rundir = os.path.dirname(socket_path)
    print(f"cellblock harness: {len(cases)} cases against {socket_path}", file=sys.stderr)
    try:
        outcomes = run(cases, socket_path, rundir, service_pids, worker_uids)
    finally:
        if embedded is not None:
            embedded.stop()
    card = scorecard(outcomes)
    print_scorecard(card)
    report = {
        "socket": socket_path,
        "profile": profile or "default",
        "scorecard": card,
        "cases": [dataclasses.asdict(o) for o in outcomes],
    }
    out = pathlib.Path(json_out or "harness-results/harness.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    failed = [o for o in outcomes if o.verdict not in ("safe", "skipped")]
    return 1 if failed else 0
