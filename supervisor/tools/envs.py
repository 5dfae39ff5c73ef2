"""``cellblock env build`` and ``cellblock env list``: the config's package environments.

A build installs the environment's requirements with pip (from the
configured index, ``[service] package_index``, or pip's default) into a new
directory, compiles their bytecode, builds matplotlib's font cache, writes
the manifest, and only then moves the directory into place: a failed or
interrupted build leaves nothing the service would use. A package pip cannot
install stops the build of that environment with pip's own reason.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

import msgspec

from protocol.profile import Environment
from supervisor.config import Config, cache_dir, load_config
from worker import environments as envs

PIP_TIMEOUT_S = 1800


class BuildFailed(Exception):
    pass


def _run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, env=env, check=False)


def _top_level(site: str) -> list[str]:
    """The importable names pip put in ``site``: packages, modules and extension modules."""
    names = set()
    for entry in os.listdir(site):
        if entry.endswith((".dist-info", ".egg-info", ".data")) or entry.startswith(("_", ".")) or entry == "bin":
            continue
        stem = entry.split(".")[0]
        if os.path.isdir(os.path.join(site, entry)) or entry.endswith((".py", ".so")):
            names.add(stem)
    return sorted(names)


def _installed(site: str) -> dict[str, str]:
    found = {}
    for entry in os.listdir(site):
        if entry.endswith(".dist-info"):
            name, _, version = entry[: -len(".dist-info")].rpartition("-")
            found[name.replace("_", "-")] = version
    return found


def _size(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def build_one(name: str, env: Environment, cache: str, index: str, say: Callable[[str], None]) -> str:
    """Build ``env`` (or find it built); return its directory. BuildFailed with pip's reason."""
    target = envs.directory(cache, name, env)
    if envs.manifest(target) is not None:
        say(f"{name}: up to date ({target})")
        return target
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    scratch = f"{target}.building-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    site = os.path.join(scratch, envs.SITE)
    os.makedirs(site)
    try:
        started = time.monotonic()
        say(f"{name}: installing {', '.join(env.packages)} ...")
        argv = [sys.executable, "-m", "pip", "install", "--target", site, "--no-warn-script-location"]
        argv += ["--disable-pip-version-check", "--progress-bar", "off", "--no-input"]
        argv += [f"--index-url={index}"] if index else []
        done = _run([*argv, *env.packages])
        if done.returncode != 0:
            reason = "\n".join(line for line in done.stderr.splitlines() if line.startswith("ERROR"))
            raise BuildFailed(f"{name}: pip could not install it:\n{reason or done.stderr[-2000:]}")
        # Bytecode now: at run time the directory is read-only and nothing is written.
        compiled = _run([sys.executable, "-m", "compileall", "-q", "-j", "0", site])
        if compiled.returncode != 0:
            say(f"{name}: some files did not compile (they run from source): {compiled.stdout[-500:]}")
        if any(p.split("=")[0].split("<")[0].split(">")[0].strip().lower() == "matplotlib" for p in env.packages):
            mpl = os.path.join(scratch, envs.MPLCONFIG)
            os.makedirs(mpl)
            fonts = _run(
                [sys.executable, "-c", "import matplotlib.font_manager"],
                env={**os.environ, "PYTHONPATH": site, "MPLCONFIGDIR": mpl, "MPLBACKEND": "Agg"},
            )
            if fonts.returncode != 0:
                raise BuildFailed(f"{name}: matplotlib's font cache: {fonts.stderr[-1000:]}")
        installed = _installed(site)
        found = envs.Manifest(
            name=name,
            key=envs.key(env),
            requirements=list(env.packages),
            installed=installed,
            modules=_top_level(site),
            size_bytes=_size(scratch),
            python=sys.version.split()[0],
            built=time.time(),
        )
        _publish(scratch)
        with open(os.path.join(scratch, envs.MANIFEST), "wb") as out:
            out.write(msgspec.json.encode(found))
        os.rename(scratch, target)
        say(f"{name}: built in {time.monotonic() - started:.0f} s, {found.size_bytes / 2**20:.0f} MiB, {target}")
        return target
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def _publish(tree: str) -> None:
    """Readable by every sandbox uid; writable by its owner only (and read-only where bound)."""
    for root, dirs, files in os.walk(tree):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)  # noqa: S103 - read-only to all; nothing secret
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                mode = os.lstat(path).st_mode
                os.chmod(path, 0o755 if mode & 0o111 else 0o644)
    os.chmod(tree, 0o755)  # noqa: S103 - as above


def cmd_env(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except Exception as exc:  # noqa: BLE001 - a config error is the user's to fix: say it
        print(f"cellblock: {exc}", file=sys.stderr)
        return 2
    chosen = {n: e for n, e in config.environments.items() if not args.name or n in args.name}
    unknown = sorted(set(args.name or ()) - set(config.environments))
    if unknown:
        print(f"cellblock: no environment named {', '.join(unknown)} in the config", file=sys.stderr)
        return 2
    if args.action == "list":
        return _list(config, chosen, args.json)
    return _build(config, chosen)


def _build(config: Config, chosen: dict[str, Environment]) -> int:
    failed = 0
    for name, env in chosen.items():
        try:
            build_one(name, env, cache_dir(config), config.service.package_index, print)
        except (BuildFailed, OSError, subprocess.SubprocessError) as exc:
            print(f"cellblock env build: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


class EnvironmentListing(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    runtime: str
    built: bool
    path: str
    requirements: list[str]
    packages: list[str]
    preload: list[str]
    size_bytes: int


def _list(config: Config, chosen: dict[str, Environment], as_json: bool) -> int:
    rows = []
    for name, env in chosen.items():
        found = envs.find(cache_dir(config), name, env)
        path, manifest = found if found else (envs.directory(cache_dir(config), name, env), None)
        rows.append(
            EnvironmentListing(
                name=name,
                runtime=env.runtime,
                built=manifest is not None,
                path=path,
                requirements=list(env.packages),
                packages=envs.installed(manifest) if manifest else [],
                preload=list(env.preload),
                size_bytes=manifest.size_bytes if manifest else 0,
            )
        )
    if as_json:
        sys.stdout.buffer.write(msgspec.json.encode(rows) + b"\n")
        return 0
    for row in rows:
        state = f"built, {row.size_bytes / 2**20:.0f} MiB" if row.built else "NOT built (cellblock env build)"
        print(f"{row.name} ({row.runtime}): {state}; {row.path}")
        for package in row.packages or row.requirements:
            print(f"  {package}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    env = sub.add_parser("env", help="package environments: build them, list them")
    env.add_argument("action", choices=["build", "list"])
    env.add_argument("name", nargs="*", help="only these environments (default: every one in the config)")
    env.add_argument("--config", help="service config file (its [environments])")
    env.add_argument("--json", action="store_true", help="list: as JSON")
    env.set_defaults(func=cmd_env)
