"""What the sandbox tests say about a result when an assertion fails."""

from __future__ import annotations

import json

from protocol import messages as m


def show(result: m.ExecuteResult) -> str:
    return (
        f"status={result.status} exit={result.exit_code} signal={result.signal} reason={result.reason!r} "
        f"wall={result.wall_ms} peak={result.memory_peak_bytes}\n"
        f"stdout={result.stdout[-3000:]!r}\nstderr={result.stderr[-2000:]!r}"
    )


def last_json(result: m.ExecuteResult) -> dict[str, str]:
    """The last stdout line of a run that printed its findings as JSON."""
    assert result.status == m.Status.OK, show(result)
    data: dict[str, str] = json.loads(result.stdout.splitlines()[-1])
    return data
