"""Runtime adapters, by name."""

from __future__ import annotations

from worker.runtimes.base import Runtime
from worker.runtimes.python import PythonRuntime

RUNTIMES: dict[str, type[Runtime]] = {
    PythonRuntime.name: PythonRuntime,
}


def by_language() -> dict[str, str]:
    """language alias -> runtime name."""
    return {alias: name for name, cls in RUNTIMES.items() for alias in cls.languages}
