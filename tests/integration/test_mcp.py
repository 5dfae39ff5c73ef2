"""cellblock mcp, driven by the MCP SDK's own client over stdio and over HTTP,
against a running service and in embedded mode (it starts its own)."""

from __future__ import annotations

import asyncio
import base64
import os
import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from protocol import messages as m
from tests.conftest import write_config

pytestmark = pytest.mark.integration
ROOT = pathlib.Path(__file__).resolve().parents[2]


async def exercise(client: Client) -> dict[str, Any]:
    tools = await client.list_tools()
    out: dict[str, Any] = {"tools": {t.name: t for t in tools.tools}}
    out["ok"] = await client.call_tool("execute_code", {"code": "print(2+2)"})
    out["timeout"] = await client.call_tool("execute_code", {"code": "while True: pass", "timeout": 1})
    out["syntax"] = await client.call_tool("execute_code", {"code": "print(2+"})
    out["refused"] = await client.call_tool("execute_code", {"code": "print(1)", "timeout": 30})
    out["too_short"] = await client.call_tool("execute_code", {"code": "print(1)", "timeout": 0.001})
    out["runtimes"] = await client.call_tool("list_runtimes", {})
    return out


def named_id(result: Any) -> str:
    """The cellblock client id a permission_required refusal names."""
    message = str(result.structured_content["error"]["message"])
    return message.split("client '")[1].split("'")[0]


def check(out: dict[str, Any]) -> None:
    assert set(out["tools"]) == {"execute_code", "list_runtimes"}
    tool = out["tools"]["execute_code"]
    description = tool.description
    assert "no network" in description.lower() and "keep_state=true" in description and "10 s" in description
    # Every input field is described; language is an enum of what runs here; the output has a schema.
    properties = tool.input_schema["properties"]
    assert set(properties) == {
        "code",
        "language",
        "timeout",
        "stdin",
        "capabilities",
        "environment",
        "keep_state",
        "files",
    }
    assert all(p.get("description") for p in properties.values()), properties
    language = properties["language"]
    assert {"python", "javascript", "bash", "auto"} <= set(language["enum"]), language
    assert "net:api.example.com" in properties["capabilities"]["description"]
    assert {"", "none"} <= set(properties["environment"]["enum"]), properties["environment"]
    assert tool.output_schema is not None and "status" in tool.output_schema["properties"]
    ok = out["ok"]
    assert ok.is_error is False
    assert "status: ok" in ok.content[0].text and ok.content[0].text.rstrip().endswith("4")
    assert ok.structured_content["stdout"] == "4\n" and ok.structured_content["status"] == "ok"
    timeout = out["timeout"]
    assert timeout.is_error is True and "timeout" in timeout.content[0].text
    assert timeout.structured_content["status"] == "timeout"
    syntax = out["syntax"]
    assert syntax.is_error is True and "SyntaxError" in syntax.content[0].text
    refused = out["refused"]
    assert refused.is_error is True
    text = refused.content[0].text
    assert "permission_required" in text and "limits:timeout_ms" in text and "cellblock grant mcp-" in text
    assert refused.structured_content["required"] == [{"kind": "limits", "target": "timeout_ms"}]
    # Below the floor: the message says what was asked, not a clamped value.
    too_short = out["too_short"].structured_content["error"]
    assert too_short["message"] == "timeout 0.001 s is below the least a run needs (0.01 s)", too_short
    runtimes = {r["name"]: r for r in out["runtimes"].structured_content["runtimes"]}
    assert runtimes["python"]["available"] and "javascript" in runtimes


async def grant_then_run(client: Client, service: Any) -> tuple[list[str], Any]:
    """Three refused calls name one id; a grant to it lets the session's next call run."""
    asked = {"code": "print('granted')", "timeout": 30}
    ids = [named_id(await client.call_tool("execute_code", asked)) for _ in range(3)]
    with service.client() as admin:
        admin.grant(ids[0], m.Capability(m.CapabilityKind.LIMITS, "timeout_ms"), expires_in_s=600)
    return ids, await client.call_tool("execute_code", asked)


PLOT = """
import matplotlib.pyplot as plt
import csv
rows = list(csv.reader(open("points.csv")))
plt.plot([float(x) for x, _ in rows], [float(y) for _, y in rows])
plt.show()
open("/work/out/summary.txt", "w").write(f"{len(rows)} points")
"""


def test_an_mcp_client_gets_a_plot_as_an_image_and_keeps_state_when_asked(service: Any) -> None:
    view = {rt.name: rt for rt in service.status().runtimes}.get("python:data")
    if view is None or not view.offered:
        pytest.skip("the data environment (matplotlib) is not built here; `cellblock env build data`")
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "supervisor.tools.cli", "mcp", "--socket", service.socket],
        env={"PYTHONPATH": str(ROOT)},
        cwd=str(ROOT),
    )
    points = {"name": "points.csv", "content": "1,1\n2,4\n3,9\n"}

    async def go() -> list[Any]:
        async with Client(params) as client:
            return [
                await client.call_tool("execute_code", {"code": PLOT, "files": [points], "environment": "data"}),
                await client.call_tool("execute_code", {"code": "total = 40", "keep_state": True}),
                await client.call_tool("execute_code", {"code": "total + 2", "keep_state": True}),
                await client.call_tool("execute_code", {"code": "total + 2"}),
            ]

    plot, first, second, fresh = asyncio.run(go())
    assert plot.is_error is False, plot.content[0].text
    images = [c for c in plot.content if c.type == "image"]
    assert len(images) == 1 and images[0].mime_type == "image/png"
    assert base64.b64decode(images[0].data).startswith(b"\x89PNG\r\n\x1a\n")
    (summary,) = [c for c in plot.content if c.type == "resource"]
    assert summary.resource.text == "3 points" and summary.resource.uri.endswith("/out/summary.txt")
    assert {a["name"] for a in plot.structured_content["artifacts"]} == {"figure-1.png", "summary.txt"}
    assert first.is_error is False and second.structured_content["stdout"] == "42\n", second.content[0].text
    assert second.structured_content["session"] == first.structured_content["session"] != ""
    assert fresh.is_error is True and "NameError" in fresh.structured_content["stderr"]  # no state without it


def test_over_stdio(service: object) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "supervisor.tools.cli", "mcp", "--socket", service.socket],  # type: ignore[attr-defined]
        env={"PYTHONPATH": str(ROOT)},
        cwd=str(ROOT),
    )

    async def go() -> dict[str, Any]:
        async with Client(params) as client:
            return await exercise(client)

    check(asyncio.run(go()))


@pytest.fixture
def http_server(service: object) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor.tools.cli", "mcp", "--http", str(port), "--socket", service.socket],  # type: ignore[attr-defined]
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "the MCP HTTP server did not start"
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}/mcp"
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_over_streamable_http(http_server: str) -> None:
    async def go() -> dict[str, Any]:
        async with Client(http_server) as client:
            return await exercise(client)

    check(asyncio.run(go()))


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_a_grant_to_the_id_a_refusal_names_reaches_the_next_call_over_stdio(service: object, mode: str) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "supervisor.tools.cli", "mcp", "--socket", service.socket],  # type: ignore[attr-defined]
        env={"PYTHONPATH": str(ROOT)},
        cwd=str(ROOT),
    )

    async def go() -> tuple[list[str], Any]:
        async with Client(params, mode=mode) as client:
            return await grant_then_run(client, service)

    ids, after = asyncio.run(go())
    assert len(set(ids)) == 1 and ids[0].startswith("mcp-"), ids
    assert after.is_error is False and after.structured_content["stdout"] == "granted\n", after.content


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_a_grant_to_the_id_a_refusal_names_reaches_the_next_call_over_http(
    http_server: str, service: object, mode: str
) -> None:
    async def go() -> tuple[list[str], Any]:
        async with Client(http_server, mode=mode) as client:
            return await grant_then_run(client, service)

    ids, after = asyncio.run(go())
    assert len(set(ids)) == 1 and ids[0].startswith("mcp-"), ids
    assert after.is_error is False and after.structured_content["stdout"] == "granted\n", after.content


def test_each_http_session_is_its_own_client(http_server: str) -> None:
    """Sessions of the handshake era (mcp-session-id) are separate clients; within one, one id."""

    async def who() -> list[str]:
        async with Client(http_server, mode="legacy") as client:
            asked = {"code": "print(1)", "timeout": 30}
            return [named_id(await client.call_tool("execute_code", asked)) for _ in range(2)]

    first, second = asyncio.run(who()), asyncio.run(who())
    assert first[0] == first[1] and second[0] == second[1] and first[0] != second[0]


def _services_for(config: str) -> list[psutil.Process]:
    """The processes of every service started with this config file (main and its children)."""
    found: list[psutil.Process] = []
    for proc in psutil.process_iter():
        try:
            line = proc.cmdline()
            if "serve" in line and config in line:
                found += [proc, *proc.children(recursive=True)]
        except psutil.Error:
            continue  # gone meanwhile
    return found


def test_embedded_mode_starts_its_own_service_and_stops_it(tmp_path: pathlib.Path) -> None:
    # No --socket, and nothing answers where the config says the service would
    # be: cellblock mcp starts a service of its own for the session.
    os.chmod(tmp_path, 0o711)  # the broker (its own uid when root) reaches its state below
    config = write_config(tmp_path, service=f'runtime_dir = "{tmp_path / "no-service-here"}"\n')
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "supervisor.tools.cli", "mcp", "--config", config],
        env={"PYTHONPATH": str(ROOT)},
        cwd=str(ROOT),
    )

    async def go() -> tuple[dict[str, Any], list[psutil.Process]]:
        async with Client(params) as client:
            during = _services_for(config)
            return await exercise(client), during

    out, during = asyncio.run(go())
    check(out)
    assert during, "no service was started for the MCP session"
    assert not (tmp_path / "no-service-here").exists()  # its own runtime directory, not the config's
    # The session is over: the embedded service and every process of it end.
    _, alive = psutil.wait_procs(during, timeout=30)
    assert alive == [], alive
