"""History pages by a (started, run_id) cursor: every run once, newest first,
and a page deep in 10,000 rows is read through the index like the first."""

from __future__ import annotations

import pathlib
import sqlite3

import pytest

from protocol import messages as m
from supervisor.policy.store import Store

ROWS = 10_000


def entry(i: int, client: str = "app") -> m.HistoryEntry:
    return m.HistoryEntry(
        run_id=f"run{i:06d}",
        started=1_000_000.0 + i // 3,  # three runs share each start time: ties need the run id
        finished=1_000_000.5 + i // 3,
        client_id=client,
        conversation_id=f"conv{i % 7}",
        language="python",
        code_bytes=10,
        code_sha256="0" * 64,
        status=m.Status.OK if i % 5 else m.Status.ERROR,
        exit_code=0,
        wall_ms=1.0,
        cpu_ms=1.0,
        memory_peak_bytes=1,
        stdout_truncated=False,
        stderr_truncated=False,
        redactions={},
        findings=[],
        capabilities=[],
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    directory: pathlib.Path = tmp_path_factory.mktemp("store")
    store = Store(str(directory), lambda: 1_000_000.0 + ROWS, retention_days=3650, max_rows=100_000)
    store.db.execute("BEGIN")
    for i in range(ROWS):
        store.record(entry(i, "app" if i % 2 else "other"))
    store.db.execute("COMMIT")
    return store


def pages(store: Store, **filters: object) -> list[list[m.HistoryEntry]]:
    out: list[list[m.HistoryEntry]] = []
    cursor: dict[str, object] = {}
    while True:
        page = store.history(m.HistoryRequest(id="h", limit=100, **filters, **cursor))  # type: ignore[arg-type]
        if not page:
            return out
        out.append(page)
        cursor = {"before": page[-1].started, "before_run_id": page[-1].run_id}


def test_every_run_once_newest_first(store: Store) -> None:
    seen = [e.run_id for page in pages(store) for e in page]
    assert seen == [f"run{i:06d}" for i in reversed(range(ROWS))]


def test_filters_hold_across_pages(store: Store) -> None:
    seen = [e for page in pages(store, client_id="app", status=m.Status.ERROR) for e in page]
    expected = [i for i in reversed(range(ROWS)) if i % 2 and not i % 5]
    assert [e.run_id for e in seen] == [f"run{i:06d}" for i in expected]


def test_before_alone_is_an_until_filter(store: Store) -> None:
    page = store.history(m.HistoryRequest(id="h", limit=5, before=1_000_010.0))
    assert [e.run_id for e in page] == ["run000029", "run000028", "run000027", "run000026", "run000025"]


class Recording:
    """Stands in for the store's connection and keeps each statement with its bound values."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.calls: list[tuple[str, list[object]]] = []

    def execute(self, sql: str, args: list[object] = ()) -> sqlite3.Cursor:  # type: ignore[assignment]
        self.calls.append((sql, list(args)))
        return self.db.execute(sql, args)


@pytest.mark.parametrize("filters", [{}, {"client_id": "app"}, {"conversation_id": "conv3"}])
def test_a_deep_page_is_an_index_range_not_a_sort_of_every_row(store: Store, filters: dict[str, str]) -> None:
    # SQLite's plan for the query of the 90th page, with its values bound as the store binds them.
    db, recording = store.db, Recording(store.db)
    store.db = recording  # type: ignore[assignment]
    try:
        store.history(m.HistoryRequest(id="h", limit=100, before=1_000_100.0, before_run_id="run000300", **filters))
    finally:
        store.db = db
    sql, args = recording.calls[-1]
    plan = " | ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, args))
    assert "SEARCH runs USING INDEX" in plan, plan  # a range of the index, from the cursor on
    assert "SCAN runs" not in plan, plan  # not every newer row read and dropped
    assert "TEMP B-TREE FOR ORDER BY" not in plan, plan  # "RIGHT PART OF ORDER BY" (the tie-break) is fine
