"""Capabilities enforced by the real service: network egress through the
proxy, checked per host, and granted host paths bound into the sandbox.

HTTP servers run on this host's loopback. The test configuration maps the
names allowed.test, denied.test and secret.test to 127.0.0.1 in the proxy
and permits exactly those servers' ports as targets; the default
configuration (no map, no permitted targets) is tested too.
"""

from __future__ import annotations

import asyncio
import http.server
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from mcp.client.stdio import StdioServerParameters

from protocol import messages as m
from protocol.client import Client, ServiceError
from tests.conftest import RELAXED_POLICY, ROOT, Service

pytestmark = pytest.mark.integration
K = m.CapabilityKind


class Recorder(http.server.BaseHTTPRequestHandler):
    """Answers GET with its server's name; remembers every request line."""

    def do_GET(self) -> None:
        self.server.seen.append(self.requestline)  # type: ignore[attr-defined]
        body = f"hello from {self.server.name} {self.path}".encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_CONNECT(self) -> None:
        self.server.seen.append(self.requestline)  # type: ignore[attr-defined]
        self.send_error(405, "this is a web server, not a proxy")

    def log_message(self, *args: object) -> None:
        pass


class Server:
    def __init__(self, name: str) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
        self.httpd.name = name  # type: ignore[attr-defined]
        self.httpd.seen = []  # type: ignore[attr-defined]
        self.connections = 0
        original = self.httpd.get_request

        def counted() -> object:
            self.connections += 1
            return original()

        self.httpd.get_request = counted  # type: ignore[method-assign]
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def seen(self) -> list[str]:
        return self.httpd.seen  # type: ignore[attr-defined, no-any-return]


def _serving(name: str) -> Iterator[Server]:
    server = Server(name)
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture(scope="module")
def web() -> Iterator[Server]:
    yield from _serving("web")


@pytest.fixture(scope="module")
def secret() -> Iterator[Server]:
    yield from _serving("secret")


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    root = tmp_path_factory.mktemp("granted")
    root.chmod(0o755)
    data = root / "data"
    data.mkdir()
    (data / "readme.txt").write_text("the granted file\n")
    # Writable by anyone on the host: only the read-only bind may stop the sandbox.
    data.chmod(0o777)
    (data / "readme.txt").chmod(0o666)
    (data / "etc_link").symlink_to("/etc")
    (data / "up_link").symlink_to("../../../../../../../../../../etc")
    # Programs in the granted folder, executable on the host.
    (data / "script.sh").write_text("#!/bin/sh\necho RAN\n")
    shutil.copy("/usr/bin/true", data / "true")
    for name in ("script.sh", "true"):
        (data / name).chmod(0o755)
    # A mount below the granted folder (made before the service starts, so the
    # launcher's mount namespace has it): the host sees its file, a run must
    # see only the folder under it.
    below = data / "below"
    below.mkdir(mode=0o755)
    (below / "under_the_mount.txt").write_text("the folder itself\n")
    mount = ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "cellblock-test", str(below)]
    mounted = ROOT and subprocess.run(mount).returncode == 0
    if mounted:
        (below / "on_the_mount.txt").write_text("a file system mounted below the grant\n")
    (root / "out").mkdir(mode=0o755)
    (root / "out").chmod(0o755)
    yield root
    if mounted:
        subprocess.run(["umount", below], check=True)


@pytest.fixture(scope="module")
def svc(service_factory: Callable[..., Service], web: Server, secret: Server, roots: pathlib.Path) -> Service:
    extra = f"""
        [egress]
        deny = ["denied.test"]
        allow_targets = ["127.0.0.1:{web.port}", "127.0.0.1:{secret.port}"]
        [egress.resolve]
        "allowed.test" = "127.0.0.1"
        "denied.test" = "127.0.0.1"
        "secret.test" = "127.0.0.1"
    """
    service = service_factory(pool=1, policy=RELAXED_POLICY + f'grant_roots = ["{roots}"]\n', extra=extra)
    with service.client() as client:
        for cap in ("allowed.test", "denied.test"):
            client.grant("netter", m.Capability(K.NET, cap))
        client.grant("reader", m.Capability(K.FS_READ, str(roots / "data")))
        client.grant("writer", m.Capability(K.FS_WRITE, str(roots / "out")))
    return service


@pytest.fixture
def cl(svc: Service) -> Iterator[Client]:
    with svc.client() as client:
        yield client


def net(*hosts: str) -> list[m.Capability]:
    return [m.Capability(K.NET, h) for h in hosts]


def via_proxy(url: str) -> str:
    """Code that asks the proxy for ``url`` directly (urllib skips the proxy for
    loopback names, as NO_PROXY says), and prints the status and body."""
    return f"""
import http.client
conn = http.client.HTTPConnection("127.0.0.1", 3128, timeout=10)
conn.request("GET", "{url}")
reply = conn.getresponse()
print(reply.status, reply.read().decode().strip())
"""


# --- network ---------------------------------------------------------------------------


def test_granted_fetch_with_urllib_goes_through_the_proxy(cl: Client, web: Server) -> None:
    code = f"""
import urllib.request
print(urllib.request.urlopen("http://allowed.test:{web.port}/hello", timeout=10).read().decode())
"""
    result = cl.execute(code, capabilities=net("allowed.test"), client_id="netter")
    assert result.status is m.Status.OK, result
    assert result.stdout.strip() == "hello from web /hello"
    (decision,) = result.network
    assert decision.host == "allowed.test" and decision.port == web.port and decision.allowed
    assert decision.bytes_in > 0 and decision.bytes_out > 0
    assert "GET /hello HTTP/1.1" in web.seen
    # The decision is in the run's history record too (metadata, never the body).
    entry = next(e for e in cl.history(client_id="netter").entries if e.run_id == result.run_id)
    assert entry.network == result.network


@pytest.mark.parametrize("language", ["bash", "javascript"])
def test_other_runtimes_reach_a_granted_host_through_the_proxy(
    cl: Client, svc: Service, web: Server, language: str
) -> None:
    offered = {rt.name for rt in svc.status().runtimes if rt.offered}
    if language not in offered:
        pytest.skip(f"{language} is not offered on this host")
    url = f"http://allowed.test:{web.port}/{language}"
    if language == "bash":
        if not os.path.exists("/usr/bin/curl"):
            pytest.skip("curl is not installed on this host: make setup installs it (as root)")
        code = f"curl -sS --max-time 10 {url}"  # curl reads http_proxy itself
    else:  # node's http module, pointed at the proxy by hand (what a proxy agent does)
        code = f"""
const http = require("http");
const proxy = new URL(process.env.HTTP_PROXY);
http.get({{host: proxy.hostname, port: proxy.port, path: "{url}"}}, (res) => {{
  res.setEncoding("utf8");
  res.on("data", (d) => process.stdout.write(d));
}});
"""
    result = cl.execute(code, language, capabilities=net("allowed.test"), client_id="netter")
    assert result.stdout == f"hello from web /{language}", result
    assert [(d.host, d.allowed) for d in result.network] == [("allowed.test", True)]


def test_cant_reach_a_granted_name_the_operator_denies(cl: Client, web: Server) -> None:
    before = len(web.seen)
    code = f"""
import urllib.request, urllib.error
try:
    urllib.request.urlopen("http://denied.test:{web.port}/x", timeout=10)
except urllib.error.HTTPError as exc:
    print(exc.code, exc.read().decode().strip())
"""
    result = cl.execute(code, capabilities=net("denied.test"), client_id="netter")
    assert result.status is m.Status.OK, result
    assert result.stdout.startswith("403 ") and "denied by the operator" in result.stdout
    assert len(web.seen) == before
    assert [(d.host, d.allowed) for d in result.network] == [("denied.test", False)]


def test_cant_reach_an_ip_literal_through_the_proxy(cl: Client, web: Server) -> None:
    before = web.connections
    code = via_proxy(f"http://127.0.0.1:{web.port}/x")
    result = cl.execute(code, capabilities=net("allowed.test"), client_id="netter")
    assert result.stdout.startswith("403 ") and "IP address" in result.stdout, result
    assert web.connections == before
    assert [(d.host, d.allowed) for d in result.network] == [("127.0.0.1", False)]


def test_cant_reach_a_name_that_was_not_granted_to_the_run(cl: Client, secret: Server) -> None:
    # The client holds allowed.test and denied.test; the run asked for allowed.test only.
    code = f"""
import urllib.request, urllib.error
try:
    urllib.request.urlopen("http://secret.test:{secret.port}/", timeout=10)
except urllib.error.HTTPError as exc:
    print(exc.code, exc.read().decode().strip())
"""
    result = cl.execute(code, capabilities=net("allowed.test"), client_id="netter")
    assert result.stdout.startswith("403 ") and "not granted" in result.stdout, result
    assert secret.connections == 0


def test_cant_use_the_network_without_the_grant(cl: Client, web: Server) -> None:
    refused = cl.execute("print(1)", capabilities=net("allowed.test"), client_id="stranger")
    assert refused.status is m.Status.PERMISSION_REQUIRED
    assert refused.required == net("allowed.test")
    # Asking for nothing: no proxy, no resolver, no route.
    before = web.connections
    code = f"""
import urllib.request
urllib.request.urlopen("http://allowed.test:{web.port}/", timeout=5)
"""
    result = cl.execute(code, client_id="netter")
    assert result.status is m.Status.ERROR and "URLError" in result.stderr, result
    assert web.connections == before and result.network == []


def test_cant_send_a_second_connect_inside_a_tunnel(cl: Client, web: Server, secret: Server) -> None:
    code = f"""
import socket
s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
s.sendall(b"CONNECT allowed.test:{web.port} HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n")
print(s.recv(4096).split(b"\\r\\n")[0].decode())
s.sendall(b"CONNECT secret.test:{secret.port} HTTP/1.1\\r\\nHost: secret.test\\r\\n\\r\\n")
print(s.recv(4096).split(b"\\r\\n")[0].decode())
"""
    result = cl.execute(code, capabilities=net("allowed.test"), client_id="netter")
    first, second = result.stdout.splitlines()
    assert first == "HTTP/1.1 200 Connection established", result
    # The second CONNECT went down the tunnel to the granted host, which is
    # no proxy; the other host never heard of it.
    assert second.startswith("HTTP/1.0 405") and f"CONNECT secret.test:{secret.port} HTTP/1.1" in web.seen
    assert secret.connections == 0
    assert [(d.host, d.allowed) for d in result.network] == [("allowed.test", True)]


def test_default_config_refuses_a_granted_name_that_resolves_to_loopback(
    service_factory: Callable[..., Service], web: Server
) -> None:
    try:
        socket.getaddrinfo("localhost", web.port)
    except OSError:
        pytest.skip("this host cannot resolve localhost, so no name here resolves to loopback")
    service = service_factory(pool=1)
    before = web.connections
    with service.client() as client:
        client.grant("rebinder", m.Capability(K.NET, "localhost"))
        code = via_proxy(f"http://localhost:{web.port}/")
        result = client.execute(code, capabilities=net("localhost"), client_id="rebinder")
    assert result.stdout.startswith("403 ") and "non-public address" in result.stdout, result
    assert web.connections == before
    (decision,) = result.network
    assert decision.host == "localhost" and not decision.allowed and "rebinding" in decision.reason


# --- host paths -------------------------------------------------------------------------


def host_path(path: pathlib.Path) -> str:
    return "/mnt/host" + str(path)


def test_read_grant_reads_and_cannot_write(cl: Client, roots: pathlib.Path) -> None:
    data = roots / "data"
    code = f"""
import os
print(open("{host_path(data)}/readme.txt").read(), end="")
for path in ("{host_path(data)}/readme.txt", "{host_path(data)}/new.txt"):
    try:
        open(path, "a").write("x")
    except OSError as exc:
        print("write", os.path.basename(path), exc.strerror)
"""
    result = cl.execute(code, capabilities=[m.Capability(K.FS_READ, str(data))], client_id="reader")
    assert result.status is m.Status.OK, result
    assert result.stdout.splitlines() == [
        "the granted file",
        "write readme.txt Read-only file system",
        "write new.txt Read-only file system",
    ]
    assert (data / "readme.txt").read_text() == "the granted file\n" and not (data / "new.txt").exists()


def test_write_grant_writes_only_inside_the_path(cl: Client, roots: pathlib.Path) -> None:
    out = roots / "out"
    code = f"""
import os
open("{host_path(out)}/result.txt", "w").write("written in the sandbox\\n")
os.mkdir("{host_path(out)}/sub")
for path in ("{host_path(roots)}/beside.txt", "{host_path(roots)}/data/x", "/mnt/host/escape.txt"):
    try:
        open(path, "w").write("x")
        print("WROTE", path)
    except OSError as exc:
        print("refused", exc.strerror)
"""
    result = cl.execute(code, capabilities=[m.Capability(K.FS_WRITE, str(out))], client_id="writer")
    assert result.status is m.Status.OK, result
    assert "WROTE" not in result.stdout and result.stdout.count("refused") == 3
    assert (out / "result.txt").read_text() == "written in the sandbox\n"
    assert (out / "sub").is_dir()
    assert sorted(p.name for p in roots.iterdir()) == ["data", "out"]
    assert not (roots / "data" / "x").exists()
    # Root mode maps the folder's owner to the sandbox user (idmapped mount):
    # what the run wrote belongs to whoever owns the folder, as they would expect.
    assert (out / "result.txt").stat().st_uid == out.stat().st_uid


def test_cant_run_a_program_from_a_granted_folder(cl: Client, roots: pathlib.Path) -> None:
    # Granted paths are data: noexec, read-only or writable, whatever the files' modes say.
    data, out = roots / "data", roots / "out"
    code = f"""
import mmap, os, subprocess
def attempt(name, action):
    try:
        action()
        print(name + ":", "ALLOWED")
    except OSError as exc:
        print(name + ":", exc.strerror)
attempt("control", lambda: subprocess.run(["/usr/bin/true"], check=True))
attempt("script", lambda: subprocess.run(["{host_path(data)}/script.sh"], capture_output=True))
attempt("binary", lambda: subprocess.run(["{host_path(data)}/true"], capture_output=True))
attempt("mmap exec", lambda: mmap.mmap(os.open("{host_path(data)}/true", os.O_RDONLY), 0,
                                       prot=mmap.PROT_READ | mmap.PROT_EXEC))
with open("{host_path(out)}/made.sh", "w") as made:
    made.write("#!/bin/sh\\necho RAN\\n")
os.chmod("{host_path(out)}/made.sh", 0o755)
attempt("written", lambda: subprocess.run(["{host_path(out)}/made.sh"], capture_output=True))
"""
    caps = [m.Capability(K.FS_READ, str(data)), m.Capability(K.FS_WRITE, str(out))]
    for cap in caps:
        cl.grant("runner", cap)
    result = cl.execute(code, capabilities=caps, client_id="runner")
    assert result.status is m.Status.OK, result
    outcome = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert outcome == {
        "control": "ALLOWED",  # running programs is allowed, just not from a grant
        "script": "Permission denied",
        "binary": "Permission denied",
        "mmap exec": "Operation not permitted",
        "written": "Permission denied",
    }, result.stdout
    (out / "made.sh").unlink()


@pytest.mark.skipif(not ROOT, reason="mounting a file system on the host (below the granted folder) needs root")
def test_cant_see_a_mount_below_a_granted_folder(cl: Client, roots: pathlib.Path) -> None:
    below = roots / "data" / "below"
    assert sorted(os.listdir(below)) == ["on_the_mount.txt"]  # the host sees the mount
    code = f"import os; print(sorted(os.listdir('{host_path(below)}')))"
    result = cl.execute(code, capabilities=[m.Capability(K.FS_READ, str(roots / "data"))], client_id="reader")
    assert result.status is m.Status.OK, result
    assert result.stdout == "['under_the_mount.txt']\n", result  # the folder itself, not what is mounted on it


def test_cant_leave_a_setuid_program_in_a_granted_folder(cl: Client, roots: pathlib.Path) -> None:
    # nosuid holds inside the sandbox only: on the host, a setuid file of the
    # folder's owner would run as that owner for anyone. No mode may carry the bits.
    out = roots / "out"
    code = f"""
import os
base = "{host_path(out)}"
open(base + "/prog", "w").close()
attempts = {{
    "chmod": lambda: os.chmod(base + "/prog", 0o4755),
    "chmod_setgid": lambda: os.chmod(base + "/prog", 0o2755),
    "fchmod": lambda: os.fchmod(os.open(base + "/prog", os.O_RDONLY), 0o6755),
    "create": lambda: os.open(base + "/prog2", os.O_CREAT | os.O_WRONLY, 0o4755),
    "mkdir": lambda: os.mkdir(base + "/dir", 0o2755),
}}
for name, attempt in attempts.items():
    try:
        attempt()
        print(name, "ALLOWED")
    except OSError as exc:
        print(name, exc.strerror)
"""
    result = cl.execute(code, capabilities=[m.Capability(K.FS_WRITE, str(out))], client_id="writer")
    assert result.status is m.Status.OK, result
    assert "ALLOWED" not in result.stdout, result.stdout
    assert result.stdout.count("Operation not permitted") == 5
    for path in out.rglob("*"):
        assert not path.stat().st_mode & 0o6000, path
    assert not (out / "prog2").exists() and not (out / "dir").exists()


def test_cant_follow_a_planted_symlink_out_of_the_granted_folder(cl: Client, roots: pathlib.Path) -> None:
    data = roots / "data"
    code = f"""
for name in ("etc_link/passwd", "up_link/passwd", "etc_link/shadow", "up_link/hostname"):
    try:
        print(name, repr(open("{host_path(data)}/" + name).read()))
    except OSError as exc:
        print(name, exc.strerror)
"""
    result = cl.execute(code, capabilities=[m.Capability(K.FS_READ, str(data))], client_id="reader")
    assert result.status is m.Status.OK, result
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    host_passwd = pathlib.Path("/etc/passwd").read_text()
    # The links resolve in the sandbox's own root: its /etc, never the host's.
    assert repr(host_passwd) != lines["etc_link/passwd"] and "sandbox:x:" in lines["etc_link/passwd"]
    assert repr(host_passwd) != lines["up_link/passwd"] and "sandbox:x:" in lines["up_link/passwd"]
    assert lines["etc_link/shadow"] == "No such file or directory"
    assert lines["up_link/hostname"] == repr("cellblock\n")


def test_cant_be_granted_a_symlink_that_leads_out(cl: Client, roots: pathlib.Path) -> None:
    # The grant on data covers data/etc_link by name; the launcher sees it leads to /etc.
    link = roots / "data" / "etc_link"
    result = cl.execute("print(1)", capabilities=[m.Capability(K.FS_READ, str(link))], client_id="reader")
    assert result.status is m.Status.PERMISSION_REQUIRED, result
    assert result.error is not None and "leads to /etc, outside the grant" in result.error.message


def test_cant_grant_a_path_outside_the_operators_roots(cl: Client, roots: pathlib.Path) -> None:
    # (A symlink inside a root that leads out is refused when a run asks for it:
    # the broker may not be able to see through it, the launcher always can.)
    for target in ("/etc", str(roots / ".." / "elsewhere"), "/"):
        with pytest.raises(ServiceError) as exc:
            cl.grant("greedy", m.Capability(K.FS_READ, target))
        assert exc.value.error.code == "invalid_request"
        assert "outside the paths that may be granted" in exc.value.error.message
    assert cl.grants("greedy").grants == []


def test_path_and_network_grants_together(cl: Client, svc: Service, roots: pathlib.Path, web: Server) -> None:
    with svc.client() as admin:
        admin.grant("both", m.Capability(K.FS_READ, str(roots / "data")))
        admin.grant("both", m.Capability(K.NET, "allowed.test"))
    code = f"""
import urllib.request
print(open("{host_path(roots / "data")}/readme.txt").read().strip())
print(urllib.request.urlopen("http://allowed.test:{web.port}/both", timeout=10).read().decode())
"""
    caps = [m.Capability(K.FS_READ, str(roots / "data")), *net("allowed.test")]
    result = cl.execute(code, capabilities=caps, client_id="both")
    assert result.stdout.splitlines() == ["the granted file", "hello from web /both"], result
    # Nothing of the run's worker stays: the next run of another client sees no /mnt/host.
    plain = cl.execute("import os; print(os.listdir('/mnt'))", client_id="netter")
    assert plain.stdout.strip() == "[]", plain
    assert os.path.exists(roots / "data" / "readme.txt")


# --- the same through MCP ---------------------------------------------------------------


def _mcp_over(transport: str, socket_path: str) -> Iterator[Any]:
    """The MCP SDK's client (stdio parameters, or an HTTP URL) to ``cellblock mcp`` on ``socket_path``."""
    root = pathlib.Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "supervisor.tools.cli", "mcp", "--socket", socket_path]
    if transport == "stdio":
        yield StdioServerParameters(command=command[0], args=command[1:], env={"PYTHONPATH": str(root)}, cwd=str(root))
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    quiet = subprocess.DEVNULL
    proc = subprocess.Popen([*command, "--http", str(port)], cwd=root, stdout=quiet, stderr=quiet)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the MCP HTTP server did not start"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_an_mcp_client_asks_for_a_net_capability_and_reaches_the_host_once_granted(
    svc: Service, web: Server, transport: str
) -> None:
    from mcp import Client as McpClient

    code = f"""
import urllib.request
print(urllib.request.urlopen("http://allowed.test:{web.port}/via-mcp", timeout=10).read().decode())
"""
    asked = {"code": code, "capabilities": ["net:allowed.test"]}

    async def go(server: Any) -> tuple[Any, Any]:
        async with McpClient(server) as client:
            refused = await client.call_tool("execute_code", asked)
            who = str(refused.structured_content["error"]["message"]).split("client '")[1].split("'")[0]
            with svc.client() as admin:
                admin.grant(who, m.Capability(K.NET, "allowed.test"))
            return refused, await client.call_tool("execute_code", asked)

    for server in _mcp_over(transport, svc.socket):
        refused, granted = asyncio.run(go(server))
    assert refused.structured_content["status"] == "permission_required"
    assert refused.structured_content["required"] == [{"kind": "net", "target": "allowed.test"}]
    assert granted.is_error is False, granted.content[0].text
    assert granted.structured_content["stdout"].strip() == "hello from web /via-mcp"
    assert granted.structured_content["network"][0]["host"] == "allowed.test"
