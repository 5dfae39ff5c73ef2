"""The Status page: pools, queue, runtimes, layers and counters, refreshed live."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.browser.conftest import Console, expect, open_console
from tests.conftest import Service

pytestmark = pytest.mark.browser


def test_the_status_page_shows_the_service_and_follows_it(
    page: Any, console: Console, console_service: Service
) -> None:
    open_console(page, console)
    page.get_by_role("button", name="Status").click()
    runtimes = page.get_by_role("table", name="Runtimes and their warm pools")
    expect(runtimes).to_contain_text("python")
    python = runtimes.locator("tr", has_text="CPython").filter(has_not_text="python:")
    assert "✓ yes" in python.inner_text()
    layers = page.get_by_role("table", name="Sandbox layers")
    assert re.search(r"seccomp\s+✓ on", layers.inner_text()), layers.inner_text()
    assert "running" in page.locator("[data-field=queue]").inner_text()
    counters = page.get_by_role("table", name="Counters (non-zero)")

    def ok_runs() -> int:
        found = re.search(r"status_ok\s*(\d+)", counters.inner_text())
        return int(found.group(1)) if found else 0

    expected = ok_runs()
    for runs in (3, 2):  # two rounds: the page keeps following, not just one late refresh
        with console_service.client() as client:  # another client's runs, seen without a reload
            for _ in range(runs):
                client.execute("print(1)")
        expected += runs
        expect(counters).to_contain_text(re.compile(rf"status_ok\s*{expected}(?!\d)"), timeout=10_000)
    page.shots("status")
