"""History and export in a real browser: the runs a user made are listed with
their figures, a result downloads as the same Markdown and JSON `cellblock
export` writes, and the history pages through 10,000 seeded runs without
slowing down or piling rows into the page."""

from __future__ import annotations

import os
import pathlib
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import msgspec
import pytest

from protocol import messages as m
from tests.browser.conftest import ROOT, SEED_CLIENT, SEEDED, Console, block, expect, open_console, paste, wait_done

pytestmark = pytest.mark.browser


def history_rows(page: Any) -> list[list[str]]:
    """Each row's cells, then its run id."""
    return page.evaluate(
        "() => [...document.querySelectorAll('#history-table tbody tr')]"
        ".map(tr => [...[...tr.children].map(td => td.textContent), tr.dataset.run])"
    )


def loaded(page: Any, action: Any) -> None:
    """Do ``action`` and wait until the history page shows what that action asked for."""
    before = int(page.locator("#history-range").get_attribute("data-requested") or "0")
    action()
    page.wait_for_function(
        "([before]) => { const r = document.querySelector('#history-range').dataset;"
        " return Number(r.requested) > before && r.loaded === r.requested; }",
        arg=[before],
    )


def show_history(page: Any, **filters: str) -> None:
    page.get_by_role("button", name="History").click()
    form = page.locator("#history-form")
    for name in ("client", "conversation", "language", "since", "until"):
        form.locator(f"[name={name}]").fill(filters.get(name, ""))
    form.locator("[name=status]").select_option(filters.get("status", ""))
    loaded(page, form.get_by_role("button", name="Show").click)


def test_the_history_lists_the_runs_and_a_result_exports(page: Any, console: Console, tmp_path: pathlib.Path) -> None:
    conversation = f"conv-history-{uuid.uuid4().hex[:6]}"
    open_console(page, console)
    paste(
        page,
        f"---\nconversation_id: {conversation}\n---\n"
        "```python\nprint('kept for the export')\n```\n\n```python\nimport sys\nsys.exit(3)\n```\n",
    )
    for number in (1, 2):
        block(page, number).get_by_role("button", name="Run").click()
        wait_done(page, number)

    # Export: JSON and Markdown of the first result, as downloads.
    downloads = {}
    for fmt, label in (("json", "Export JSON"), ("markdown", "Export Markdown")):
        with page.expect_download() as info:
            block(page, 1).get_by_role("button", name=label).click()
        path = tmp_path / info.value.suggested_filename
        info.value.save_as(str(path))
        downloads[fmt] = path
    assert downloads["json"].name.endswith(".json") and downloads["markdown"].name.endswith(".md")
    result = msgspec.json.decode(downloads["json"].read_bytes(), type=m.ExecuteResult)
    assert result.status is m.Status.OK and result.stdout == "kept for the export\n"
    assert downloads["markdown"].read_text().startswith(f"## cellblock run {result.run_id}\n")
    # The same text as the CLI's export of that JSON.
    cli = subprocess.run(
        [sys.executable, "-m", "supervisor.tools.cli", "export", str(downloads["json"]), "--format", "markdown"],
        capture_output=True,
        check=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert downloads["markdown"].read_bytes() == cli.stdout
    cli_json = subprocess.run(
        [sys.executable, "-m", "supervisor.tools.cli", "export", str(downloads["json"]), "--format", "json"],
        capture_output=True,
        check=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert downloads["json"].read_bytes() == cli_json.stdout

    # History: this conversation's two runs, newest first, with their figures.
    show_history(page, conversation=conversation)
    rows = history_rows(page)
    assert [(r[1], r[2], r[3], r[4], r[5]) for r in rows] == [
        ("console", conversation, "python", "✗ error", "3"),
        ("console", conversation, "python", "✓ ok", "0"),
    ]
    assert all(r[6].endswith(" ms") and r[8].endswith(" MiB") for r in rows)
    page.shots("history-of-a-conversation")

    # A time filter: the last ten minutes hold the console's runs, none of the seeded (older) ones.
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 600))
    show_history(page, since=since)
    clients = {r[1] for r in history_rows(page)}
    assert "console" in clients and SEED_CLIENT not in clients


def page_through(page: Any) -> tuple[list[list[str]], list[int], int]:
    """Click Older to the end: every row seen, each page's load time, the most rows shown at once."""
    seen: list[list[str]] = []
    times: list[int] = []
    most = 0
    older = page.get_by_role("button", name="Older →")
    while True:
        rows = history_rows(page)
        assert len(rows) <= 100, "more than one page in the table"
        most = max(most, len(rows))
        seen += rows
        times.append(int(page.locator("#history-range").get_attribute("data-ms")))
        if older.is_disabled():
            return seen, times, most
        loaded(page, older.click)


def test_the_history_pages_through_ten_thousand_runs(page: Any, console: Console) -> None:
    open_console(page, console)
    show_history(page)
    page.shots("history-first-page")
    seen, times, most = page_through(page)
    page.shots("history-last-page")
    seeded = [r for r in seen if r[1] == SEED_CLIENT]
    assert len(seeded) == SEEDED
    assert len({r[-1] for r in seen}) == len(seen)  # no run twice
    assert most == 100  # one page in the table at a time, never the whole history
    assert "(the oldest)" in page.locator("#history-range").inner_text()
    # The 100th page costs what the first did (medians, so one slow moment on a shared host is not it).
    first, last = statistics.median(times[1:11]), statistics.median(times[-10:])
    assert last <= 3 * first + 30, (first, last, times)
    # Newer goes back one page.
    page.get_by_role("button", name="← Newer").click()
    expect(page.locator("#history-range")).to_contain_text(f"Runs {(len(times) - 2) * 100 + 1}\N{EN DASH}")

    # Filters hold across pages: the seeded client's failures only, all of them.
    show_history(page, client=SEED_CLIENT, status="error")
    seen, _, _ = page_through(page)
    assert len(seen) == len([i for i in range(SEEDED) if i % 7 == 0])
    assert {(r[1], r[4]) for r in seen} == {(SEED_CLIENT, "✗ error")}
