"""Sandbox entry: the one place that states, and runs, the order of the steps.

:func:`spawn` makes one worker, in a zygote (``worker.zygote``); the host's
side of the steps is ``worker.host.prepare``, once, in the launcher. Every
step is one call into the module of its mechanism.
A step that fails makes the worker exit with that step's ``WorkerExit`` code
(fail closed); the launcher classifies the exit and counts it against the
runtime's restart budget. Nothing logs between clone and the ready message
except one line on the launcher's stderr naming the failed step.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import msgspec

from protocol import messages as m
from protocol.profile import Profile
from protocol.zmtp import Dealer
from worker import cgroups, forwarder, mounts, namespaces, payload, privileges
from worker import syscalls as sc
from worker.exits import WorkerExit
from worker.monitor import Monitor
from worker.runtimes.base import Runtime


class Context(msgspec.Struct, frozen=True, kw_only=True):
    """What the launcher decided once, shared by every worker it makes."""

    profile: Profile
    templates: dict[str, str]  # runtime -> its read-only template root
    broker_socket: str
    user_namespace: bool
    layout: cgroups.Layout | None
    # policy name -> its BPF programs, compiled once by the launcher; a
    # zygote turns them into loadable filters once (``adopt``), so a worker
    # only makes the system call
    filters: dict[str, list[bytes]] | None
    last_cap: int
    lifeline: int  # read end; EOF means the launcher is gone
    grant_roots: list[str] = []  # host paths under which granted paths must lie

    @property
    def memory_fallback(self) -> bool:
        return self.layout is None or self.layout.version("memory") is None


_loaded: dict[str, list[sc.CompiledFilter]] = {}


def adopt(ctx: Context) -> None:
    """In a zygote, once: the context's filters made loadable (ctypes objects), so
    every worker cloned from it only makes the system call."""
    _loaded.clear()
    for name, programs in (ctx.filters or {}).items():
        _loaded[name] = [sc.CompiledFilter(p) for p in programs]


def _filters(ctx: Context, name: str) -> list[sc.CompiledFilter] | None:
    return _loaded.get(name) if ctx.filters is not None else None


class StepFailed(Exception):
    def __init__(self, code: WorkerExit, cause: BaseException) -> None:
        super().__init__(f"{code.step}: {cause}")
        self.code = code


@contextmanager
def step(code: WorkerExit) -> Iterator[None]:
    try:
        yield
    except (StepFailed, payload.BecomePayload):
        raise
    except BaseException as exc:
        raise StepFailed(code, exc) from exc


def spawn(spec: m.Spawn, ctx: Context, runtime: Runtime, broker: int, parent: bool = False) -> int:
    """Make one worker; return its monitor's pid. In the child this never returns.

     The order, in the monitor (pid 1 of the new pid namespace):

     1. namespaces  clone() into new pid, mount, net, ipc and uts namespaces,
                    plus a user namespace when the service is not root; the
                    child unblocks the signals the launcher takes by signalfd
                    and closes inherited descriptors
     2. identity    (user namespace) map the sandbox uid/gid to the launcher's
     3. cgroups     join the slot's memory, pids and cpu cgroups, open the
                    memory meter, then unshare a cgroup namespace
     4. connect     ZMTP connection to the broker's worker socket, made while
                    the socket is still in view (it never is in the sandbox)
     5. mounts      the runtime's template root with tmpfs /tmp and /work and a new /proc;
                    a run's own worker also gets /mnt: its granted host paths,
                    each checked again where it leads, and its egress socket;
                    pivot_root; the old root detached
     6. network     loopback up (profile network "loopback", or the run has
                    egress), else left down; hostname set
     7. privileges  securebits locked, bounding and ambient sets dropped,
                    supplementary groups cleared, uid/gid changed, capability
                    sets emptied, no_new_privs; checked against /proc
    7b. forwarder   (runs with egress) fork the forwarder: 127.0.0.1:3128 to
                    /mnt/egress.sock, every monitor descriptor closed, the
                    runtime's seccomp filters; HTTP(S)_PROXY set for the payload
     8. payload     fork the payload, which closes every other descriptor,
                    starts a session, takes its rlimits, builds its environment,
                    warms its runtime, and loads its seccomp filters last
    8b. rehearsal   the monitor walks its job path once on scratch pipes, so
                    its copy-on-write faults happen now, not during the job
     9. seccomp     the monitor makes itself not dumpable and loads its own
                    filter, last
    10. ready       the monitor waits for the payload's "R" (warm and blocked on
                    the job pipe), tells the broker, then waits for one job
    """
    pid = namespaces.clone_worker(ctx.user_namespace, parent)
    if pid:
        return pid
    code = int(WorkerExit.INTERNAL)
    try:
        code = _enter(spec, ctx, runtime, broker)
    except payload.BecomePayload:
        raise  # the payload's fork: up to the zygote's top frame, which runs it
    except StepFailed as failure:
        code = int(failure.code)
        try:
            os.write(2, f"cellblock worker {spec.worker_id}: {failure}\n".encode())
        except OSError:
            pass
    except BaseException as exc:  # noqa: BLE001 - never unwind into the launcher's loop
        try:
            os.write(2, f"cellblock worker {spec.worker_id}: internal error: {exc!r}\n".encode())
        except OSError:
            pass
    os._exit(code)


LIFELINE, BROKER = 3, 4


def _reset_process(lifeline: int, broker: int) -> None:
    """Undo what the launcher's process state would leak into the worker.

    The launcher takes its signals through a signalfd and installs no Python
    handler, so its dispositions are already the defaults: unblocking is all
    (a Python-level reset costs ~70 copy-on-write faults here)."""
    gc.disable()  # the launcher's objects must never be finalised here
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    moved = os.dup(broker)  # out of the way of LIFELINE
    for fd, target in ((lifeline, LIFELINE), (moved, BROKER)):
        if fd != target:  # dup3() refuses equal descriptors
            os.dup2(fd, target, inheritable=False)
    sc.close_range(BROKER + 1)


def _enter(spec: m.Spawn, ctx: Context, runtime: Runtime, broker: int) -> int:
    profile = ctx.profile
    with step(WorkerExit.SETUP_NAMESPACES):
        _reset_process(ctx.lifeline, broker)
    if ctx.user_namespace:
        with step(WorkerExit.SETUP_NAMESPACES):
            namespaces.map_identity(spec.uid, spec.gid, 0, 0)
    with step(WorkerExit.SETUP_CGROUPS):
        if ctx.layout is not None:
            cgroups.join(ctx.layout, spec.cgroup_dirs)
            meter = cgroups.Meter(ctx.layout, spec.cgroup_dirs)
        else:
            meter = cgroups.Meter(cgroups.Layout(parents={}, detail=""), {})
        namespaces.enter_cgroup_namespace()
    with step(WorkerExit.SETUP_MOUNTS):
        fixed = profile.fixed
        grants = None
        if spec.binds or spec.egress:
            idmap = None if ctx.user_namespace else (spec.uid, spec.gid)
            grants = (spec.binds, ctx.grant_roots, spec.egress, idmap)
        mounts.enter_root(ctx.templates[spec.runtime], fixed.tmp_mb, fixed.work_mb, spec.uid, spec.gid, grants)
    with step(WorkerExit.SETUP_NETWORK):
        if profile.sandbox.network == "loopback" or spec.egress:
            namespaces.loopback_up()
        namespaces.set_hostname(profile.sandbox.hostname)
    with step(WorkerExit.SETUP_PRIVILEGES):
        privileges.protect_from_oom(ctx.user_namespace)
        status = privileges.open_status()
        mounts.hide_monitor()
        privileges.drop(spec.uid, spec.gid, ctx.user_namespace, ctx.last_cap)
        privileges.verify(spec.uid, spec.gid, status)
    program = _filters(ctx, spec.runtime)
    if spec.egress:
        with step(WorkerExit.SETUP_NETWORK):
            forwarder.start(mounts.EGRESS_SOCKET, program)
            os.environ.update(forwarder.ENVIRONMENT)
    with step(WorkerExit.INTERNAL):
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        job_r, job_w = os.pipe()
        report_r, report_w = os.pipe()
    with step(WorkerExit.INTERNAL):
        payload_pid = sc.fork()
        if payload_pid == 0:
            fds = payload.PayloadFds(stdin_r, stdout_w, stderr_w, job_r, report_w)
            raise payload.BecomePayload(fds, runtime, profile, program, ctx.memory_fallback)
        for fd in (stdin_r, stdout_w, stderr_w, job_r, report_w):
            os.close(fd)
    # The broker connection becomes a socket object only now, in the monitor:
    # the payload's heap (a copy from before) never holds one.
    with step(WorkerExit.SETUP_CONNECT):
        dealer = Dealer.over(socket.socket(fileno=BROKER), spec.worker_id.encode())
    monitor = Monitor(
        worker_id=spec.worker_id,
        runtime=spec.runtime,
        dealer=dealer,
        payload_pid=payload_pid,
        job_w=job_w,
        stdin_w=stdin_w,
        stdout_r=stdout_r,
        stderr_r=stderr_r,
        report_r=report_r,
        lifeline=LIFELINE,
        meter=meter,
        kill_grace_ms=profile.fixed.kill_grace_ms,
        output_kill_bytes=profile.fixed.output_kill_bytes,
        idle_memory_bytes=profile.limits.in_bytes().memory_bytes,
        adapter=runtime,
    )
    with step(WorkerExit.INTERNAL):
        monitor.rehearse()
    with step(WorkerExit.SETUP_SECCOMP):
        privileges.make_undumpable()
        for flt in _filters(ctx, "@monitor") or []:
            flt.load()
    return monitor.serve()
