"""Sandbox entry: the one place that states, and runs, the order of the steps.

:func:`prepare` is the host's side, once, in the launcher; :func:`spawn` makes
one worker. Every step is one call into the module of its mechanism.
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
from protocol.messages import HostBind
from protocol.profile import Profile
from protocol.zmtp import Dealer
from worker import cgroups, forwarder, monitor, mounts, namespaces, payload, privileges, runtimes, seccomp
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
    # policy name -> filters to load, built once from the compiled BPF so a
    # worker only makes the system call (no ctypes objects made per worker)
    filters: dict[str, list[sc.CompiledFilter]] | None
    last_cap: int
    lifeline: int  # read end; EOF means the launcher is gone
    grant_roots: list[str] = []  # host paths under which granted paths must lie

    @property
    def memory_fallback(self) -> bool:
        return self.layout is None or self.layout.version("memory") is None


class WorkerSpec(msgspec.Struct, frozen=True, kw_only=True):
    worker_id: str
    runtime: str
    uid: int  # inside the worker's user namespace, if any
    gid: int
    cgroup_dirs: dict[str, str]
    # A worker made for one run (see supervisor.launcher): its granted host
    # paths, and the host path of its egress proxy socket.
    binds: list[HostBind] = []
    egress: str = ""


class Host(msgspec.Struct, frozen=True, kw_only=True):
    """What ``prepare`` needs to know of the service and the host."""

    rundir: str
    profile: Profile
    unprivileged: bool
    instance: str  # names this service's cgroups
    cgroup_parent: str  # a delegated cgroup to use, or "" to choose
    cache_dir: str  # what runtimes build once per host
    uids: tuple[int, int]  # the sandbox uids, [first, last)
    grant_roots: list[str] = []


class Prepared(msgspec.Struct, kw_only=True):
    context: Context
    runtimes: dict[str, Runtime]
    info: list[m.RuntimeInfo]  # every runtime the profile names, available or why not
    layers: list[m.LayerStatus]
    lifeline_w: int  # the launcher holds it; its EOF tells every worker the launcher is gone


def prepare(host: Host) -> Prepared:
    """Once, in the launcher, before any worker: the host's side of every sandbox step.

    1. namespaces  the launcher's own mount namespace (and a user namespace
                   where it is root, when the service is not)
    2. runtimes    each the profile enables, probed; what its workers share
                   built once (Swift's module cache)
    3. cgroups     parents for the slots' cgroups, the launcher placed in a
                   low-weight group beside them; or the rlimit fallback
    4. filesystem  the read-only template roots, one per kind of runtime
    5. seccomp     every runtime's filters, compiled once in a helper process
                   (libseccomp never enters the launcher's heap)

    A layer the profile requires that cannot be had makes every runtime
    unavailable, with the reason (fail closed); an optional one falls back
    and the layer says so.
    """
    profile = host.profile
    namespaces.enter_launcher_namespaces(host.unprivileged)
    layers = [
        m.LayerStatus(
            name="namespaces",
            active=True,
            detail="pid, mount, net, ipc, uts, cgroup" + (", user" if host.unprivileged else ""),
        )
    ]
    offered, info = runtimes.offer(profile, host.cache_dir)
    refused = ""
    layout, detail, missing = cgroups.prepare_host(
        profile.layers.cgroups, host.instance, not host.unprivileged, host.cgroup_parent
    )
    layers.append(m.LayerStatus(name="cgroups", active=layout is not None, detail=detail))
    if missing and profile.layers.cgroups == "required":
        refused = f"cgroups are required by the profile but {missing}"
    memory = layout is not None and layout.version("memory") is not None
    rlimits = "cpu, nofile, fsize, nproc, core" + ("" if memory else ", as (memory)")
    layers.append(m.LayerStatus(name="rlimits", active=True, detail=rlimits))
    operator = [mounts.Bind(x.src, x.target, x.optional) for x in profile.mounts]
    etc = mounts.etc_files(profile.sandbox.hostname, range(*host.uids))
    needs = {
        name: (rt.tools(), [mounts.Bind(src, dst) for src, dst in rt.host_paths()]) for name, rt in offered.items()
    }
    templates, detail = mounts.build_templates(host.rundir, needs, operator, etc)
    layers += [
        m.LayerStatus(name="filesystem", active=True, detail=detail),
        m.LayerStatus(name="network", active=True, detail=NETWORK_DETAIL[profile.sandbox.network]),
        m.LayerStatus(
            name="privileges",
            active=True,
            detail=("user namespace, sandbox uid 1000 inside" if host.unprivileged else f"uid {host.uids[0]}+slot")
            + "; no capabilities, no_new_privs, securebits locked",
        ),
    ]
    filters, why = None, "off in the profile"
    if profile.layers.seccomp != "off":
        filters, why = seccomp.compile_filters([seccomp.runtime_policy(profile, n, rt) for n, rt in offered.items()])
        if filters is None and profile.layers.seccomp == "required":
            refused = refused or f"seccomp is required by the profile but {why}"
    layers.append(m.LayerStatus(name="seccomp", active=filters is not None, detail=SECCOMP_DETAIL if filters else why))
    if refused:
        info = [msgspec.structs.replace(i, available=False, reason=refused) for i in info]
        offered = {}
    lifeline_r, lifeline_w = os.pipe2(os.O_CLOEXEC)
    context = Context(
        profile=profile,
        templates=templates,
        broker_socket=os.path.join(host.rundir, "workers.sock"),
        user_namespace=host.unprivileged,
        layout=layout,
        filters=filters,
        last_cap=privileges.cap_last(),
        lifeline=lifeline_r,
        grant_roots=[os.path.realpath(root) for root in host.grant_roots],
    )
    return Prepared(context=context, runtimes=offered, info=info, layers=layers, lifeline_w=lifeline_w)


NETWORK_DETAIL = {
    "loopback": "own network namespace, loopback only",
    "none": "own network namespace, no interfaces up",
}
SECCOMP_DETAIL = "allowlist per runtime + deny filter; x32 and foreign arches killed"


# --- the launcher's other calls into the worker side ----------------------------------------


def prepare_slot(ctx: Context, slot: int) -> dict[str, str]:
    """A slot's cgroups, made once: later workers of the slot reuse them (each run sets
    its own memory limit, and resets it before its worker exits)."""
    if ctx.layout is None:
        return {}
    fixed = ctx.profile.fixed
    memory = ctx.profile.limits.in_bytes().memory_bytes
    return cgroups.prepare_slot(ctx.layout, slot, memory, fixed.pids, fixed.cpu_quota)


def release(ctx: Context, slots: int) -> None:
    """Remove every slot's cgroups and their parents (the launcher is stopping)."""
    if ctx.layout is not None:
        for slot in range(slots):
            cgroups.remove_slot(cgroups.slot_dirs(ctx.layout, slot))
        cgroups.remove_parents(ctx.layout)


def check_bind(bind: HostBind, roots: list[str]) -> None:
    """Where a granted path really leads, checked as the launcher sees it (PermissionError
    or OSError saying why not); the worker checks again when it binds it."""
    os.close(mounts.open_granted(bind, roots))


def rehearse(offered: dict[str, Runtime]) -> list[str]:
    """The monitor's job path walked in the launcher before it forks any worker, so
    every worker shares its specialised bytecode (see ``monitor.warm_job_path``).
    What could not be rehearsed, said; workers rehearse on their own too."""
    failed = []
    for runtime in offered.values():
        try:
            monitor.warm_job_path(runtime)
        except Exception as exc:  # noqa: BLE001 - an optimisation, never a reason to stop
            failed.append(f"could not warm the {runtime.name} job path: {exc!r}")
    return failed


def become_launcher() -> None:
    """Every worker is a clone of the launcher: its environment is already the sandbox's,
    and nothing of how it was started stays readable in /proc/<pid>/cmdline or environ."""
    sc.scrub_start_block(payload.ENVIRONMENT)


def signal_source(signals: tuple[int, ...]) -> int:
    """The launcher's signals, blocked and read from a signalfd: with no Python handler
    installed, a worker (a clone) inherits default dispositions and only unblocks them."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Python's own KeyboardInterrupt handler
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    return sc.signalfd(signals)


class StepFailed(Exception):
    def __init__(self, code: WorkerExit, cause: BaseException) -> None:
        super().__init__(f"{code.step}: {cause}")
        self.code = code


@contextmanager
def step(code: WorkerExit) -> Iterator[None]:
    try:
        yield
    except StepFailed:
        raise
    except BaseException as exc:
        raise StepFailed(code, exc) from exc


def spawn(spec: WorkerSpec, ctx: Context, runtime: Runtime, broker: int) -> int:
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
    pid = namespaces.clone_worker(ctx.user_namespace)
    if pid:
        return pid
    code = int(WorkerExit.INTERNAL)
    try:
        code = _enter(spec, ctx, runtime, broker)
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


def _enter(spec: WorkerSpec, ctx: Context, runtime: Runtime, broker: int) -> int:
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
    with step(WorkerExit.SETUP_CONNECT):
        dealer = Dealer.over(socket.socket(fileno=BROKER), spec.worker_id.encode())
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
        privileges.drop(spec.uid, spec.gid, ctx.user_namespace, ctx.last_cap)
        privileges.verify(spec.uid, spec.gid)
    program = ctx.filters.get(spec.runtime) if ctx.filters is not None else None
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
            payload.become_payload(fds, runtime, profile, program, ctx.memory_fallback)
        for fd in (stdin_r, stdout_w, stderr_w, job_r, report_w):
            os.close(fd)
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
        if ctx.filters is not None:
            for flt in ctx.filters["@monitor"]:
                flt.load()
    return monitor.serve()
