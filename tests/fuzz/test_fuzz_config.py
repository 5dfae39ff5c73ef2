"""Property-based fuzzing of the config and profile loaders (supervisor/config.py, protocol/profile.py).

Whatever a config or profile file holds (TOML shaped like the schema with
values off by a little or a lot, keys misspelt, or any text or bytes), the
loader gives a checked value or a ``ConfigError`` naming the file: never
another exception, so ``cellblock serve`` stops with that file's name and
reason rather than a traceback. A value it accepts keeps the loader's own
promises (paths absolute, defaults within the maxima).
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Iterator
from typing import Any

import msgspec.inspect as mi
import pytest
from fuzzing import toml_document, toml_value, valid
from hypothesis import given
from hypothesis import strategies as st

from protocol.profile import PROFILE_DIR, ConfigError, Profile, decode_profile
from supervisor.config import Config, load_config, profile_for

toml_scalars = st.one_of(
    st.booleans(),
    st.integers(-(1 << 63), (1 << 63) - 1),
    st.floats(),
    st.text(max_size=30),
    st.sampled_from(["/", "/srv", "relative", "/sys/fs/cgroup/x", "127.0.0.1:8080", "::1", "default", "strict",
                     "../../etc/passwd", "/a\x00b", "required", "optional", "off", "none", "loopback"]),
)
# What the string fields of a config hold: paths (absolute, relative, odd) and names.
config_strings = st.one_of(
    st.sampled_from(["/", "/srv", "/srv/shared", "relative", "/sys/fs/cgroup/cellblock", "127.0.0.1:8080", "default",
                     "strict", "python", "python:data", "numpy", "/run/cellblock", "/tmp/x/../..", "/srv\x00x"]),
    st.text(max_size=12).map(lambda t: "/" + t),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


@st.composite
def documents(draw: st.DrawFn, schema: type) -> str:
    """A document of ``schema``'s shape, then a few keys set to anything or added."""
    doc: dict[str, Any] = draw(valid(mi.type_info(schema), toml_values, toml=True, strings=config_strings))
    if doc and draw(st.booleans()):  # one section alone: more documents get past the decoder to the checks
        keep = draw(st.sampled_from(sorted(doc)))
        doc = {keep: doc[keep]}
    for _ in range(draw(st.integers(0, 3))):
        section = draw(st.sampled_from(sorted(doc) or ["x"]))
        target = doc.get(section)
        key = draw(st.one_of(st.sampled_from(sorted(target) if isinstance(target, dict) and target else ["k"]),
                             st.text(max_size=10)))
        if isinstance(target, dict):
            target[key] = draw(toml_values)
        else:
            doc[section] = draw(toml_values)
    return toml_document(doc)


@pytest.fixture(scope="module")
def scratch() -> Iterator[pathlib.Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield pathlib.Path(tmp) / "cellblock.toml"


def _load(path: pathlib.Path, data: bytes) -> Config | ConfigError:
    path.write_bytes(data)
    try:
        return load_config(str(path))
    except ConfigError as exc:
        assert exc.path == str(path)
        return exc


@given(st.one_of(documents(Config), st.text(max_size=300), st.binary(max_size=300)))
def test_any_config_file_gives_a_checked_config_or_a_config_error(scratch: pathlib.Path, doc: str | bytes) -> None:
    data = doc.encode("utf-8", "surrogatepass") if isinstance(doc, str) else doc
    config = _load(scratch, data)
    if isinstance(config, ConfigError):
        return
    service = config.service
    for path in (service.runtime_dir, service.state_dir, service.cache_dir):
        assert path == "" or path.startswith("/")
    assert all(root.startswith("/") and os.path.realpath(root) != "/" for root in config.policy.grant_roots)
    try:  # the profile it names is read too, at start
        assert isinstance(profile_for(config), Profile)
    except ConfigError:
        pass


@given(st.one_of(documents(Profile), st.text(max_size=300), st.binary(max_size=300)))
def test_any_profile_gives_a_checked_profile_or_a_config_error(doc: str | bytes) -> None:
    data = doc.encode("utf-8", "surrogatepass") if isinstance(doc, str) else doc
    try:
        profile = decode_profile(data, "/fuzz/p.toml", "p")
    except ConfigError as exc:
        assert exc.path == "/fuzz/p.toml"
        return
    for key in ("timeout_ms", "cpu_ms", "memory_mb", "output_bytes"):
        assert getattr(profile.limits, key) <= getattr(profile.max, key)
    for mount in profile.mounts:
        assert mount.src.startswith("/") and mount.target.startswith("/") and ".." not in mount.target.split("/")


@pytest.mark.parametrize("name", sorted(p.stem for p in PROFILE_DIR.glob("*.toml")))
@given(st.data())
def test_a_shipped_profile_with_one_value_changed_still_loads_or_says_why(name: str, data: st.DataObject) -> None:
    text = (PROFILE_DIR / f"{name}.toml").read_text()
    lines = [i for i, line in enumerate(text.splitlines()) if "=" in line and not line.lstrip().startswith("#")]
    at = data.draw(st.sampled_from(lines))
    rows = text.splitlines()
    rows[at] = rows[at].split("=", 1)[0] + "= " + toml_value(data.draw(toml_values))
    try:
        decode_profile("\n".join(rows).encode(), f"{name}.toml", name)
    except ConfigError:
        pass


FOUND = {
    # Each raised an untyped error out of the loader: a traceback at start, not the file and key.
    "nested arrays": "a = " + "[" * 5000,
    "nested tables": "a = " + "{b = " * 3000,
    "a grant root with a NUL": '[policy]\ngrant_roots = ["/srv\\u0000x"]\n',
    "a profile name with a NUL": '[service]\nprofile = "default\\u0000"\n',
    "a runtime dir with a NUL": '[service]\nruntime_dir = "/run/x\\u0000"\n',
}


@pytest.mark.parametrize("text", FOUND.values(), ids=FOUND.keys())
def test_found_these_configs_are_a_config_error(scratch: pathlib.Path, text: str) -> None:
    config = _load(scratch, text.encode())
    if not isinstance(config, ConfigError):
        with pytest.raises(ConfigError):
            profile_for(config)
