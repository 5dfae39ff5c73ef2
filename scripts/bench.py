#!/usr/bin/env python3
"""cellblock benchmark: the service beside its baselines, measured in one run.

    python scripts/bench.py [--socket PATH] [--quick] [--json out.json]

Through a running service (its socket) or an embedded one started for the
run, it measures the latency of a trivial run, throughput at 1, 2, 8 and 32
concurrent clients, the memory only each warm worker maps, the output path (10 MiB of
stdout) and redaction cost. In the same run it measures the baselines: a
fresh ``python3 -c`` per run (how the seed ran code), bubblewrap plus python
per run (when bwrap is installed), and this host's bare sandbox-creation rate
(a fork + unshare + pid-1 child loop, the ceiling for fresh sandboxes).
It prints a table and writes JSON with each figure's ratio to each baseline.

Latency is measured with a warm pool: sequential runs in bursts shorter
than the pool, the pool refilled between bursts (a run finds a warm worker),
through ``protocol.client`` (our own ZMTP DEALER) and, for Python, also
through a plain libzmq DEALER, which is what a host app in another language
uses.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import pathlib
import platform
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bench_tcp  # noqa: E402
import psutil  # noqa: E402

from protocol import messages as m  # noqa: E402
from protocol.client import Client  # noqa: E402
from supervisor.tools.embedded import Embedded  # noqa: E402

PRINT1 = "print(1)"
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
JS_POOL, BASH_POOL = 4, 8  # a warm node costs ~40 MiB: fewer of them
DATA_POOL = 8  # the data environment's warm workers (forks of a ~200 MiB zygote)
PAGE = os.sysconf("SC_PAGE_SIZE")
DATA_CODE = {
    "import": "import pandas, numpy; print(1)",
    "groupby": "import pandas as pd\n"
    "df = pd.DataFrame({'k': [1, 2, 1, 2, 3], 'v': [1.0, 2.0, 3.0, 4.0, 5.0]})\n"
    "print(df.groupby('k')['v'].sum().to_dict())",
}
RUNTIME_CODE = {
    "python": "print(1)",
    "javascript": "console.log(1)",
    "bash": "echo 1",
    "swift": "print(1)",
}
SWIFT_POOL = 2  # a warm Swift worker holds a 200 MiB frontend: fewer of them
SLOW = {"swift": 0.2}  # share of the runs a runtime gets (a Swift run compiles: ~60 ms)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": statistics.median(values), "p90": pct(values, 0.9), "p99": pct(values, 0.99), "n": len(values)}


# --- baselines -------------------------------------------------------------------------------


def time_command(cmd: list[str], runs: int, env: dict[str, str] | None = None) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True, env=env)
        out.append((time.perf_counter() - t) * 1000)
    return out


def command_throughput(cmd: list[str], seconds: float, parallel: int) -> float:
    stop = time.monotonic() + seconds
    counts = [0] * parallel

    def loop(i: int) -> None:
        while time.monotonic() < stop:
            subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
            counts[i] += 1

    start = time.monotonic()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - start)


def bwrap_command() -> list[str] | None:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return None
    cmd = [bwrap, "--ro-bind", "/usr", "/usr", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for name in ("bin", "lib", "lib64", "sbin"):
        if os.path.islink("/" + name):
            cmd += ["--symlink", os.readlink("/" + name), "/" + name]
    cmd += ["--unshare-all", "--die-with-parent", "--new-session", PYTHON, "-c", PRINT1]
    probe = subprocess.run(cmd, capture_output=True)
    return cmd if probe.returncode == 0 else None


_FLAGS = 0x20000 | 0x04000000 | 0x08000000 | 0x20000000 | 0x40000000  # ns, uts, ipc, pid, net


def bare_sandbox_rate(seconds: float, parallel: int) -> float:
    """fork, unshare(pid, mount, net, ipc, uts [+ user]), fork the pid-1 child, exit, wait: in a loop."""
    flags = _FLAGS | (0 if os.geteuid() == 0 else 0x10000000)
    code = f"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
stop = time.monotonic() + {seconds}
n = 0
while time.monotonic() < stop:
    pid = os.fork()
    if pid == 0:
        if libc.unshare({flags}) != 0:
            os._exit(1)
        child = os.fork()
        if child == 0:
            os._exit(0)
        os.waitpid(child, 0)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status:
        sys.exit("unshare failed")
    n += 1
print(n)
"""
    start = time.monotonic()
    procs = [subprocess.Popen([PYTHON, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(parallel)]
    total = sum(int(p.communicate()[0]) for p in procs)
    return total / (time.monotonic() - start)


def relay_chain_latency(runs: int, burst: int) -> list[float]:
    """The wakeup floor of a run's path: one byte through three relaying processes and back.

    A run crosses six hops (client, broker, monitor, payload and back), each a
    process waking on a socket or pipe. This measures six such hops between
    processes that do nothing else, in bursts like the service's latency runs.
    """
    code = f"""
import os, socket, statistics, time
def relay(up, down):
    while (b := up.recv(64)):
        down.sendall(b)
        up.sendall(down.recv(64))
    os._exit(0)
def echo(up):
    while (b := up.recv(64)):
        up.sendall(b)
    os._exit(0)
ab, bc, cd = socket.socketpair(), socket.socketpair(), socket.socketpair()
ends = [*ab, *bc, *cd]
def child(run, *keep):
    if os.fork() == 0:
        for s in ends:
            if s not in keep:
                s.close()
        run(*keep)
child(relay, ab[1], bc[0])
child(relay, bc[1], cd[0])
child(echo, cd[1])
for s in ends[1:]:
    s.close()
out = []
while len(out) < {runs}:
    time.sleep(0.05)
    for _ in range(min({burst}, {runs} - len(out))):
        t = time.perf_counter()
        ab[0].sendall(b"x")
        ab[0].recv(64)
        out.append((time.perf_counter() - t) * 1000)
ab[0].close()
for _ in range(3):
    os.wait()
print(" ".join(f"{{x:.4f}}" for x in out))
"""
    done = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True)
    return [float(x) for x in done.stdout.split()]


# --- the service ---------------------------------------------------------------------------------


def kind_of(kind: str) -> tuple[str, str]:
    """A bench row's kind of worker as (language, environment): "python" is the plain
    interpreter (no environment), "python:data" the data environment's."""
    language, _, environment = kind.partition(":")
    return language, environment or ("none" if language == "python" else "")


def wait_warm(client: Client, runtime: str, target: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        status = client.status()
        for rt in status.runtimes:
            if rt.name == runtime:
                if rt.warm >= target:
                    return
                seen = (
                    f"warm {rt.warm}, busy {rt.busy}, starting {rt.starting}, target {rt.target}, "
                    f"restarts {rt.restarts}, setup failures {rt.setup_failures}; queue {status.queue}"
                )
        time.sleep(0.02)
    raise RuntimeError(f"{runtime}: fewer than {target} warm workers after {timeout:.0f} s ({seen})")


class LibzmqClient:
    """A host app's view: a plain libzmq (pyzmq) DEALER, not protocol.client."""

    def __init__(self, path: str) -> None:
        import zmq

        from protocol.wire import client_codec

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(f"ipc://{path}")
        self.codec = client_codec()

    def execute(self, code: str, language: str, client_id: str, environment: str = "") -> m.ExecuteResult:
        request = m.ExecuteRequest(
            id=os.urandom(8).hex(), code=code, language=language, client_id=client_id, environment=environment
        )
        self.sock.send_multipart(self.codec.encode(request))
        while True:
            reply = self.codec.decode(self.sock.recv_multipart())
            if isinstance(reply, m.ExecuteResult) and reply.id == request.id:
                return reply

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def latency(
    client: Client, code: str, language: str, runs: int, burst: int, pool: int, via: LibzmqClient | None = None
) -> list[float]:
    out: list[float] = []
    while len(out) < runs:
        wait_warm(client, language, pool)
        for _ in range(min(burst, runs - len(out))):
            t = time.perf_counter()
            lang, env = kind_of(language)
            result = (via or client).execute(code, lang, client_id="bench", environment=env)
            out.append((time.perf_counter() - t) * 1000)
            if result.status is not m.Status.OK:
                raise RuntimeError(f"bench run failed: {result.status} {result.error} {result.stderr[-300:]}")
    return out


def throughput(socket: str, code: str, language: str, clients: int, seconds: float) -> dict[str, float]:
    stop = time.monotonic() + seconds
    counts = [0] * clients
    failures = [0] * clients
    latencies: list[float] = []

    def loop(i: int) -> None:
        with Client(socket) as client:
            while time.monotonic() < stop:
                t = time.perf_counter()
                lang, env = kind_of(language)
                result = client.execute(code, lang, client_id=f"bench-{i}", environment=env)
                if result.status is m.Status.OK:
                    counts[i] += 1
                    latencies.append((time.perf_counter() - t) * 1000)
                else:
                    failures[i] += 1

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(loop, range(clients)))
    elapsed = time.monotonic() - start
    return {
        "runs_per_s": sum(counts) / elapsed,
        "failures": sum(failures),
        "p50_ms": statistics.median(latencies) if latencies else 0.0,
    }


def _busy_ticks() -> int:
    """CPU time spent by the whole machine (user, nice, system, irq, softirq; not steal), in ticks."""
    with open("/proc/stat") as src:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, src.readline().split()[1:8])
    return user + nice + system + irq + softirq


def _ticks_of(pids: list[int]) -> int:
    """The own user+system ticks of these processes (one that has exited counts 0)."""
    total = 0
    for pid in pids:
        try:
            total += _process_ticks(pid)[0]
        except OSError:
            pass
    return total


def _process_ticks(pid: int) -> tuple[int, int]:
    """(its own user+system, that of its reaped children), in ticks."""
    with open(f"/proc/{pid}/stat") as src:
        fields = src.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def cpu_per_run(socket: str, clients: int, seconds: float, launcher: int, broker: int) -> dict[str, float]:
    """Throughput at ``clients`` with the machine's cpu split by process, in ms per run.

    The launcher's own time is asking for sandboxes and reaping them; the
    zygotes' is cloning workers (each worker is a clone of its kind's zygote,
    made the launcher's child by CLONE_PARENT); the launcher's reaped children
    are the workers (monitor and payload, from their making to their exit);
    the bench process is the clients. What no process of ours is charged with
    (kernel threads tearing down namespaces, other load) is "other". On N
    cpus, R runs/s is possible only within N*1000/R ms.
    """
    hz = os.sysconf("SC_CLK_TCK")
    zygotes = [p.pid for p in psutil.Process(launcher).children() if not _is_monitor(p.pid)]
    before = (_busy_ticks(), _process_ticks(launcher), _process_ticks(broker)[0], _ticks_of(zygotes))
    own = resource.getrusage(resource.RUSAGE_SELF)
    result = throughput(socket, PRINT1, "python", clients, seconds)
    mine = resource.getrusage(resource.RUSAGE_SELF)
    busy, (launcher_self, workers), broker_self = (_busy_ticks(), _process_ticks(launcher), _process_ticks(broker)[0])
    zygotes_self = _ticks_of(zygotes)
    runs = result["runs_per_s"] * seconds
    if runs <= 0:
        return {}
    per_run = 1000 / hz / runs
    split = {
        "total": (busy - before[0]) * per_run,
        "launcher": (launcher_self - before[1][0]) * per_run,
        "zygotes": (zygotes_self - before[3]) * per_run,
        "workers": (workers - before[1][1]) * per_run,
        "broker": (broker_self - before[2]) * per_run,
        "clients": (mine.ru_utime + mine.ru_stime - own.ru_utime - own.ru_stime) * 1000 / runs,
    }
    split["other"] = max(0.0, split["total"] - sum(v for k, v in split.items() if k != "total"))
    split["runs_per_s"] = result["runs_per_s"]
    split["budget_at_300_per_s"] = (os.cpu_count() or 1) * 1000 / 300
    return split


def _mapped_frames(pid: int) -> collections.Counter[int]:
    """Physical page frames the process maps, from /proc/<pid>/pagemap (root only)."""
    frames: collections.Counter[int] = collections.Counter()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for line in maps:
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            if start >= 1 << 47:  # [vsyscall]
                continue
            pagemap.seek(start // PAGE * 8)
            for (entry,) in struct.iter_unpack("Q", pagemap.read((end - start) // PAGE * 8)):
                frame = entry & ((1 << 55) - 1)
                if entry >> 63 and frame:  # present, and the kernel showed us its frame
                    frames[frame] += 1
    return frames


def unique_to(pids: list[int]) -> int | None:
    """Bytes of the pages that these processes map and nothing else does.

    The per-process USS summed misses every page the group shares only
    within itself (a monitor's copy made before it forked its payload), so it
    understates what a worker costs. None where frames are hidden (not root).
    """
    frames: collections.Counter[int] = collections.Counter()
    for pid in pids:
        frames.update(_mapped_frames(pid))
    if not frames:
        return None
    unique = 0
    with open("/proc/kpagecount", "rb") as counts:
        for frame, mapped_here in frames.items():
            counts.seek(frame * 8)
            if struct.unpack("Q", counts.read(8))[0] == mapped_here:
                unique += 1
    return unique * PAGE


def _is_monitor(pid: int) -> bool:
    """A worker's monitor is pid 1 of a pid namespace of its own (NSpid: <host pid> 1)."""
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return line.split()[-1] == "1" and len(line.split()) > 2
    except OSError:
        pass
    return False


def _worker_runtime(group: list[psutil.Process]) -> str:
    names = {p.name() for p in group}
    for proc in group:
        try:
            if "/opt/cellblock/envs/" in pathlib.Path(f"/proc/{proc.pid}/maps").read_text():
                return "python:data"
        except OSError:
            continue
    for name, runtime in (("swift-frontend", "swift"), ("node", "javascript"), ("bash", "bash")):
        if name in names:
            return runtime
    return "python"


def worker_memory(launcher_pid: int, runtime: str = "python") -> dict[str, float]:
    """Memory of each warm worker of ``runtime`` (monitor, payload and what the payload
    holds): the pages only it maps, the per-process USS summed, and its cgroup charge."""
    unique_mib = []
    uss_sums = []
    charged = []
    for monitor in psutil.Process(launcher_pid).children():
        try:
            if not _is_monitor(monitor.pid):
                continue  # a zygote (the launcher's child too), not a worker
            group = [monitor, *monitor.children(recursive=True)]
            if _worker_runtime(group) != runtime:
                continue
            uss_sums.append(sum(p.memory_full_info().uss for p in group) / 2**20)
            try:
                unique = unique_to([p.pid for p in group])
            except OSError:
                unique = None
            if unique is not None:
                unique_mib.append(unique / 2**20)
        except psutil.Error:
            continue
        for line in pathlib.Path(f"/proc/{monitor.pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.strip().split(":", 2)
            if "memory" in controllers.split(","):
                usage = pathlib.Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.usage_in_bytes"
                if usage.exists():
                    charged.append(int(usage.read_text()) / 2**20)
    out = {
        "uss_sum_mib_median": statistics.median(uss_sums) if uss_sums else 0.0,
        "workers": len(uss_sums),
    }
    if unique_mib:
        out["unique_mib_median"] = statistics.median(unique_mib)
    if charged:
        out["cgroup_charge_mib_median"] = statistics.median(charged)
    return out


SESSION_MARK = "import ctypes\nctypes.CDLL(None).prctl(15, b'cb-bench-sess', 0, 0, 0)\n"  # PR_SET_NAME


def session_rows(client: Client, launcher_pid: int | None, runs: int, pool: int) -> dict[str, object]:
    """Sessions beside the one-shot run of the same service: the time to open one (it takes
    a warm worker and runs an empty first cell), a trivial cell in a warm session (no sandbox
    made: the job goes to a waiting interpreter), and what an idle session holds."""
    opens = []
    for _ in range(max(5, runs // 10)):
        wait_warm(client, "python", pool)
        t = time.perf_counter()
        info = client.session_open("python", environment="none", client_id="bench")
        opens.append((time.perf_counter() - t) * 1000)
        client.session_close(info.session, client_id="bench")
    session = client.session_open("python", environment="none", client_id="bench").session
    cells = []
    try:
        for _ in range(runs):
            t = time.perf_counter()
            result = client.execute("x = 1", session=session, client_id="bench")
            cells.append((time.perf_counter() - t) * 1000)
            if result.status is not m.Status.OK:
                raise RuntimeError(f"bench cell failed: {result.status} {result.error} {result.stderr[-300:]}")
        out: dict[str, object] = {"open_ms": summary(opens), "cell_ms": summary(cells)}
        if launcher_pid is not None:
            client.execute(SESSION_MARK, session=session, client_id="bench")
            time.sleep(0.2)
            out["idle_memory"] = _session_memory(launcher_pid)
    finally:
        client.session_close(session, client_id="bench")
    return out


def _session_memory(launcher_pid: int) -> dict[str, float]:
    """The idle session's worker (its payload named by SESSION_MARK): pages only it maps, USS."""
    for monitor in psutil.Process(launcher_pid).children():
        try:
            group = [monitor, *monitor.children(recursive=True)]
            if not any(p.name() == "cb-bench-sess" for p in group):
                continue
            out = {"uss_sum_mib": sum(p.memory_full_info().uss for p in group) / 2**20}
            try:
                unique = unique_to([p.pid for p in group])
            except OSError:
                unique = None
            if unique is not None:
                out["unique_mib"] = unique / 2**20
            return out
        except psutil.Error:
            continue
    return {}


def output_path(client: Client, broker_pid: int) -> dict[str, float]:
    code = "import os\nblock = b'x' * (1 << 20)\nfor _ in range(10): os.write(1, block)\n"
    broker = psutil.Process(broker_pid)
    before = broker.cpu_times()
    t = time.perf_counter()
    result = client.execute(code, limits=m.Limits(output_bytes=8 * 2**20), client_id="bench", environment="none")
    elapsed = time.perf_counter() - t
    after = broker.cpu_times()
    cpu = (after.user - before.user + after.system - before.system) * 1000
    kept = len(result.stdout)
    return {
        "seconds": elapsed,
        "mib_per_s": 10 / elapsed,
        "broker_cpu_ms": cpu,
        "kept_bytes": kept,
        "dropped_bytes": result.stdout_dropped,
        "status": result.status.value,
    }


def data_baselines(runs: int) -> dict[str, object]:
    """The data rows' code with a fresh ``python3 -c`` per run, the built environment on its path."""
    from supervisor.config import Config, cache_dir
    from worker import environments

    config = Config()
    found = environments.find(cache_dir(config), "data", config.environments["data"])
    if found is None:
        return {}
    env = {**os.environ, "PYTHONPATH": os.path.join(found[0], environments.SITE), "MPLBACKEND": "Agg"}
    env.update(environments.THREAD_LIMITS)
    return {
        f"python_c_data_{label}_latency_ms": summary(time_command([PYTHON, "-c", code], runs, env))
        for label, code in DATA_CODE.items()
    }


def swift_baselines(runs: int) -> dict[str, object]:
    """``print(1)`` with a fresh ``swift`` driver per run (its JIT), and compiled by
    ``swiftc`` then run, each with its module cache warm, unsandboxed."""
    from worker.runtimes.swift import find_frontend

    frontend = find_frontend()
    if frontend is None:
        return {}
    bindir = os.path.dirname(frontend)
    work = pathlib.Path(tempfile.mkdtemp(prefix="cellblock-bench-swift-"))
    try:
        (work / "main.swift").write_text("print(1)\n")
        driver = [os.path.join(bindir, "swift"), str(work / "main.swift")]
        compiled = ["sh", "-c", f"{bindir}/swiftc -o {work}/main {work}/main.swift && {work}/main"]
        time_command(driver, 2)  # the module cache warm for both
        return {
            "swift_driver_latency_ms": summary(time_command(driver, runs)),
            "swiftc_then_run_latency_ms": summary(time_command(compiled, runs)),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


# The rules before issue 17 (the commit this work started from), timed beside
# today's in the same run.
REDACTION_BASELINE = "c206a64"


def redaction_cost(baseline: str = REDACTION_BASELINE) -> dict[str, float]:
    """ms per MiB: the plain words of before, and the scorecard's negative corpus
    (ordinary program output: hashes, base64 images, reprs, logs), for today's
    rules and for those at ``baseline`` (from git, when it can be had)."""
    import importlib.util

    from supervisor.policy.redact import Redactor

    spec = importlib.util.spec_from_file_location("scorecard", ROOT / "scripts" / "secrets_scorecard.py")
    assert spec is not None and spec.loader is not None
    scorecard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scorecard)
    texts = {"plain": scorecard.plain_text(), "corpus": scorecard.load_negatives()}
    out = {}
    for name, redactor in (("new", Redactor()), ("baseline", scorecard.baseline_redactor(baseline))):
        if redactor is not None:
            for label, text in texts.items():
                redactor.redact(text)  # warm: the DFA is built as it reads
                out[f"{name}_{label}"] = scorecard.ms_per_mib(redactor, text)
    return out


# --- report -----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", help="a running service's client socket (default: start one)")
    parser.add_argument("--quick", action="store_true", help="fewer runs (CI smoke)")
    parser.add_argument("--json", default="bench-results/bench.json")
    parser.add_argument("--pool", type=int, default=48, help="warm workers of the embedded service")
    args = parser.parse_args()
    scale = 0.25 if args.quick else 1.0
    seconds = 2.0 if args.quick else 6.0
    report: dict[str, object] = {
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "mode": "root" if os.geteuid() == 0 else "unprivileged",
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        },
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    embedded = None
    socket = args.socket
    if socket is None:
        tmp = pathlib.Path(tempfile.mkdtemp(prefix="cellblock-bench-"))
        os.chmod(tmp, 0o711)
        config = tmp / "bench.toml"
        server_key, tcp_client_key, authorized = bench_tcp.keys(tmp)
        tcp_endpoint = f"tcp://127.0.0.1:{free_port()}"
        config.write_text(
            f'[service]\nstate_dir = "{tmp / "state"}"\nqueue_limit = 10000\n'
            f"pool = {{javascript = {JS_POOL}, bash = {BASH_POOL}, swift = {SWIFT_POOL}, "
            f'"python:data" = {DATA_POOL}}}\n'
            + bench_tcp.listen_config(tcp_endpoint, server_key, authorized)
            + "\n[policy]\nrate_per_minute = 10000000\nconcurrency = 1000\n"
        )
        embedded = Embedded(config=str(config), pool=args.pool)
        socket = embedded.start()
    try:
        with Client(socket) as client:
            status = client.status()
            runtimes = [rt.name for rt in status.runtimes if rt.offered]
            targets = {rt.name: rt.target for rt in status.runtimes}
            report["layers"] = {layer.name: layer.active for layer in status.layers}
            client.grant("bench", m.Capability(m.CapabilityKind.LIMITS, "output_bytes"))
            pool = targets.get("python") or args.pool
            print(
                f"cellblock bench: {os.cpu_count()} cpus, {report['machine']['mode']} mode, "  # type: ignore[index]
                f"warm pools {targets}",
                file=sys.stderr,
                flush=True,
            )
            service: dict[str, object] = {}
            for runtime in sorted(runtimes, key=lambda r: r != "python"):
                code = RUNTIME_CODE.get(runtime)
                if code is None:
                    continue
                target = targets.get(runtime) or 1
                runs = max(5, int(200 * scale * SLOW.get(runtime, 1.0)))
                lat = latency(client, code, runtime, runs, max(1, target // 2), target)
                service[f"latency_ms_{runtime}"] = summary(lat)
                print(f"  {runtime}: p50 {statistics.median(lat):.3f} ms", file=sys.stderr, flush=True)
            if "python:data" in runtimes:
                target = targets.get("python:data") or 1
                for label, code in DATA_CODE.items():
                    runs = max(10, int(200 * scale * 0.5))
                    lat = latency(client, code, "python:data", runs, max(1, target // 2), target)
                    service[f"latency_ms_data_{label}"] = summary(lat)
                    print(f"  data {label}: p50 {statistics.median(lat):.3f} ms", file=sys.stderr, flush=True)
            via = LibzmqClient(socket)
            try:
                lat = latency(client, PRINT1, "python", int(200 * scale), max(1, pool // 2), pool, via)
            finally:
                via.close()
            service["latency_ms_python_libzmq_client"] = summary(lat)
            print(f"  python via a libzmq DEALER: p50 {statistics.median(lat):.3f} ms", file=sys.stderr, flush=True)
            for clients in (1, 2, 8, 32):
                wait_warm(client, "python", pool)
                service[f"throughput_{clients}"] = throughput(socket, PRINT1, "python", clients, seconds)
                print(
                    f"  {clients} clients: {service[f'throughput_{clients}']['runs_per_s']:.0f} runs/s",  # type: ignore[index]
                    file=sys.stderr,
                    flush=True,
                )
            if embedded is not None:  # the same node over its gateway (TCP + CURVE), turn about with IPC
                service["tcp"] = bench_tcp.tcp_rows(
                    socket,
                    tcp_endpoint,
                    server_key.replace(".key_secret", ".key"),
                    tcp_client_key,
                    int(200 * scale),
                    seconds,
                    lambda: wait_warm(client, "python", pool),
                    next(
                        (
                            p.pid
                            for p in psutil.Process(embedded.proc.pid).children()  # type: ignore[union-attr]
                            if "supervisor.gateway" in " ".join(p.cmdline())
                        ),
                        None,
                    ),
                )
                tcp = service["tcp"]
                print(
                    f"  TCP+CURVE: p50 {tcp['latency_ms_tcp_curve_p50']:.3f} ms (IPC {tcp['latency_ms_ipc_p50']:.3f}), "  # type: ignore[index]
                    f"8 clients {tcp['throughput_8_tcp_curve']:.0f} runs/s (IPC {tcp['throughput_8_ipc']:.0f})",  # type: ignore[index]
                    file=sys.stderr,
                    flush=True,
                )
            main_pid = embedded.proc.pid if embedded and embedded.proc else None
            procs = psutil.Process(main_pid).children() if main_pid else []
            launcher = next((p for p in procs if "cellblock-launcher" in " ".join(p.cmdline())), None)
            broker = next((p for p in procs if "supervisor.broker" in " ".join(p.cmdline())), None)
            if launcher is not None and broker is not None:
                wait_warm(client, "python", pool)
                service["cpu_ms_per_run_8"] = cpu_per_run(socket, 8, seconds, launcher.pid, broker.pid)
            for runtime in runtimes:
                if runtime not in ("python", "swift") and runtime in RUNTIME_CODE:
                    wait_warm(client, runtime, targets.get(runtime) or 1)
                    service[f"throughput_8_{runtime}"] = throughput(socket, RUNTIME_CODE[runtime], runtime, 8, seconds)
            wait_warm(client, "python", pool)
            time.sleep(0.5)
            if launcher is not None:
                service["worker_memory"] = worker_memory(launcher.pid)
                if "swift" in runtimes:
                    wait_warm(client, "swift", targets.get("swift") or 1)
                    service["worker_memory_swift"] = worker_memory(launcher.pid, "swift")
                if "python:data" in runtimes:
                    wait_warm(client, "python:data", targets.get("python:data") or 1)
                    time.sleep(0.5)
                    service["worker_memory_data"] = worker_memory(launcher.pid, "python:data")
            if broker is not None:
                service["output_10mib"] = output_path(client, broker.pid)
            service["sessions"] = session_rows(client, launcher.pid if launcher else None, int(200 * scale), pool)
            print(
                f"  session cell: p50 {service['sessions']['cell_ms']['p50']:.3f} ms",  # type: ignore[index]
                file=sys.stderr,
                flush=True,
            )
        cost = redaction_cost()
        service["redaction_ms_per_mib"] = cost["new_plain"]
        service["redaction"] = cost
        report["service"] = service
    except BaseException:
        if embedded is not None:  # what the service said, or a failed bench cannot be understood
            print(f"--- the embedded service's log ---\n{embedded.log_text()}", file=sys.stderr)
        raise
    finally:
        if embedded is not None:
            embedded.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    # Baselines, measured now, on the same machine and in the same run.
    baselines: dict[str, object] = {}
    python_c = [PYTHON, "-c", PRINT1]
    baselines["python_c_latency_ms"] = summary(time_command(python_c, int(60 * scale) or 10))
    baselines["python_c_runs_per_s"] = command_throughput(python_c, seconds / 2, os.cpu_count() or 1)
    baselines["relay_chain_latency_ms"] = summary(relay_chain_latency(int(200 * scale), max(1, (args.pool or 48) // 2)))
    bwrap = bwrap_command()
    if bwrap:
        baselines["bwrap_python_latency_ms"] = summary(time_command(bwrap, int(40 * scale) or 10))
        baselines["bwrap_python_runs_per_s"] = command_throughput(bwrap, seconds / 2, os.cpu_count() or 1)
    baselines["bare_sandboxes_per_s"] = bare_sandbox_rate(seconds / 2, os.cpu_count() or 1)
    if "latency_ms_swift" in service:
        baselines.update(swift_baselines(max(5, int(20 * scale))))
    if "latency_ms_data_import" in service:
        baselines.update(data_baselines(max(5, int(20 * scale))))
    node = shutil.which("node")
    if node and "latency_ms_javascript" in service:
        baselines["node_e_latency_ms"] = summary(time_command([node, "-e", "console.log(1)"], int(40 * scale) or 10))
    report["baselines"] = baselines
    # Ratios.
    p50 = service["latency_ms_python"]["p50"]  # type: ignore[index]
    best = max(service[f"throughput_{c}"]["runs_per_s"] for c in (1, 2, 8, 32))  # type: ignore[index]
    ratios = {
        "service_latency_over_wakeup_floor": p50 / baselines["relay_chain_latency_ms"]["p50"],  # type: ignore[index]
        "python_c_latency_over_service": baselines["python_c_latency_ms"]["p50"] / p50,  # type: ignore[index]
        "service_throughput_over_python_c": best / baselines["python_c_runs_per_s"],  # type: ignore[operator]
        "service_throughput_over_bare_sandboxes": best / baselines["bare_sandboxes_per_s"],  # type: ignore[operator]
    }
    if bwrap:
        ratios["bwrap_latency_over_service"] = baselines["bwrap_python_latency_ms"]["p50"] / p50  # type: ignore[index]
        ratios["service_throughput_over_bwrap"] = best / baselines["bwrap_python_runs_per_s"]  # type: ignore[operator]
    for runtime in ("javascript", "bash"):
        key = f"latency_ms_{runtime}"
        if key in service:
            ratios[f"{runtime}_p50_over_python_p50"] = service[key]["p50"] / p50  # type: ignore[index]
    for label in DATA_CODE:
        base, ours = baselines.get(f"python_c_data_{label}_latency_ms"), service.get(f"latency_ms_data_{label}")
        if base and ours:
            ratios[f"python_c_over_service_data_{label}"] = base["p50"] / ours["p50"]  # type: ignore[index]
    if "sessions" in service:
        ratios["one_shot_p50_over_session_cell_p50"] = p50 / service["sessions"]["cell_ms"]["p50"]  # type: ignore[index]
    if "latency_ms_data_import" in service:
        ratios["data_import_p50_over_python_print_p50"] = service["latency_ms_data_import"]["p50"] / p50  # type: ignore[index]
    for key in ("swift_driver_latency_ms", "swiftc_then_run_latency_ms"):
        if key in baselines:
            ratios[f"{key[:-11]}_over_service_swift"] = (
                baselines[key]["p50"] / service["latency_ms_swift"]["p50"]  # type: ignore[index]
            )
    if "node_e_latency_ms" in baselines:
        node_p50 = baselines["node_e_latency_ms"]["p50"]  # type: ignore[index]
        ratios["node_e_latency_over_service_javascript"] = node_p50 / service["latency_ms_javascript"]["p50"]  # type: ignore[index]
    report["ratios"] = ratios
    print_table(report)
    out = pathlib.Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")
    return 0


def print_table(report: dict) -> None:  # type: ignore[type-arg]
    s, b, r = report["service"], report["baselines"], report["ratios"]
    rows = []
    for key, value in s.items():
        if key.startswith("latency_ms_"):
            rows.append(
                (
                    f"latency {key[11:]} p50 / p90 / p99",
                    f"{value['p50']:.3f} / {value['p90']:.3f} / {value['p99']:.3f} ms",
                )
            )
    for c in (1, 2, 8, 32):
        t = s[f"throughput_{c}"]
        rows.append(
            (
                f"throughput, {c} clients",
                f"{t['runs_per_s']:.0f} runs/s (p50 {t['p50_ms']:.2f} ms, {t['failures']} failed)",
            )
        )
    for key, value in s.items():
        if key.startswith("throughput_8_"):
            rows.append((f"throughput {key[13:]}, 8 clients", f"{value['runs_per_s']:.0f} runs/s"))
    if "tcp" in s:
        t = s["tcp"]
        rows.append(
            (
                "print(1) over TCP + CURVE (one node, turn about with IPC)",
                f"p50 {t['latency_ms_tcp_curve_p50']:.3f} ms vs IPC {t['latency_ms_ipc_p50']:.3f} ms "
                f"({t['tcp_over_ipc_latency']:.2f}x); 8 clients {t['throughput_8_tcp_curve']:.0f} vs "
                f"{t['throughput_8_ipc']:.0f} runs/s ({t['tcp_over_ipc_throughput']:.2f}x); "
                f"cpu per run: gateway {t['gateway_cpu_ms_per_run']:.2f} ms, "
                f"client {t['client_cpu_ms_per_run_tcp']:.2f} ms (IPC {t['client_cpu_ms_per_run_ipc']:.2f})",
            )
        )
    split = s.get("cpu_ms_per_run_8")
    if split:
        names = ("launcher", "zygotes", "workers", "broker", "clients", "other")
        parts = ", ".join(f"{k} {split[k]:.1f}" for k in names if k in split)
        rows.append(
            (
                "cpu per run, 8 clients",
                f"{split['total']:.1f} ms at {split['runs_per_s']:.0f} runs/s: {parts} "
                f"(300 runs/s allows {split['budget_at_300_per_s']:.1f})",
            )
        )
    if "worker_memory" in s:
        w = s["worker_memory"]
        if "unique_mib_median" in w:
            text = f"{w['unique_mib_median']:.2f} MiB only it maps (monitor + payload, {w['workers']} workers); "
        else:
            text = "(page frames hidden: not root) "
        text += f"per-process USS summed {w['uss_sum_mib_median']:.2f} MiB"
        if "cgroup_charge_mib_median" in w:
            text += f"; cgroup charge {w['cgroup_charge_mib_median']:.2f} MiB"
        rows.append(("memory per warm worker", text))
    if "worker_memory_data" in s:
        w = s["worker_memory_data"]
        text = f"{w['unique_mib_median']:.2f} MiB only it maps; " if "unique_mib_median" in w else ""
        rows.append(("memory per warm data worker", text + f"USS summed {w['uss_sum_mib_median']:.2f} MiB"))
    if "worker_memory_swift" in s:
        w = s["worker_memory_swift"]
        text = f"{w['unique_mib_median']:.1f} MiB only it maps; " if "unique_mib_median" in w else ""
        rows.append(("memory per warm Swift worker", text + f"USS summed {w['uss_sum_mib_median']:.1f} MiB"))
    if "sessions" in s:
        sess = s["sessions"]
        cell, opened = sess["cell_ms"], sess["open_ms"]
        rows.append(
            ("session: trivial cell p50 / p90 / p99", f"{cell['p50']:.3f} / {cell['p90']:.3f} / {cell['p99']:.3f} ms")
        )
        rows.append(("session: open p50 / p90", f"{opened['p50']:.3f} / {opened['p90']:.3f} ms"))
        idle = sess.get("idle_memory") or {}
        if idle:
            text = f"{idle['unique_mib']:.2f} MiB only it maps; " if "unique_mib" in idle else ""
            rows.append(("memory per idle session", text + f"USS summed {idle['uss_sum_mib']:.2f} MiB"))
    if "output_10mib" in s:
        o = s["output_10mib"]
        rows.append(
            ("10 MiB of stdout", f"{o['mib_per_s']:.0f} MiB/s, broker cpu {o['broker_cpu_ms']:.1f} ms ({o['status']})")
        )
    r17 = s.get("redaction", {})
    text = f"{s['redaction_ms_per_mib']:.2f} ms per MiB"
    if "new_corpus" in r17:
        text += f", {r17['new_corpus']:.2f} on ordinary output (scorecard corpus)"
    if "baseline_plain" in r17:
        text += f"; rules at {REDACTION_BASELINE}, same run: {r17['baseline_plain']:.2f} / {r17['baseline_corpus']:.2f}"
    rows.append(("redaction", text))
    rows.append(
        (
            "baseline: python3 -c per run",
            f"p50 {b['python_c_latency_ms']['p50']:.1f} ms, {b['python_c_runs_per_s']:.0f} runs/s",
        )
    )
    if "bwrap_python_latency_ms" in b:
        rows.append(
            (
                "baseline: bwrap + python per run",
                f"p50 {b['bwrap_python_latency_ms']['p50']:.1f} ms, {b['bwrap_python_runs_per_s']:.0f} runs/s",
            )
        )
    rows.append(("baseline: bare fork+unshare loop", f"{b['bare_sandboxes_per_s']:.0f} sandboxes/s"))
    chain = b["relay_chain_latency_ms"]
    rows.append(("baseline: 6 wakeups, 3 relaying processes", f"p50 {chain['p50']:.3f} ms, p90 {chain['p90']:.3f} ms"))
    if "node_e_latency_ms" in b:
        rows.append(("baseline: node -e per run", f"p50 {b['node_e_latency_ms']['p50']:.1f} ms"))
    for label in DATA_CODE:
        key = f"python_c_data_{label}_latency_ms"
        if key in b:
            rows.append((f"baseline: python3 -c, data {label}", f"p50 {b[key]['p50']:.1f} ms"))
    for key, what in (("swift_driver_latency_ms", "swift per run"), ("swiftc_then_run_latency_ms", "swiftc, then run")):
        if key in b:
            rows.append((f"baseline: {what}", f"p50 {b[key]['p50']:.1f} ms"))
    for key, value in r.items():
        rows.append((f"ratio {key}", f"{value:.1f}x"))
    width = max(len(k) for k, _ in rows)
    print(f"\ncellblock bench  {report['when']}  {report['machine']}")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


if __name__ == "__main__":
    sys.exit(main())
