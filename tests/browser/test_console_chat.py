"""The chat view in a real browser: Run on a transcript's blocks, live output,
the result's figures, output shown as text only, keyboard and narrow windows."""

from __future__ import annotations

import pathlib
import re
import textwrap
from typing import Any

import pytest

from tests.browser.conftest import Console, block, open_console, paste, wait_done

pytestmark = pytest.mark.browser


def test_run_a_python_block_and_see_the_result_with_its_figures(page: Any, console: Console) -> None:
    open_console(page, console)
    page.get_by_label("Example").select_option(label="Python: arithmetic, a live stream, an error")
    page.get_by_role("button", name="Load example").click()
    first = block(page, 1)
    first.get_by_text("detected: python").wait_for()
    page.shots("transcript-loaded")
    assert first.get_by_label("Language of block 1").input_value() == "python"

    first.get_by_role("button", name="Run").click()
    wait_done(page, 1)
    assert first.get_by_label("stdout of block 1").inner_text().rstrip("\n") == "2 + 2 = 4"
    result = first.get_by_role("region", name="Result of block 1")
    text = result.inner_text()
    assert "✓ ok, exit code 0" in text
    assert re.search(r"Time\s+wall \d+\.\d ms, cpu \d+\.\d ms", text), text
    assert re.search(r"Peak memory\s+\d+\.\d MiB", text), text
    assert re.search(r"Output\s+complete", text), text
    assert re.search(r"Secrets redacted\s+none", text), text
    assert re.search(r"Runtime\s+CPython 3\.\d+", text), text
    assert first.get_by_role("status").inner_text() == "✓ done: ok"  # a word and a symbol, not a colour
    page.shots("python-result")
    assert page.errors == []


def test_streamed_lines_appear_before_the_run_ends(page: Any, console: Console) -> None:
    open_console(page, console)
    paste(
        page,
        textwrap.dedent("""\
            A block that takes its time:

            ```python
            import time
            for i in range(1, 4):
                print(f"line {i}", flush=True)
                time.sleep(0.8)
            ```
            """),
    )
    code = block(page, 1)
    code.get_by_role("button", name="Run").click()
    out = code.get_by_label("stdout of block 1")
    page.wait_for_function(
        "() => document.querySelector('section.block pre.out').textContent.includes('line 1')", timeout=10_000
    )
    # The first line is on the page while the run still goes on.
    assert page.evaluate("() => document.querySelector('section.block').dataset.state") == "running"
    assert "line 3" not in out.inner_text()
    assert code.get_by_role("status").inner_text() == "▶ running"
    page.shots("streaming")
    wait_done(page, 1)
    assert out.inner_text().rstrip("\n") == "line 1\nline 2\nline 3"
    page.shots("streamed-done")


HOSTILE = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\"><b>bold</b>"


def test_output_that_holds_html_is_shown_as_text(page: Any, console: Console) -> None:
    open_console(page, console)
    title = page.title()
    paste(
        page,
        "Prose with <script>document.title='pwned'</script> in it stays text too.\n\n"
        f"```python\nprint({HOSTILE!r})\nimport sys; print({HOSTILE!r}, file=sys.stderr)\n```\n",
    )
    code = block(page, 1)
    code.get_by_role("button", name="Run").click()
    wait_done(page, 1)
    assert code.get_by_label("stdout of block 1").inner_text().rstrip("\n") == HOSTILE
    assert code.get_by_label("stderr of block 1").inner_text().rstrip("\n") == HOSTILE
    assert page.locator("#transcript script, #transcript img, #transcript b").count() == 0
    assert "<script>document.title='pwned'</script>" in page.locator("#transcript p.prose").first.inner_text()
    assert page.title() == title
    page.shots("script-as-text")


def test_the_detected_language_can_be_changed(page: Any, console: Console) -> None:
    open_console(page, console)
    paste(page, '```text\necho "2 + 2 = $((2 + 2))"\n```\n')
    code = block(page, 1)
    code.get_by_label("Language of block 1").select_option("bash")
    code.get_by_role("button", name="Run").click()
    wait_done(page, 1)
    assert code.get_by_label("stdout of block 1").inner_text().rstrip("\n") == "2 + 2 = 4"
    assert "bash" in code.get_by_role("region", name="Result of block 1").inner_text()


def test_keyboard_only_and_a_narrow_window(page: Any, console: Console) -> None:
    page.set_viewport_size({"width": 400, "height": 800})
    open_console(page, console)
    paste(page, "```python\nprint('from the keyboard')\n```\n")
    run = block(page, 1).get_by_role("button", name="Run")
    page.locator("#conversation").focus()
    for _ in range(12):  # Tab along until the Run button has the focus
        if run.evaluate("b => b === document.activeElement"):
            break
        page.keyboard.press("Tab")
    assert run.evaluate("b => b === document.activeElement")
    page.keyboard.press("Enter")
    wait_done(page, 1)
    assert block(page, 1).get_by_label("stdout of block 1").inner_text().rstrip("\n") == "from the keyboard"
    # Nothing wider than the window: no sideways scrolling of the page.
    wide = page.evaluate(
        "() => [...document.querySelectorAll('body *')].filter(n => n.getBoundingClientRect().right > 401)"
        ".map(n => n.tagName + '#' + n.id + '.' + n.className).slice(0, 8)"
    )
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 400, wide
    page.shots("narrow")


def test_blocks_that_keep_state_show_their_plot_and_offer_their_file(page: Any, console: Console) -> None:
    _, status = console.call("/api/status")
    data = {rt["name"]: rt for rt in status["runtimes"]}.get("python:data")
    if data is None or not data["offered"]:
        pytest.skip("the data environment (pandas, matplotlib) is not built here; `cellblock env build data`")
    open_console(page, console)
    page.get_by_label("Example").select_option(label="Python: data that carries over, a file in, a plot back")
    page.get_by_role("button", name="Load example").click()
    block(page, 1).get_by_text("detected: python").wait_for()
    page.get_by_label("Keep state between blocks").check()
    for number in (1, 2, 3):
        block(page, number).get_by_role("button", name="Run").click()
        wait_done(page, number, timeout=60_000)
        assert block(page, number).get_by_role("status").inner_text() == "✓ done: ok", number
    first = block(page, 1).get_by_label("stdout of block 1").inner_text()
    assert "east     39" in first and "north    24" in first, first
    picture = block(page, 2).get_by_role("img", name="figure-1.png, made by the run")
    picture.wait_for()
    width = picture.evaluate("img => img.complete ? img.naturalWidth : 0")
    assert width > 100, "the PNG must decode in the browser"
    result = block(page, 2).get_by_role("region", name="Result of block 2").inner_text()
    assert "state kept for the next block" in result, result
    link = block(page, 3).get_by_role("link", name="Download units_by_region.csv")
    with page.expect_download() as wait:
        link.click()
    assert pathlib.Path(wait.value.path()).read_text() == "region,units\nsouth,16\nnorth,24\neast,39\n"
    page.shots("kept-state-plot")
    assert page.errors == []


def test_a_block_without_kept_state_starts_from_nothing(page: Any, console: Console) -> None:
    open_console(page, console)
    paste(page, "```python\nname = 'kept'\n```\n\n```python\nprint(name)\n```\n")
    for number in (1, 2):
        block(page, number).get_by_role("button", name="Run").click()
        wait_done(page, number)
    assert "NameError" in block(page, 2).get_by_label("stderr of block 2").inner_text()
