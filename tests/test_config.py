"""Config profiles load into a frozen tree; bad values name the key, the value and the rule."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from agent.config import Settings, default_settings, load, loads
from agent.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("profile", sorted((ROOT / "config").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_profiles_load(profile: Path) -> None:
    settings = load(profile)
    assert isinstance(settings, Settings)
    assert settings.source == str(profile)


def test_defaults_are_frozen() -> None:
    s = default_settings()
    with pytest.raises(AttributeError):
        s.supervisor.heartbeat_interval_s = 3  # type: ignore[misc]


def test_wrong_type_names_key_value_and_rule() -> None:
    with pytest.raises(ConfigError) as err:
        loads('[supervisor]\nheartbeat_timeout_s = "soon"\n', "robot.toml")
    text = str(err.value)
    assert "robot.toml" in text
    assert "supervisor.heartbeat_timeout_s" in text
    assert "'soon'" in text
    assert "Expected `float`" in text


def test_out_of_range_value() -> None:
    with pytest.raises(ConfigError, match=r"supervisor\.heartbeat_interval_s = -1.*> 0"):
        loads("[supervisor]\nheartbeat_interval_s = -1\n")


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown setting 'supervisor\.heartbeat_intervall_s'"):
        loads("[supervisor]\nheartbeat_intervall_s = 1.0\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'nonsense'"):
        loads("nonsense = 1\n")


def test_bad_endpoint_scheme() -> None:
    with pytest.raises(ConfigError, match=r"bus\.control\.publish = 'http://x'"):
        loads('[bus.control]\npublish = "http://x"\nsubscribe = "ipc:///tmp/a"\nhwm = 10\n')


def test_errors_from_section_checks_read_cleanly() -> None:
    with pytest.raises(ConfigError) as err:
        loads('[tools]\ntimezone = "Mars/Base"\n')
    assert str(err.value).endswith("(use an IANA name like 'Europe/Paris')")
    assert "Mars/Base" in str(err.value)


def test_list_item_errors_point_into_the_list() -> None:
    with pytest.raises(ConfigError, match=r"supervisor\.cpu_affinity\.mic\[1\] = -2"):
        loads("[supervisor.cpu_affinity]\nmic = [0, -2]\n")


def test_literal_choices_are_listed() -> None:
    with pytest.raises(ConfigError, match=r"supervisor\.services\[0\] = 'webcam'"):
        loads('[supervisor]\nservices = ["webcam"]\n')


def test_license_is_refused_in_files() -> None:
    with pytest.raises(ConfigError, match="NAVTALK_LICENSE"):
        loads('[navtalk]\nlicense = "abc"\n')


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        loads("[supervisor\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(tmp_path / "missing.toml")


def test_partial_profile_keeps_other_defaults() -> None:
    s = loads("[supervisor]\ncrash_loop_restarts = 2\n")
    assert s.supervisor.crash_loop_restarts == 2
    assert s.supervisor.heartbeat_interval_s == default_settings().supervisor.heartbeat_interval_s
    assert msgspec.structs.replace(s, source="") == msgspec.structs.replace(
        default_settings(), supervisor=s.supervisor
    )


def test_cli_config_check_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[supervisor]\nstop_timeout_s = 0\n")
    r = subprocess.run(
        [sys.executable, "-m", "agent", "config", "check", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "supervisor.stop_timeout_s = 0" in r.stderr
    assert r.stderr.count("\n") == 1, "one clear line, no traceback"
    # the defaults talk to the real NavTalk: the license must be in the environment
    default = ROOT / "config" / "default.toml"
    env = {k: v for k, v in os.environ.items() if k != "NAVTALK_LICENSE"}
    unlicensed = subprocess.run(
        [sys.executable, "-m", "agent", "config", "check", str(default)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert unlicensed.returncode == 2 and "NAVTALK_LICENSE is not set" in unlicensed.stderr
    ok = subprocess.run(
        [sys.executable, "-m", "agent", "config", "check", str(default)],
        capture_output=True, text=True, timeout=60, env={**env, "NAVTALK_LICENSE": "x"},
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr


def test_set_overrides_are_typed_and_validated() -> None:
    s = loads(
        "[supervisor]\ncrash_loop_restarts = 2\n",
        overrides=["supervisor.crash_loop_restarts=7", "supervisor.cpu_affinity.mic=[1]",
                   "log.level=DEBUG"],
    )  # fmt: skip
    assert s.supervisor.crash_loop_restarts == 7
    assert s.supervisor.cpu_affinity == {"mic": [1]}
    assert s.log.level == "DEBUG"
    with pytest.raises(ConfigError, match=r"supervisor\.crash_loop_restarts = 'many'"):
        loads("", overrides=["supervisor.crash_loop_restarts=many"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        loads("", overrides=["nonsense"])


def test_default_toml_is_generated_from_the_code() -> None:
    from agent.configdoc import render

    committed = (ROOT / "config" / "default.toml").read_text()
    assert committed == render(), "run: python -m agent.configdoc > config/default.toml"
    s = load(ROOT / "config" / "default.toml")
    assert msgspec.structs.replace(s, source="") == default_settings()


def test_every_setting_is_documented() -> None:
    from agent.configdoc import undocumented

    assert undocumented() == []
