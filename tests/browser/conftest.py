"""A real service, the real ``cellblock console`` in front of it, and a real
headless Chromium (Debian's ``chromium``, driven by Playwright).

Where Chromium or Playwright is missing every browser test skips and says
which (``make setup`` installs both, as root). One service and one console
serve the whole session; the service's history is seeded with 10,000 runs
before it starts, so the history page has something to page through. Each
test gets its own browser context (its own session storage) and saves a
screenshot of each step under browser-results/.
"""

from __future__ import annotations

import http.server
import json
import os
import pathlib
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from protocol import messages as m
from supervisor.policy.store import Store
from tests.conftest import RELAXED_POLICY, Service

ROOT = pathlib.Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "browser-results"
SEEDED = 10_000
SEED_CLIENT = "seeded-app"
DATA_HOST = "data.example.test"


def chromium() -> str | None:
    for name in (os.environ.get("CELLBLOCK_CHROMIUM", ""), "chromium", "chromium-browser"):
        if name and (path := shutil.which(name)):
            return path
    return None


# --- the upstream a granted run reaches, through the service's egress proxy ---------------


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from {self.headers.get('Host', '?')} {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def upstream() -> Iterator[int]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


# --- the service, seeded, and the console in front of it -----------------------------------


def seed(state: pathlib.Path, rows: int) -> None:
    now = time.time()
    store = Store(str(state), time.time, retention_days=30, max_rows=100_000)
    store.db.execute("BEGIN")
    for i in range(rows):
        started = now - 3600 - (rows - i) * 2.0
        store.record(
            m.HistoryEntry(
                run_id=f"seed{i:06d}",
                started=started,
                finished=started + 0.01,
                client_id=SEED_CLIENT,
                conversation_id=f"seeded-{i % 50}",
                language=("python", "javascript", "bash")[i % 3],
                code_bytes=20 + i % 400,
                code_sha256=f"{i:064x}",
                status=m.Status.OK if i % 7 else m.Status.ERROR,
                exit_code=0 if i % 7 else 1,
                wall_ms=1.0 + i % 13,
                cpu_ms=1.0 + i % 11,
                memory_peak_bytes=3_000_000 + i,
                stdout_truncated=False,
                stderr_truncated=False,
                redactions={},
                findings=[],
                capabilities=[],
            )
        )
    store.db.execute("COMMIT")
    store.close()


@pytest.fixture(scope="session")
def console_service(
    service_factory: Callable[..., Service], tmp_path_factory: pytest.TempPathFactory, upstream: int
) -> Service:
    state = tmp_path_factory.mktemp("console-state")
    seed(state, SEEDED)
    extra = f"""
        [egress]
        allow_targets = ["127.0.0.1:{upstream}"]
        [egress.resolve]
        "{DATA_HOST}" = "127.0.0.1"
    """
    return service_factory(pool=2, policy=RELAXED_POLICY, extra=extra, state_dir=state)


class Console:
    def __init__(self, url: str, proc: subprocess.Popen[bytes], log: pathlib.Path) -> None:
        self.url = url  # with the token, as printed
        self.base, _, self.token = url.partition("/#token=")
        self.proc = proc
        self.log = log

    def call(
        self,
        path: str,
        *,
        token: str | None = "",
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
        method: str | None = None,
    ) -> tuple[int, Any]:
        """One HTTP request, as a program (not a browser) would send it; (status, JSON body)."""
        request = urllib.request.Request(self.base + path, data=data, headers=headers or {}, method=method)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token or self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                body = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read(), exc.code
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode("utf-8", "replace")


@pytest.fixture(scope="session")
def console(console_service: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    log = tmp_path_factory.mktemp("console") / "console.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "supervisor.tools.cli",
                "console",
                "--socket",
                console_service.socket,
                "--port",
                "0",
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            start_new_session=True,
        )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    printed = b""
    found = None
    deadline = time.monotonic() + 30
    while found is None and time.monotonic() < deadline:
        if select.select([fd], [], [], 1.0)[0]:
            data = os.read(fd, 4096)
            if not data:
                break
            printed += data
            found = re.search(rb"open (http://\S+/#token=\S+)", printed)
    if found is None:
        stop(proc)
        pytest.fail(f"the console did not start: {printed.decode()}{log.read_text()}")
    url = found.group(1).decode()
    yield Console(url, proc, log)
    stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


# --- the browser -------------------------------------------------------------------------------


# Per module, not per session: while Playwright's sync API is open its event loop is
# the running loop of this thread, and every later test's asyncio.run() would fail.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium()
    if path is None:
        pytest.skip("no Chromium here: Debian's chromium package is missing (make setup installs it, as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed (the dev extra: make setup installs it)")
    with sync_playwright() as playwright:
        # As root Chromium refuses to start with its own sandbox; the page is our own.
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        chrome = playwright.chromium.launch(executable_path=path, headless=True, args=args)
        yield chrome
        chrome.close()


class Shots:
    """Screenshots of a test's steps: browser-results/<test>-<n>-<step>.png."""

    def __init__(self, page: Any, name: str) -> None:
        self.page = page
        self.name = re.sub(r"[^A-Za-z0-9_]+", "_", name)
        self.count = 0
        ARTIFACTS.mkdir(exist_ok=True)

    def __call__(self, step: str, full_page: bool = True) -> pathlib.Path:
        self.count += 1
        path = ARTIFACTS / f"{self.name}-{self.count:02d}-{step}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path


@pytest.fixture
def page(browser: Any, console: Console, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(20_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    tab.shots = Shots(tab, request.node.name)
    tab.errors = errors
    yield tab
    context.close()


def expect(target: Any) -> Any:
    """Playwright's waiting assertions (imported late: without Playwright the tests skip, not fail)."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def open_console(page: Any, console: Console) -> None:
    page.goto(console.url)
    page.get_by_role("button", name="Load example").wait_for()
    page.wait_for_function("() => document.querySelector('#example-select').options.length > 0")


def paste(page: Any, text: str) -> None:
    """Load a transcript the way a user pastes one."""
    page.get_by_text("Paste a transcript or Markdown").click()
    page.locator("#paste-text").fill(text)
    page.get_by_role("button", name="Show it").click()
    page.locator("section.block").first.wait_for()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.detected')].every(n => !n.textContent.startsWith('detecting'))"
    )


def block(page: Any, number: int) -> Any:
    return page.get_by_role("region", name=f"Code block {number}", exact=True)


def wait_done(page: Any, number: int, timeout: float = 30_000) -> None:
    page.wait_for_function(
        f"() => document.querySelectorAll('section.block')[{number - 1}].dataset.state === 'done'", timeout=timeout
    )
