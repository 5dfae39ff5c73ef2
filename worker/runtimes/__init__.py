"""Runtime adapters, by name."""

from __future__ import annotations

from worker.runtimes.base import Runtime
from worker.runtimes.bash import BashRuntime
from worker.runtimes.node import NodeRuntime
from worker.runtimes.python import PythonRuntime
from worker.runtimes.swift import SwiftRuntime

RUNTIMES: dict[str, type[Runtime]] = {cls.name: cls for cls in (PythonRuntime, NodeRuntime, BashRuntime, SwiftRuntime)}


def by_language() -> dict[str, str]:
    """language alias -> runtime name."""
    return {alias: name for name, cls in RUNTIMES.items() for alias in cls.languages}
