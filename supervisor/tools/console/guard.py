"""What every request to the console passes before the app sees it.

The console listens on loopback, but any web page the user has open can send
requests to loopback, and a DNS name an attacker controls can be made to
resolve to 127.0.0.1 (DNS rebinding). So, in this order:

1. ``Host`` must name the console itself (127.0.0.1, localhost or ::1 with
   its port, or the address given with ``--host``): a rebound name is refused.
2. ``Origin``, when present, must be the console's own origin, and
   ``Sec-Fetch-Site`` must not say another site: no CSRF from another page.
3. Every ``/api/`` call carries ``Authorization: Bearer <token>``, the random
   token printed at start (compared in constant time).
4. Only GET, HEAD, POST and DELETE; a body is read whole up to
   ``max_body`` bytes and refused past it (``Content-Length`` checked first).

Every response gets headers that keep the page to itself: a Content Security
Policy with no inline script and no other origin, no framing, no referrer
(the token travels in the URL's fragment, never sent, but the rule is cheap).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

METHODS = {"GET", "HEAD", "POST", "DELETE"}
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        b"connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


def allowed_hosts(host: str, port: int) -> set[str]:
    """The Host header values that name this console (lower case)."""
    names = {"127.0.0.1", "localhost", "[::1]"}
    if host not in ("127.0.0.1", "localhost", "::1"):
        names.add(f"[{host}]" if ":" in host else host)
    return {f"{name}:{port}" for name in names} | ({*names} if port == 80 else set())


class Guard:
    def __init__(self, app: ASGIApp, token: str, hosts: set[str], max_body: int) -> None:
        self.app = app
        self.token = f"Bearer {token}".encode()
        self.hosts = {h.lower() for h in hosts}
        self.origins = {f"http://{h}" for h in self.hosts}
        self.max_body = max_body
        self._too_large = f"request bodies are capped at {max_body // 1024} KiB"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # the console serves no WebSocket
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers[name.lower()] = value  # a repeated header: the last one counts, none is merged
        refusal = self._check(scope, headers)
        if refusal is not None:
            await _refuse(scope, send, *refusal)
            return
        if scope["method"] in ("POST", "DELETE"):
            body = await self._read_body(receive, send, scope)
            if body is None:
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, _with_headers(send))

    def _check(self, scope: Scope, headers: dict[bytes, bytes]) -> tuple[int, str, str] | None:
        host = headers.get(b"host", b"").decode("latin-1").lower()
        if host not in self.hosts:
            return 403, "bad_host", "this console answers only to its own address (Host header refused)"
        origin = headers.get(b"origin")
        if origin is not None and origin.decode("latin-1").lower() not in self.origins:
            return 403, "bad_origin", "requests from another origin are refused"
        site = headers.get(b"sec-fetch-site")
        if site is not None and site not in (b"same-origin", b"none"):
            return 403, "bad_origin", "requests from another site are refused"
        if scope["method"] not in METHODS:
            return 405, "bad_method", f"method {scope['method']} is not used here"
        if scope["path"].startswith("/api/") and not hmac.compare_digest(
            headers.get(b"authorization", b""), self.token
        ):
            return 401, "no_token", "this call needs the console's access token (printed when it started)"
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return 413, "too_large", self._too_large
        return None

    async def _read_body(self, receive: Receive, send: Send, scope: Scope) -> bytes | None:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            if len(body) > self.max_body:
                await _refuse(
                    scope, send, 413, "too_large", f"request bodies are capped at {self.max_body // 1024} KiB"
                )
                return None
            if not message.get("more_body", False):
                return bytes(body)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body once, then the real channel (a streaming response waits on it for a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _with_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = dict(message)
            names = {name.lower() for name, _ in message.get("headers", [])}
            message["headers"] = [*message.get("headers", []), *(h for h in SECURITY_HEADERS if h[0] not in names)]
        await send(message)

    return wrapped


async def _refuse(scope: Scope, send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await _with_headers(send)({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
