"""What ``cellblock status`` shows: the broker's view of the service, in one reply."""

from __future__ import annotations

import collections
import os
import time
from typing import Protocol

import msgspec

from protocol import messages as m
from protocol.profile import Profile, RunLimits
from protocol.zmtp import Router
from supervisor.catalogue import Catalogue
from supervisor.config import GATEWAY_STATUS_FILE, Config
from supervisor.dispatch import Dispatcher
from supervisor.intake import Intake
from supervisor.link import LauncherLink
from supervisor.policy import Policy, peers
from supervisor.sessions import Sessions


def _limit_values(limits: RunLimits) -> dict[str, int]:
    return msgspec.structs.asdict(limits.in_bytes())


class Parts(Protocol):
    """What of the broker a status reply reads."""

    @property
    def cfg(self) -> BrokerSettings: ...

    started: float
    profile: Profile
    counters: collections.Counter[str]
    dispatcher: Dispatcher
    catalogue: Catalogue
    pools: dict[str, int]
    launcher: LauncherLink
    clients: Router
    workers: Router
    intake: Intake
    sessions: Sessions
    policy: Policy


class BrokerSettings(Protocol):
    @property
    def rundir(self) -> str: ...

    @property
    def config(self) -> Config: ...


GATEWAY_STALE_S = 5.0  # it reports each second; older than this, it is not running


def gateway_status(rundir: str, listen: list[str], operator: bool) -> m.GatewayStatus | None:
    """The TCP listener's own report (``supervisor/gateway.py``); who is connected only
    for an operator (a trusted local uid), never for a remote client."""
    if not listen:
        return None
    try:
        with open(os.path.join(rundir, GATEWAY_STATUS_FILE), "rb") as src:
            report = msgspec.msgpack.decode(src.read(), type=m.GatewayStatus)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return m.GatewayStatus(listen=listen, running=False)
    if time.time() - report.updated > GATEWAY_STALE_S:
        report = msgspec.structs.replace(report, running=False)
    if not operator:
        report = msgspec.structs.replace(report, peers=[])
    return report


def _operator(policy: Policy, requester: str) -> bool:
    return policy.remote(requester) is None and peers.uid_of(requester) in policy.trusted


def status_reply(request_id: str, version: str, broker: Parts, requester: str = "") -> m.StatusReply:
    counters = dict(broker.counters)
    counters["bad_launcher_datagram"] = broker.launcher.bad_datagrams
    counters["client_disconnects"] = broker.clients.disconnects + broker.clients.dropped
    counters["client_protocol_errors"] = broker.clients.dropped
    counters["worker_protocol_errors"] = broker.workers.dropped
    counters["client_connections_refused"] = broker.clients.refused
    counters.update(broker.intake.counters)
    counters.update(broker.sessions.counters)
    profile, catalogue = broker.profile, broker.catalogue
    stats = broker.dispatcher.statistics()
    runtimes = catalogue.statuses(stats.warm, stats.busy, stats.starting, broker.pools)
    counters.update({f"dispatch_{k}": v for k, v in stats.counters.items()})
    broker_layer = m.LayerStatus(
        name="broker", active=os.geteuid() != 0, detail=f"uid {os.geteuid()}; validates, queues, redacts, records"
    )
    return m.StatusReply(
        id=request_id,
        version=version,
        uptime_s=round(time.monotonic() - broker.started, 3),
        mode=catalogue.mode or "starting",
        profile=profile.name,
        runtimes=runtimes,
        layers=[*catalogue.layers, broker_layer],
        queue=stats.queued,
        queue_limit=stats.queue_limit,
        in_flight=stats.in_flight,
        counters=counters,
        launcher_generation=catalogue.generation,
        limits=_limit_values(profile.limits),
        default_environments={n: p.environment for n, p in profile.runtimes.items() if p.environment},
        max_limits=_limit_values(profile.max),
        sessions=broker.sessions.everyone(),
        session_idle_timeout_s=broker.sessions.config.idle_timeout_s,
        session_max_lifetime_s=broker.sessions.config.max_lifetime_s,
        gateway=gateway_status(
            broker.cfg.rundir, broker.cfg.config.service.listen, _operator(broker.policy, requester)
        ),
    )
