"""Permission prompts in a real browser: a block that needs the network asks,
the choice is made as a grant through the protocol, the rerun succeeds, and
the grant holds where it was given and nowhere else."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from protocol import messages as m
from tests.browser.conftest import DATA_HOST, Console, block, expect, open_console, paste
from tests.conftest import Service

pytestmark = pytest.mark.browser


def transcript(port: int, conversation: str) -> str:
    return f"""---
conversation_id: {conversation}
---
## User

Fetch the greeting, please.

## Assistant

```python
import urllib.request
print(urllib.request.urlopen("http://{DATA_HOST}:{port}/hello", timeout=10).read().decode())
```
"""


def console_grants(service: Service) -> list[m.Grant]:
    with service.client() as client:
        return [g for g in client.grants("console").grants if g.capability.target == DATA_HOST]


@pytest.fixture
def no_grants(console_service: Service) -> Iterator[None]:
    def revoke_all() -> None:
        with console_service.client() as client:
            for grant in console_grants(console_service):
                client.revoke(grant.grant_id)

    revoke_all()
    yield
    revoke_all()


def run_and_get_dialog(page: Any) -> Any:
    block(page, 1).get_by_role("button", name="Run").click()
    dialog = page.get_by_role("dialog")
    dialog.wait_for()
    return dialog


def test_allow_for_this_conversation_reruns_and_holds_only_there(
    page: Any, console: Console, console_service: Service, upstream: int, no_grants: None
) -> None:
    open_console(page, console)
    paste(page, transcript(upstream, "conv-granted"))
    code = block(page, 1)
    assert f"network: {DATA_HOST}" in code.get_by_role("group").inner_text()  # what it looks like it needs
    page.shots("needs-network")

    dialog = run_and_get_dialog(page)
    assert f"This code wants to reach {DATA_HOST}." in dialog.inner_text()
    assert "conversation “conv-granted”" in dialog.inner_text()
    assert code.get_by_role("status").inner_text() == "⚠ done: permission required"
    page.shots("permission-dialog", full_page=False)

    dialog.get_by_role("button", name="Allow for this conversation").click()
    expect(code.get_by_role("status")).to_have_text("✓ done: ok")  # the rerun, not the first answer
    assert code.get_by_label("stdout of block 1").inner_text().startswith(f"hello from {DATA_HOST}:{upstream} /hello")
    assert re.search(rf"Network\s+✓ {re.escape(DATA_HOST)}:{upstream} allowed", code.inner_text())
    page.shots("rerun-succeeded")

    # The grant is the console's, for this conversation only.
    grants = console_grants(console_service)
    assert [(g.client_id, g.conversation_id) for g in grants] == [("console", "conv-granted")]
    page.get_by_role("button", name="Grants").click()
    row = page.locator(f"#grants-table tr[data-grant='{grants[0].grant_id}']")
    assert "conversation conv-granted" in row.inner_text()
    assert f"network: {DATA_HOST}" in row.inner_text()
    page.shots("grants-page")

    # Another conversation of the same client is asked again; denied, nothing runs.
    page.get_by_role("button", name="Chat").click()
    page.locator("#conversation").fill("conv-other")
    dialog = run_and_get_dialog(page)
    assert "conversation “conv-other”" in dialog.inner_text()
    page.keyboard.press("Escape")  # the dialog's cancel is a denial
    expect(code.get_by_role("status")).to_have_text("⊘ denied: not run")
    assert len(console_grants(console_service)) == 1

    # Revoked from the Grants page, the first conversation is asked again too.
    page.get_by_role("button", name="Grants").click()
    row.get_by_role("button", name=f"Revoke grant {grants[0].grant_id}").click()
    page.get_by_text(f"Grant #{grants[0].grant_id} revoked.").wait_for()
    assert console_grants(console_service) == []
    page.get_by_role("button", name="Chat").click()
    page.locator("#conversation").fill("conv-granted")
    run_and_get_dialog(page).get_by_role("button", name="Deny").click()
    assert page.errors == []


def test_allow_once_runs_once_and_leaves_no_grant(
    page: Any, console: Console, console_service: Service, upstream: int, no_grants: None
) -> None:
    open_console(page, console)
    paste(page, transcript(upstream, "conv-once"))
    run_and_get_dialog(page).get_by_role("button", name="Allow once").click()
    code = block(page, 1)
    expect(code.get_by_role("status")).to_have_text("✓ done: ok")
    assert console_grants(console_service) == []
    run_and_get_dialog(page).get_by_role("button", name="Deny").click()
    page.shots("asked-again")


def test_always_allow_for_this_client_covers_every_conversation(
    page: Any, console: Console, console_service: Service, upstream: int, no_grants: None
) -> None:
    open_console(page, console)
    paste(page, transcript(upstream, "conv-first"))
    run_and_get_dialog(page).get_by_role("button", name="Always allow for this client").click()
    expect(block(page, 1).get_by_role("status")).to_have_text("✓ done: ok")
    assert [g.conversation_id for g in console_grants(console_service)] == [""]
    page.locator("#conversation").fill("conv-second")
    block(page, 1).get_by_role("button", name="Run").click()
    expect(block(page, 1).get_by_role("status")).to_have_text("✓ done: ok")  # no question asked
    assert page.get_by_role("dialog").is_hidden()
