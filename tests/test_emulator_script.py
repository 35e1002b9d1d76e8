"""The emulator's script: loading, validation with one-line errors, readable tool replies."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.emulator.cli import check_port, parse_port
from agent.emulator.script import Script, ScriptError, generic_result, render_tool_reply
from agent.errors import ConfigError


def test_missing_file_is_a_one_line_config_error(tmp_path: Path) -> None:
    with pytest.raises(ScriptError) as info:
        Script.load(tmp_path / "nope.toml")
    assert isinstance(info.value, ConfigError)
    assert "nope.toml" in str(info.value) and "no such file" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("greeting = [", "not valid TOML"),
        ("greeting = 3", "greeting must be a string"),
        ('hears = "one line"', "hears must be a list of strings"),
        ("[[rules]]\nmatch = 'x'", "rules[0] needs a reply or a tool"),
        ("[[rules]]\nmatch = 'x'\nreply = 'y'\nregex = '('", "rules[0].regex"),
        ("[[rules]]\nmatch = 1\nreply = 'y'", "rules[0].match must be a str"),
        ("greting = 'typo'", "'greting' is not a script key"),
        (b"\xff\xfe", "not valid TOML"),
    ],
)
def test_invalid_content_is_a_one_line_config_error(
    tmp_path: Path, content: str | bytes, needle: str
) -> None:
    path = tmp_path / "bad.toml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ScriptError) as info:
        Script.load(path)
    message = str(info.value)
    assert needle in message and str(path) in message and "\n" not in message


def test_the_shipped_scripts_load() -> None:
    for path in (None, "config/scripts/demo.toml"):
        script = Script.load(path)
        assert script.hears and script.rules


def test_tool_replies_are_sentences() -> None:
    assert render_tool_reply("It is {output.human}.", {"human": "noon"}, {}) == "It is noon."
    assert render_tool_reply("It is {output.human}.", {"time": "10:42"}, {}) == (
        "The result is: time 10:42."
    )
    assert render_tool_reply("", "done", {}) == "The result is: done."
    assert render_tool_reply("Found {args.name}: {output}", {"room": 12, "paid": True},
                             {"name": "Smith"}) == "Found Smith: room 12, paid yes"  # fmt: skip
    assert generic_result({"a": {"b": [1, None]}}) == "The result is: a b 1, nothing."


def test_port_validation() -> None:
    assert check_port(0) == 0 and check_port(65535) == 65535
    for bad in (-1, 65536, True):
        with pytest.raises(ConfigError):
            check_port(bad)
    import argparse

    assert parse_port("8765") == 8765
    for text in ("70000", "-1", "http", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_port(text)
