"""Sandbox profiles: ``profiles/*.toml`` decoded into frozen Structs.

A profile is data. Unknown keys and bad values stop the start with the file,
the key and the reason (``ConfigError``). The broker reads the limits to
validate requests; the launcher and the worker read the rest to build the
sandbox. Both get the same decoded object.
"""

from __future__ import annotations

import enum
import pathlib
from typing import Annotated, Literal, TypeVar

import msgspec

from protocol.messages import JobLimits

Pos = Annotated[int, msgspec.Meta(ge=1)]
MiB = 1024 * 1024

PROFILE_DIR = pathlib.Path(__file__).resolve().parent.parent / "profiles"


class ConfigError(Exception):
    """A configuration file that cannot be used: names the file, key and reason."""

    def __init__(self, path: str, key: str, reason: str) -> None:
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.key = key
        self.reason = reason


class Strict(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class RunLimits(Strict, frozen=True):
    """Limits a request may lower (and raise up to [max] with a grant)."""

    timeout_ms: Pos = 10_000
    cpu_ms: Pos = 10_000
    memory_mb: Pos = 256
    output_bytes: Pos = 1 * MiB

    def in_bytes(self) -> JobLimits:
        """The one shape limits travel in (memory in bytes): the only place MB become bytes."""
        return JobLimits(
            timeout_ms=self.timeout_ms,
            cpu_ms=self.cpu_ms,
            memory_bytes=self.memory_mb * MiB,
            output_bytes=self.output_bytes,
        )


class FixedLimits(Strict, frozen=True):
    """Limits that are the same for every run of the profile."""

    pids: Pos = 64
    open_files: Annotated[int, msgspec.Meta(ge=16)] = 256
    file_size_mb: Pos = 64
    work_mb: Pos = 64
    tmp_mb: Pos = 64
    output_kill_bytes: Pos = 32 * MiB
    cpu_quota: Annotated[float, msgspec.Meta(gt=0, le=64)] = 1.0
    code_bytes: Pos = 1 * MiB
    stdin_bytes: Pos = 1 * MiB
    kill_grace_ms: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 200
    # Files a request hands in (written into /work before the code runs) and
    # files a run gives back (what it left in /work/out): each file, and all.
    file_bytes: Pos = 8 * MiB
    files_bytes: Annotated[int, msgspec.Meta(ge=1, le=12 * MiB)] = 12 * MiB  # within a client frame
    file_count: Pos = 64
    artifact_bytes: Pos = 8 * MiB
    artifacts_bytes: Annotated[int, msgspec.Meta(ge=1, le=48 * MiB)] = 16 * MiB  # within a worker frame
    artifact_count: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 64
    session_cpu_s: Pos = 3600  # the cpu time a session's interpreter may use in all, over every cell


class Layer(enum.StrEnum):
    REQUIRED = "required"
    OPTIONAL = "optional"
    OFF = "off"


class Layers(Strict, frozen=True):
    namespaces: Literal["required"] = "required"
    mounts: Literal["required"] = "required"
    privileges: Literal["required"] = "required"
    cgroups: Layer = Layer.OPTIONAL
    seccomp: Layer = Layer.REQUIRED


class Mount(Strict, frozen=True):
    src: str
    dst: str = ""
    optional: bool = False

    @property
    def target(self) -> str:
        return self.dst or self.src


class Sandbox(Strict, frozen=True):
    network: Literal["none", "loopback"] = "loopback"
    hostname: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "cellblock"


class Environment(Strict, frozen=True):
    """A package environment: pip requirements installed once (``cellblock env build``)
    into a read-only directory that every sandbox of it sees, and modules its
    workers have imported before they are Ready."""

    runtime: Literal["python"] = "python"
    packages: list[Annotated[str, msgspec.Meta(min_length=1, max_length=200)]] = []  # pip requirement strings
    preload: list[Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")]] = []


# What a new user gets: the data stack LLM-written code reaches for first.
DATA_ENVIRONMENT = Environment(
    packages=["numpy", "pandas", "matplotlib", "scipy", "requests", "pillow", "sympy"],
    preload=["numpy", "pandas", "matplotlib", "matplotlib.pyplot", "scipy", "scipy.stats", "PIL.Image", "requests"],
)


class RuntimePolicy(Strict, frozen=True):
    enabled: bool = True
    exec: bool = True  # may the code start other programs (execve)?
    socket_families: list[Literal["unix", "inet", "inet6"]] = msgspec.field(
        default_factory=lambda: ["unix", "inet", "inet6"]
    )
    pool: Annotated[int, msgspec.Meta(ge=0, le=256)] | None = None  # warm workers; None = fit cores
    # Where the runtime's toolchain is, for runtimes that look for one (swift:
    # its prefix, or its swift binary); empty: PATH, then the usual places.
    toolchain: str = ""
    # The package environment a request gets when it names none ("" or "none": none).
    environment: str = ""


class Profile(Strict, frozen=True):
    name: str = ""
    description: str = ""
    limits: RunLimits = RunLimits()
    max: RunLimits = RunLimits(timeout_ms=60_000, cpu_ms=60_000, memory_mb=1024, output_bytes=8 * MiB)
    fixed: FixedLimits = FixedLimits()
    sandbox: Sandbox = Sandbox()
    layers: Layers = Layers()
    mounts: list[Mount] = []
    runtimes: dict[str, RuntimePolicy] = msgspec.field(default_factory=lambda: {"python": RuntimePolicy()})

    def check(self, path: str) -> None:
        for key in RunLimits.__struct_fields__:
            if getattr(self.limits, key) > getattr(self.max, key):
                raise ConfigError(path, f"limits.{key}", f"default is above max.{key}")
        for i, mount in enumerate(self.mounts):
            if not mount.src.startswith("/") or not mount.target.startswith("/"):
                raise ConfigError(path, f"mounts[{i}]", "src and dst must be absolute paths")
            if ".." in pathlib.PurePosixPath(mount.target).parts:
                raise ConfigError(path, f"mounts[{i}].dst", "must not contain '..'")


T = TypeVar("T")


def decode_toml(data: bytes, path: str, into: type[T]) -> T:
    """TOML into ``into`` (Structs that refuse unknown keys), or ConfigError naming the
    file, the key (a misspelt section as clearly as a misspelt key) and the reason."""
    try:
        return msgspec.toml.decode(data, type=into)
    except msgspec.ValidationError as exc:
        key, reason = _key_from(str(exc))
        if reason == "unknown key" and "." not in key:
            known = ", ".join(getattr(into, "__struct_fields__", ()))
            reason = f"unknown section or key (known: {known})"
        raise ConfigError(path, key, reason) from None
    except msgspec.DecodeError as exc:
        raise ConfigError(path, "", f"not valid TOML ({exc})") from None
    except RecursionError:  # tomllib recurses per nesting level: "a = [[[[..." past the interpreter's limit
        raise ConfigError(path, "", "not valid TOML (arrays or tables nested too deeply)") from None


def _key_from(message: str) -> tuple[str, str]:
    marker = " - at `$"
    at = message.rfind(marker)
    if at < 0:
        if message.startswith("Object contains unknown field"):
            return message.split("`")[1], "unknown key"
        return "", message
    key = message[at + len(marker) :].rstrip("`").lstrip(".")
    reason = message[:at]
    if reason.startswith("Object contains unknown field"):
        field = reason.split("`")[1]
        return (f"{key}.{field}" if key else field), "unknown key"
    return key, reason


def decode_profile(data: bytes, path: str, name: str) -> Profile:
    profile = decode_toml(data, path, Profile)
    profile.check(path)
    return msgspec.structs.replace(profile, name=profile.name or name)


def load_profile(name_or_path: str) -> Profile:
    """Load ``profiles/<name>.toml`` or a path to a TOML file."""
    path = pathlib.Path(name_or_path)
    if path.suffix != ".toml":
        path = PROFILE_DIR / f"{name_or_path}.toml"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read ({exc.strerror})") from None
    except ValueError:  # a NUL byte in the name
        raise ConfigError(repr(str(path)), "", "cannot read (a file name cannot hold a NUL byte)") from None
    return decode_profile(data, str(path), path.stem)
