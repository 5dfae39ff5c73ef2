"""A zygote: the process every worker of one kind is cloned from.

The launcher execs it fresh (``python -m worker.zygote``); it is never a
copy of the launcher, and it imports nothing of the service: the worker's
own modules (the sandbox steps, the monitor, the payload) and one runtime.
Before serving it warms what every worker will run (the runtime's adapter,
the monitor's job path), freezes its heap for the collector, and then makes
one worker per ``Spawn`` on its socket: ``clone()`` with ``CLONE_PARENT``,
so the worker is the launcher's child (the launcher reaps it and owns its
slot) while the zygote only ever holds its own warm state.

It holds no socket object and no client data: the launcher link is a bare
descriptor, the broker connection is made for each worker and closed in the
zygote at once. Its environment is the sandbox's own (``payload.ENVIRONMENT``)
and its start block is scrubbed, so a worker inherits nothing of how it was
started. EOF on its link (the launcher is gone) ends it.
"""

from __future__ import annotations

import gc
import importlib
import os
import signal
import socket
import sys

import msgspec

from protocol import messages as m
from protocol.wire import MAX_LAUNCHER_DATAGRAM, zygote_codec
from worker import environments, monitor, payload, sandbox
from worker import syscalls as sc
from worker.runtimes import RUNTIMES
from worker.runtimes.base import Runtime


class Kind(msgspec.Struct, frozen=True, kw_only=True):
    runtime: str
    environment: str = ""
    environment_path: str = ""
    preload: list[str] = []


class Setup(msgspec.Struct, frozen=True, kw_only=True):
    """The launcher's ``worker.host.ZygoteSetup``, as this side reads it."""

    context: sandbox.Context
    name: str
    kind: Kind
    cache_dir: str = ""


def _log(text: str) -> None:
    os.write(2, f"cellblock zygote: {text}\n".encode())


def _connect(path: str) -> int:
    """A connection to the broker's worker socket, as a bare descriptor (no socket object
    outlives this call: a worker cloned from here must find none of the zygote's)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock.detach()


def serve(link: int, setup: Setup, runtime: Runtime) -> int:
    codec = zygote_codec()
    ctx = setup.context
    while True:
        try:
            data = os.read(link, MAX_LAUNCHER_DATAGRAM)
        except InterruptedError:
            continue
        if not data:
            return 0  # the launcher is gone
        try:
            spec = codec.decode_datagram(data)
        except Exception as exc:  # noqa: BLE001 - a bad request is dropped, not fatal
            _log(f"dropped a bad request: {exc}")
            continue
        try:
            broker = _connect(ctx.broker_socket)
        except OSError as exc:
            reply = m.SpawnReply(worker_id=spec.worker_id, error=f"broker not reachable ({exc})", retry=True)
        else:
            try:
                pid = sandbox.spawn(spec, ctx, runtime, broker, parent=True)
                reply = m.SpawnReply(worker_id=spec.worker_id, pid=pid)
            except OSError as exc:  # clone() refused: EAGAIN, ENOMEM
                reply = m.SpawnReply(worker_id=spec.worker_id, error=f"clone failed ({exc})", retry=True)
            finally:
                try:
                    os.close(broker)
                except OSError:
                    pass  # a payload unwinding through here closed it long before
        os.write(link, codec.encode_datagram(reply))


def _address_space() -> int:
    with open("/proc/self/status", "rb") as src:
        for line in src:
            if line.startswith(b"VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _preload(modules: list[str]) -> None:
    """The environment's preload list, imported now: every worker of it starts with them."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a module that fails here fails in the run, with its reason
            _log(f"could not preload {name}: {exc!r}")


def main() -> int:
    setup_fd, link = int(sys.argv[1]), int(sys.argv[2])
    with os.fdopen(setup_fd, "rb") as src:
        setup = msgspec.msgpack.decode(src.read(), type=Setup)
    # Every worker is a clone of this process: nothing of how it was started
    # (its command line, PYTHONPATH) stays readable in /proc/<pid>.
    sc.scrub_start_block(payload.ENVIRONMENT)
    # A worker is a clone of this process: it must hold no Python signal handler,
    # or pid 1 of its namespace (the monitor) would take a signal from inside.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    kind = setup.kind
    runtime = RUNTIMES[kind.runtime].for_policy(setup.context.profile.runtimes[kind.runtime])
    for module in (payload, sys.modules[type(runtime).__module__], sys.modules["worker.runtimes.base"]):
        payload.relabel(module)
    runtime.prepare_host(setup.cache_dir)  # already built by the launcher: this finds it
    if kind.environment:
        runtime.library_paths.append(environments.enter(kind.environment, kind.environment_path))
        _preload(kind.preload)
    # Under the rlimit fallback, RLIMIT_AS bounds a run's address space, and a
    # worker starts with this process's (an environment's is ~0.5 GiB, mostly
    # its libraries mapped): the run's memory limit comes on top of that.
    runtime.address_space_allowance += _address_space()
    sandbox.adopt(setup.context)
    try:
        monitor.warm_job_path(runtime)
    except Exception as exc:  # noqa: BLE001 - an optimisation: workers rehearse on their own too
        _log(f"could not warm the {runtime.name} job path: {exc!r}")
    payload.note_the_worker(type(runtime).__module__)
    gc.collect()
    gc.freeze()  # forks then share the heap instead of copying pages the collector touched
    return serve(link, setup, runtime)


# How the launcher starts a zygote (``python -c BOOT``): the payload's fork
# unwinds to this frame, the bottom of its stack, and runs from there (after
# the except clause, so no exception of the code's has it as its context).
BOOT = """\
import sys
from worker import zygote
become = None
try:
    sys.exit(zygote.main())
except zygote.BecomePayload as payload:
    become = payload
become.run()
"""
BecomePayload = payload.BecomePayload
