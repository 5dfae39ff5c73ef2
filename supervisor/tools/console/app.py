"""The console's web app (Starlette behind ``Guard``) and ``cellblock console``."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import pathlib
import secrets
import socket
import sys
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from protocol.client import AsyncClient, ServiceError
from supervisor.tools.console.api import BadRequest, Console, error, service_error
from supervisor.tools.console.guard import Guard, allowed_hosts

STATIC = pathlib.Path(__file__).with_name("static")
# The largest request is a run: code and stdin (1 MiB each in the default
# profile), escaped as JSON; an export posts back a result, whose streams the
# profile caps at 1 MiB each by default.
MAX_BODY = 8 * 1024 * 1024
log = logging.getLogger("cellblock.console")


def build(socket_path: str, token: str, hosts: set[str], client_id: str, max_body: int = MAX_BODY) -> Guard:
    client: AsyncClient | None = None

    def current() -> AsyncClient:
        assert client is not None, "used before start-up"
        return client

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        nonlocal client
        client = AsyncClient(socket_path)  # its zmq.asyncio socket belongs to this event loop
        try:
            yield
        finally:
            await console.close()  # the sessions its pages kept end with it
            client.close()

    console = Console(current, client_id)

    async def bad_request(_: Request, exc: Exception) -> Response:
        return error(400, "invalid_request", str(exc))

    async def refused(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServiceError)
        return service_error(exc.error)

    async def failed(_: Request, exc: Exception) -> Response:
        log.error("console request failed", exc_info=exc)  # the log has it; the page gets a sentence
        return error(500, "internal_error", "the console failed on this request; its log says why")

    routes: list[BaseRoute] = [Route(path, handler, methods=methods) for path, handler, methods in console.routes()]
    routes.append(Mount("/", StaticFiles(directory=STATIC, html=True)))
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={BadRequest: bad_request, ServiceError: refused, Exception: failed},
    )
    return Guard(app, token, hosts, max_body)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


def check_host(host: str) -> str:
    """The address to listen on: loopback unless the user names another on purpose."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"--host takes an IP address, not {host!r}") from None
    if address.is_unspecified:
        raise ValueError("--host must name one address; listening on every interface is not offered")
    return str(address)


def main(socket_path: str | None, default_socket: str, config: str | None, host: str, port: int, client_id: str) -> int:
    import uvicorn

    from protocol.client import service_answers
    from supervisor.tools.embedded import Embedded, EmbeddedError

    try:
        host = check_host(host)
        listener = _listen(host, port)
    except (ValueError, OSError) as exc:
        print(f"cellblock console: {exc}", file=sys.stderr)
        return 2
    embedded = None
    path = socket_path or default_socket
    if not service_answers(path):
        if socket_path is not None:
            print(f"cellblock console: no service answers on {socket_path}", file=sys.stderr)
            return 70
        embedded = Embedded(config=config)
        try:
            path = embedded.start()
        except EmbeddedError as exc:
            print(f"cellblock console: {exc}", file=sys.stderr)
            return 70
    try:
        port = listener.getsockname()[1]
        token = secrets.token_urlsafe(32)
        shown = f"[{host}]" if ":" in host else host
        app = build(path, token, allowed_hosts(host, port), client_id)
        where = "a running service" if embedded is None else "an embedded service (stops with the console)"
        print(f"cellblock console on http://{shown}:{port}/ using {where}, as client {client_id!r}")
        print(f"    open http://{shown}:{port}/#token={token}")
        print("    (every call needs that token; Ctrl-C stops the console)", flush=True)
        if not ipaddress.ip_address(host).is_loopback:
            print(f"cellblock console: WARNING: listening on {host}, reachable beyond this host", file=sys.stderr)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                log_level="warning",
                access_log=False,
                server_header=False,
                proxy_headers=False,
                timeout_graceful_shutdown=5,
                h11_max_incomplete_event_size=64 * 1024,
            )
        )
        server.run(sockets=[listener])
    finally:
        listener.close()
        if embedded is not None:
            embedded.stop()
    return 0
