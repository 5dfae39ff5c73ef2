"""Runtime adapters, by name."""

from __future__ import annotations

import subprocess

from protocol import messages as m
from protocol.profile import Profile
from worker.runtimes.base import Runtime
from worker.runtimes.bash import BashRuntime
from worker.runtimes.node import NodeRuntime
from worker.runtimes.python import PythonRuntime
from worker.runtimes.swift import SwiftRuntime

RUNTIMES: dict[str, type[Runtime]] = {cls.name: cls for cls in (PythonRuntime, NodeRuntime, BashRuntime, SwiftRuntime)}


def by_language() -> dict[str, str]:
    """language alias -> runtime name."""
    return {alias: name for name, cls in RUNTIMES.items() for alias in cls.languages}


def offer(profile: Profile, cache_dir: str) -> tuple[dict[str, Runtime], list[m.RuntimeInfo]]:
    """The runtimes the profile enables and this host can run, each probed and its
    shared files built (``prepare_host``); and what to tell the broker of every one."""
    runtimes: dict[str, Runtime] = {}
    info = []
    for name, policy in profile.runtimes.items():
        cls = RUNTIMES.get(name)
        if cls is None or not policy.enabled:
            continue
        runtime = cls.for_policy(policy)
        ok, detail = runtime.probe()
        if ok:
            try:
                runtime.prepare_host(cache_dir)
            except (OSError, subprocess.SubprocessError) as exc:
                ok, detail = False, f"could not prepare {name}: {exc}"
        info.append(
            m.RuntimeInfo(
                name=name,
                version=detail if ok else "",
                languages=list(cls.languages),
                available=ok,
                reason="" if ok else detail,
                self_test=cls.self_test[0],
                self_test_expect=cls.self_test[1],
                sessions=cls.sessions,
            )
        )
        if ok:
            runtimes[name] = runtime
    return runtimes, info
