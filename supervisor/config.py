"""The service's one TOML config file, decoded and checked at start.

``cellblock serve --config FILE``. Every section and key is optional; an
unknown key or a bad value stops the start with the file, the key and the
reason. Defaults are what a new user gets from ``make run``.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pathlib
import re
from typing import Annotated, Literal

import msgspec

from protocol.profile import DATA_ENVIRONMENT, ConfigError, Environment, Profile, decode_toml, load_profile

Pos = Annotated[int, msgspec.Meta(ge=1)]
GATEWAY_STATUS_FILE = "gateway.status"  # in the runtime directory: the gateway's report, read by the broker


class Strict(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class ServiceSection(Strict, frozen=True):
    profile: str = "default"
    runtime_dir: str = ""  # default: /run/cellblock (root), $XDG_RUNTIME_DIR/cellblock otherwise
    state_dir: str = ""  # default: /var/lib/cellblock (root), $XDG_STATE_HOME/cellblock otherwise
    # What is built once per host and shared read-only by every sandbox of
    # every service (Swift's module cache), keyed by what it was built from.
    # Default: /var/cache/cellblock (root), $XDG_CACHE_HOME/cellblock otherwise.
    cache_dir: str = ""
    package_index: str = ""  # pip's index URL for `cellblock env build`; "" is pip's own default
    # Warm workers per kind ("python", "python:data"); 0 keeps none warm: each run or
    # session of that kind gets a worker made for it (tens of ms more), as a run with grants does.
    pool: dict[str, Annotated[int, msgspec.Meta(ge=0, le=256)]] = {}
    slots: Annotated[int, msgspec.Meta(ge=4, le=4096)] = 256
    queue_limit: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 256
    queue_wait_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    drain_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 90.0
    # Who else may connect to client.sock: "" only the service's own user (and
    # root); a group name or gid: its members; "*": every local user. Each
    # connection is keyed by its uid unless [policy] trusted_uids names it.
    client_group: str = ""
    broker_uid: Annotated[int, msgspec.Meta(ge=1)] = 599_999  # root mode only
    # TCP listeners beside client.sock, served by the gateway (supervisor/gateway.py)
    # with CURVE always: "tcp://0.0.0.0:7878". Plain TCP is refused at load.
    listen: list[str] = []
    server_key: str = ""  # this node's key pair: a .key_secret file of `cellblock keys new`
    authorized_keys: str = ""  # the client public keys allowed (protocol/curve.py), reloaded on change
    max_remote_peers: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 256  # live CURVE connections
    heartbeat_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 2.0  # a silent peer is cut after 3 of these
    worker_uid_base: Annotated[int, msgspec.Meta(ge=1000)] = 600_000  # root mode only; + slot


class CgroupSection(Strict, frozen=True):
    # A cgroup to make the service's cgroups in; empty: choose (root: its own; else a
    # subtree delegated to the user, worker/cgroup_parents.py). On cgroup v1 it names a
    # place in one hierarchy, and the same path in each other hierarchy is used too.
    parent: str = ""


class ClientPolicy(Strict, frozen=True):
    rate_per_minute: Pos | None = None
    concurrency: Pos | None = None


class PolicySection(Strict, frozen=True):
    rate_per_minute: Pos = 10
    concurrency: Pos = 3
    over_concurrency: Literal["wait", "refuse"] = "wait"
    clients: dict[str, ClientPolicy] = {}  # by key: a client id a trusted uid names, or "uid:<n>"
    grant_roots: list[str] = []  # host paths under which fs grants may be given
    # Uids whose requests may name their client (client_id) and who may grant and
    # revoke, besides root and the uid that started the service. Any other uid is
    # one client, "uid:<n>", whatever id it names (supervisor/policy/peers.py).
    trusted_uids: list[Annotated[int, msgspec.Meta(ge=0)]] = []


class EgressSection(Strict, frozen=True):
    """The egress proxy: the only way out of a sandbox, for runs holding a net grant."""

    enabled: bool = True
    deny: list[str] = []  # domain patterns refused even when granted (deny beats allow)
    # Test setups only: fixed answers instead of DNS, and private or loopback
    # targets ("127.0.0.1:8080") that may be reached although they are not public.
    resolve: dict[str, str] = {}
    allow_targets: list[str] = []
    connect_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=120)] = 10.0


class SessionsSection(Strict, frozen=True):
    """Sessions: sandboxes that keep their interpreter and /work between cells."""

    enabled: bool = True
    idle_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 600.0
    max_lifetime_s: Annotated[float, msgspec.Meta(gt=0, le=7 * 86400)] = 3600.0
    per_client: Annotated[int, msgspec.Meta(ge=0, le=1024)] = 4
    total: Annotated[int, msgspec.Meta(ge=0, le=4096)] = 16


class HistorySection(Strict, frozen=True):
    enabled: bool = True
    retention_days: Pos = 30
    max_rows: Pos = 100_000


class RedactionSection(Strict, frozen=True):
    enabled: bool = True


class Config(Strict, frozen=True):
    service: ServiceSection = ServiceSection()
    # name -> a package environment (``cellblock env build`` installs them)
    environments: dict[Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_-]{0,31}$")], Environment] = msgspec.field(
        default_factory=lambda: {"data": DATA_ENVIRONMENT}
    )
    cgroups: CgroupSection = CgroupSection()
    policy: PolicySection = PolicySection()
    egress: EgressSection = EgressSection()
    history: HistorySection = HistorySection()
    sessions: SessionsSection = SessionsSection()
    redaction: RedactionSection = RedactionSection()


def _paths(config: Config) -> dict[str, str]:
    """Every path (or file name) the config names, by its key."""
    service = config.service
    named = {f"service.{name}": getattr(service, name) for name in ("runtime_dir", "state_dir", "cache_dir", "profile")}
    named["cgroups.parent"] = config.cgroups.parent
    named |= {f"policy.grant_roots[{i}]": root for i, root in enumerate(config.policy.grant_roots)}
    return named


def _check(config: Config, path: str) -> None:
    for key, value in _paths(config).items():
        if "\0" in value:  # the OS refuses it later, with a ValueError rather than this file's name
            raise ConfigError(path, key, "must not contain a NUL byte")
    for name in ("runtime_dir", "state_dir", "cache_dir"):
        value = getattr(config.service, name)
        if value and not value.startswith("/"):
            raise ConfigError(path, f"service.{name}", "must be an absolute path")
    group = config.service.client_group
    if group not in ("", "*"):
        try:
            group_id(group)
        except KeyError:
            raise ConfigError(path, "service.client_group", f"no group {group!r} on this host") from None
    _check_listen(config.service, path)
    if config.cgroups.parent and not config.cgroups.parent.startswith("/sys/fs/cgroup"):
        raise ConfigError(path, "cgroups.parent", "must be a directory under /sys/fs/cgroup")
    for i, root in enumerate(config.policy.grant_roots):
        if not root.startswith("/"):
            raise ConfigError(path, f"policy.grant_roots[{i}]", "must be an absolute path")
        if os.path.realpath(root) == "/":
            raise ConfigError(path, f"policy.grant_roots[{i}]", "must not be / (name the folders that may be granted)")
    for name, address in config.egress.resolve.items():
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ConfigError(path, f"egress.resolve.{name}", "must be an IP address") from None
    for i, target in enumerate(config.egress.allow_targets):
        host, _, port = target.rpartition(":")
        try:
            ipaddress.ip_address(host.strip("[]"))
            valid = 0 < int(port) < 65536
        except ValueError:
            valid = False
        if not valid:
            raise ConfigError(path, f"egress.allow_targets[{i}]", "must be ADDRESS:PORT, e.g. 127.0.0.1:8080")


def group_id(group: str) -> int:
    """A group named by name or number (KeyError if there is no such group)."""
    return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid


LISTEN = re.compile(r"^tcp://(\*|[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5})$")


def _check_listen(service: ServiceSection, path: str) -> None:
    """TCP only with CURVE: a key pair for the node and a list of the clients allowed."""
    for i, endpoint in enumerate(service.listen):
        match = LISTEN.match(endpoint)
        if match is None or not 0 < int(match.group(2)) < 65536:
            raise ConfigError(path, f"service.listen[{i}]", "must be tcp://ADDRESS:PORT, e.g. tcp://0.0.0.0:7878")
    if not service.listen:
        return
    for key, what in (
        ("server_key", "this node's CURVE key pair (`cellblock keys new`, its .key_secret file)"),
        ("authorized_keys", "a file of the client public keys allowed"),
    ):
        value = getattr(service, key)
        if not value:
            raise ConfigError(
                path,
                f"service.{key}",
                f"a TCP listener needs CURVE and this names {what}; plain TCP is refused: anyone who "
                "reaches the port could run code, and the code and its output would cross the network in clear",
            )
        if not value.startswith("/"):
            raise ConfigError(path, f"service.{key}", "must be an absolute path")


def load_config(path: str | None) -> Config:
    if not path:
        return Config()
    try:
        data = pathlib.Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read ({exc.strerror})") from None
    config = decode_toml(data, path, Config)
    _check(config, path)
    return config


def profile_for(config: Config) -> Profile:
    return load_profile(config.service.profile)


def runtime_dir(config: Config) -> str:
    if config.service.runtime_dir:
        return config.service.runtime_dir
    if os.geteuid() == 0:
        return "/run/cellblock"
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/cellblock-{os.geteuid()}"
    return os.path.join(base, "cellblock")


def state_dir(config: Config) -> str:
    if config.service.state_dir:
        return config.service.state_dir
    if os.geteuid() == 0:
        return "/var/lib/cellblock"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "cellblock")


def cache_dir(config: Config) -> str:
    if config.service.cache_dir:
        return config.service.cache_dir
    if os.geteuid() == 0:
        return "/var/cache/cellblock"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cellblock")


def pool_targets(config: Config, profile: Profile) -> dict[str, int]:
    """Warm workers per kind: the config's (``pool = {python = 4, "python:data" = 4}``), else
    the profile's, else fitted to the cores; an environment's kind defaults to its runtime's."""
    targets = {
        name: config.service.pool.get(name, policy.pool if policy.pool is not None else default_pool())
        for name, policy in profile.runtimes.items()
    }
    for name, env in config.environments.items():
        kind = f"{env.runtime}:{name}"
        targets[kind] = config.service.pool.get(kind, targets.get(env.runtime, default_pool()))
    return targets


def default_pool() -> int:
    return max(2, 2 * (os.cpu_count() or 1))
