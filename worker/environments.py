"""Package environments: where a built one lives, what it holds, and how a zygote enters it.

An environment is built once (``cellblock env build``) into
``<cache_dir>/envs/<name>-<key>``, where the key hashes its runtime, its
requirement list and the interpreter: changing either builds a new one, and
nothing is ever rebuilt in place. A build is complete only once its manifest
is written (``cellblock-env.json``); a half-built directory is never used.

Every sandbox of the environment sees it read-only, nosuid and nodev at
``/opt/cellblock/envs/<name>``, its packages on ``sys.path``. Its zygote sees
it at that same path (in a mount namespace of the zygote's own, over a tmpfs
on /opt), so the modules it imports before workers exist have the paths a
run's later imports resolve against.

Built environments are looked up in the service's cache directory first,
then in the system-wide one: an unprivileged service can use what root
built, read-only.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sys

import msgspec

from protocol.profile import Environment
from worker import syscalls as sc

SANDBOX_ROOT = "/opt/cellblock/envs"
SYSTEM_CACHE = "/var/cache/cellblock"
MANIFEST = "cellblock-env.json"
SITE = "site"  # pip's --target inside the environment's directory
MPLCONFIG = "matplotlib"  # matplotlib's config and font cache, built with the environment
# Libraries that start threads at import (OpenBLAS) must not: a zygote forks.
THREAD_LIMITS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    key: str
    requirements: list[str]
    installed: dict[str, str]  # distribution -> version
    modules: list[str]  # top-level importable names
    size_bytes: int
    python: str
    built: float


def key(env: Environment) -> str:
    """What a build depends on: the runtime, the requirements, the interpreter."""
    what = json.dumps(
        [env.runtime, sorted(env.packages), sys.version, platform.machine(), sys.implementation.cache_tag],
        sort_keys=True,
    )
    return hashlib.sha256(what.encode()).hexdigest()[:16]


def directory(cache_dir: str, name: str, env: Environment) -> str:
    return os.path.join(cache_dir, "envs", f"{name}-{key(env)}")


def manifest(path: str) -> Manifest | None:
    """The manifest of a complete build at ``path``, or None."""
    try:
        with open(os.path.join(path, MANIFEST), "rb") as src:
            return msgspec.json.decode(src.read(), type=Manifest)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def find(cache_dir: str, name: str, env: Environment) -> tuple[str, Manifest] | None:
    """Where a complete build of ``env`` is (the service's cache, then the system's), or None."""
    for root in dict.fromkeys([cache_dir, SYSTEM_CACHE]):
        path = directory(root, name, env)
        found = manifest(path)
        if found is not None:
            return path, found
    return None


def in_sandbox(name: str) -> str:
    return f"{SANDBOX_ROOT}/{name}"


def packages(found: Manifest) -> list[str]:
    """What was asked for, with the version installed: "numpy 2.4.6"."""
    versions = {dist.lower().replace("_", "-"): version for dist, version in found.installed.items()}
    out = []
    for requirement in found.requirements:
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip()
        out.append(f"{name} {versions.get(name.lower().replace('_', '-'), '?')}")
    return out


def installed(found: Manifest) -> list[str]:
    """Everything in it, dependencies too: "certifi 2026.10.19", ..."""
    return [f"{dist} {version}" for dist, version in sorted(found.installed.items(), key=lambda kv: kv[0].lower())]


def environment_variables(name: str) -> dict[str, str]:
    """What a run of the environment (and its zygote) gets in its environment."""
    return {**THREAD_LIMITS, "MPLBACKEND": "Agg", "MPLCONFIGDIR": f"{in_sandbox(name)}/{MPLCONFIG}"}


def _writable_mplconfig(path: str) -> None:
    """matplotlib takes a config directory only if it can write there (else it makes one
    in /tmp and warns): in the zygote, a tmpfs over it holding the built font cache. In
    a sandbox the built one is there, read-only; matplotlib, imported before, writes nothing."""
    if not os.path.isdir(path):
        return
    files = {}
    for entry in os.listdir(path):
        with open(os.path.join(path, entry), "rb") as src:
            files[entry] = src.read()
    sc.mount("tmpfs", path, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "size=16m,mode=0755")
    for entry, data in files.items():
        with open(os.path.join(path, entry), "wb") as out:
            out.write(data)


def enter(name: str, host_path: str) -> str:
    """In the environment's zygote, before it imports anything of it: the built directory
    at its sandbox path, in a mount namespace of the zygote's own. Returns the site dir."""
    source = os.open(host_path, os.O_PATH | os.O_CLOEXEC)
    try:
        tree = sc.clone_tree(source)
    finally:
        os.close(source)
    # Read-only in the zygote too: nothing it imports may write bytecode there.
    sc.set_mount_attr(tree, sc.MOUNT_ATTR_RDONLY | sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV)
    sys.dont_write_bytecode = True
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    sc.mount("tmpfs", "/opt", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "size=64k,mode=0755")
    target = in_sandbox(name)
    os.makedirs(target)
    sc.move_mount(tree, target)
    os.close(tree)
    _writable_mplconfig(f"{target}/{MPLCONFIG}")
    site = f"{target}/{SITE}"
    sys.path.append(site)
    os.environ.update(environment_variables(name))
    return site
