"""The launcher's side of the worker: the host prepared once, slots, and the zygotes.

:func:`prepare` runs every sandbox step's host side once (namespaces,
runtimes, cgroups, template roots, seccomp programs). :class:`Zygote` starts
and talks to one zygote (``worker.zygote``): a process exec'd fresh for one
kind of worker, which every worker of that kind is cloned from, so no worker
is ever a copy of the launcher. The launcher imports this module and
``worker.runtimes``, nothing else of the worker.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys

import msgspec

from protocol import messages as m
from protocol.messages import HostBind
from protocol.profile import Environment, Profile
from protocol.wire import MAX_LAUNCHER_DATAGRAM, launcher_zygote_codec
from worker import cgroups, environments, mounts, namespaces, payload, privileges, runtimes, seccomp, zygote
from worker import syscalls as sc
from worker.runtimes.base import Runtime
from worker.sandbox import Context

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPAWN_REPLY_S = 10.0  # a zygote answers a spawn as soon as its clone() returns


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
    environments: dict[str, Environment] = {}


class Kind(msgspec.Struct, frozen=True, kw_only=True):
    """What one kind of worker is (the dispatch key names it): a runtime, in a package
    environment ("python:data") or none ("python")."""

    runtime: str
    environment: str = ""
    environment_path: str = ""  # the built environment, on the host
    preload: list[str] = []


class Prepared(msgspec.Struct, kw_only=True):
    context: Context
    kinds: dict[str, Kind]
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
    kinds, more = _kinds(host, offered, info)
    info += more
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
    templates, detail = _templates(host, kinds, offered)
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
        policies = [seccomp.runtime_policy(profile, n, offered[k.runtime]) for n, k in kinds.items()]
        filters, why = seccomp.compile_filters(policies)
        if filters is None and profile.layers.seccomp == "required":
            refused = refused or f"seccomp is required by the profile but {why}"
    layers.append(m.LayerStatus(name="seccomp", active=filters is not None, detail=SECCOMP_DETAIL if filters else why))
    if refused:
        info = [msgspec.structs.replace(i, available=False, reason=refused) for i in info]
        offered, kinds = {}, {}
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
    return Prepared(context=context, kinds=kinds, runtimes=offered, info=info, layers=layers, lifeline_w=lifeline_w)


def _templates(host: Host, kinds: dict[str, Kind], offered: dict[str, Runtime]) -> tuple[dict[str, str], str]:
    """Each kind's read-only root: its runtime's needs, its environment bound at its sandbox path."""
    profile = host.profile
    operator = [mounts.Bind(x.src, x.target, x.optional) for x in profile.mounts]
    etc = mounts.etc_files(profile.sandbox.hostname, range(*host.uids))
    needs = {}
    for name, kind in kinds.items():
        rt = offered[kind.runtime]
        binds = [mounts.Bind(src, dst) for src, dst in rt.host_paths()]
        if kind.environment:
            binds.append(mounts.Bind(kind.environment_path, environments.in_sandbox(kind.environment)))
        needs[name] = (rt.tools(), binds)
    return mounts.build_templates(host.rundir, needs, operator, etc)


def _kinds(
    host: Host, offered: dict[str, Runtime], info: list[m.RuntimeInfo]
) -> tuple[dict[str, Kind], list[m.RuntimeInfo]]:
    """Every kind of worker: each offered runtime, and each configured environment whose
    runtime is offered and which is built; what to tell the broker of every environment."""
    kinds = {name: Kind(runtime=name) for name in offered}
    more = []
    base = {i.name: i for i in info}
    for name, env in host.environments.items():
        kind = f"{env.runtime}:{name}"
        runtime = base.get(env.runtime)
        found = environments.find(host.cache_dir, name, env)
        reason = ""
        if env.runtime not in offered:
            reason = f"its runtime {env.runtime} is not offered" + (f": {runtime.reason}" if runtime else "")
        elif found is None:
            reason = f"not built: run `cellblock env build {name}` (packages: {', '.join(env.packages)})"
        path, manifest = found if found else ("", None)
        more.append(
            m.RuntimeInfo(
                name=kind,
                version=runtime.version if runtime else "",
                languages=[],  # its runtime's names resolve to it, by the request's environment
                available=not reason,
                reason=reason,
                self_test=runtime.self_test if runtime else "",
                self_test_expect=runtime.self_test_expect if runtime else "",
                environment=name,
                packages=environments.packages(manifest) if manifest else list(env.packages),
                modules=manifest.modules if manifest else [],
            )
        )
        if not reason:
            kinds[kind] = Kind(runtime=env.runtime, environment=name, environment_path=path, preload=env.preload)
    return kinds, more


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


class ZygoteSetup(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a zygote is told once, on a pipe, at its start."""

    context: Context
    name: str  # what its workers are (the dispatch key: "python", "python:data")
    kind: Kind
    cache_dir: str = ""  # where the runtime's shared files are (Swift's module cache)


class ZygoteLost(Exception):
    """The zygote is gone or did not answer: it must be started again."""


class Zygote:
    """The launcher's handle on one zygote: start it, ask it for workers, stop it."""

    def __init__(self, context: Context, name: str, kind: Kind, cache_dir: str) -> None:
        self.kind = name
        self.codec = launcher_zygote_codec()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        setup_r, setup_w = os.pipe()
        keep = [setup_r, theirs.fileno(), context.lifeline]
        self.proc = subprocess.Popen(
            [sys.executable, "-s", "-c", zygote.BOOT, str(setup_r), str(theirs.fileno())],
            pass_fds=keep,
            env={**payload.ENVIRONMENT, "PYTHONPATH": PROJECT_ROOT},
            cwd="/",
            stdin=subprocess.DEVNULL,
        )
        os.close(setup_r)
        theirs.close()
        setup = ZygoteSetup(context=context, name=name, kind=kind, cache_dir=cache_dir)
        with os.fdopen(setup_w, "wb") as out:
            out.write(msgspec.msgpack.encode(setup))
        self.sock = ours
        self.pid = self.proc.pid

    def spawn(self, spec: m.Spawn) -> m.SpawnReply:
        """Ask for one worker; the reply names its pid (its parent is the caller). ZygoteLost
        when the zygote is gone or silent."""
        try:
            self.sock.send(self.codec.encode_datagram(spec))
            ready, _, _ = select.select([self.sock], [], [], SPAWN_REPLY_S)
            data = self.sock.recv(MAX_LAUNCHER_DATAGRAM) if ready else b""
        except OSError as exc:
            raise ZygoteLost(f"the {self.kind} zygote's link failed ({exc})") from None
        if not data:
            raise ZygoteLost(f"the {self.kind} zygote did not answer")
        try:
            reply = self.codec.decode_datagram(data)
        except Exception as exc:  # noqa: BLE001 - an unreadable answer is a lost zygote
            raise ZygoteLost(f"the {self.kind} zygote answered something unreadable ({exc})") from None
        if reply.worker_id != spec.worker_id:
            raise ZygoteLost(f"the {self.kind} zygote answered for another worker")
        return reply

    def stop(self) -> None:
        self.sock.close()  # its EOF: the zygote exits
        try:
            self.proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass

    def wait_stopped(self, timeout: float) -> None:
        """Blocks until the zygote has exited (SIGKILL after ``timeout``)."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
