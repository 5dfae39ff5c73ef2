"""Profiles and the config file: strict decoding with file, key and reason."""

from __future__ import annotations

import pathlib

import pytest

from protocol.profile import PROFILE_DIR, ConfigError, load_profile
from supervisor.config import load_config


@pytest.mark.parametrize("name", ["default", "strict"])
def test_shipped_profiles_load(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name
    assert profile.limits.memory_mb <= profile.max.memory_mb


def test_strict_is_stricter() -> None:
    default, strict = load_profile("default"), load_profile("strict")
    assert strict.fixed.pids < default.fixed.pids
    assert strict.sandbox.network == "none"
    assert not strict.runtimes["python"].exec


def write(tmp_path: pathlib.Path, text: str) -> str:
    path = tmp_path / "x.toml"
    path.write_text(text)
    return str(path)


def test_unknown_profile_key_names_file_and_key(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "[limits]\ntimout_ms = 5\n")
    with pytest.raises(ConfigError) as exc:
        load_profile(path)
    assert exc.value.path == path
    assert exc.value.key == "limits.timout_ms"
    assert exc.value.reason == "unknown key"


def test_bad_profile_value(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_profile(write(tmp_path, '[sandbox]\nnetwork = "internet"\n'))
    assert exc.value.key == "sandbox.network"


def test_default_above_max_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_profile(write(tmp_path, "[limits]\nmemory_mb = 4096\n"))
    assert exc.value.key == "limits.memory_mb"


def test_missing_profile(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_profile("no-such-profile")
    assert str(PROFILE_DIR) in exc.value.path


def test_config_unknown_key(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "[policy]\nrate_per_minit = 3\n"))
    assert exc.value.key == "policy.rate_per_minit" and "x.toml" in str(exc.value)


def test_config_bad_type(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, '[service]\nqueue_limit = "lots"\n'))
    assert exc.value.key == "service.queue_limit"


def test_config_not_toml(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "[service\n"))
    assert "not valid TOML" in exc.value.reason


def test_empty_config_gives_defaults() -> None:
    config = load_config(None)
    assert config.policy.rate_per_minute == 10 and config.policy.concurrency == 3


def test_config_misspelt_section_is_named_like_a_key(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "[servce]\nprofile = 'strict'\n"))
    assert err.value.key == "servce" and err.value.reason.startswith("unknown section or key")
    assert "service" in err.value.reason and "Object contains" not in str(err.value)
