"""URL building and license redaction."""

from __future__ import annotations

import pytest

from agent.errors import ConfigError
from agent.navtalk.settings import read_license
from agent.navtalk.url import build_url, redact


def test_build_url_keeps_existing_query_and_encodes() -> None:
    url = build_url("ws://127.0.0.1:9/wss/v2/realtime-chat?x=1", "a b&c", name="Leo")
    assert url == "ws://127.0.0.1:9/wss/v2/realtime-chat?x=1&license=a+b%26c&name=Leo"


def test_build_url_needs_license_and_character() -> None:
    with pytest.raises(ValueError):
        build_url("ws://h/p", "", name="x")
    with pytest.raises(ValueError):
        build_url("ws://h/p", "lic")


def test_redact_removes_license_everywhere() -> None:
    url = build_url("wss://h/wss/v2/realtime-chat", "Sk-LIC-777", avatar_id="A")
    assert "Sk-LIC-777" not in redact(url)
    assert redact(url) == "wss://h/wss/v2/realtime-chat?license=***&avatarId=A"
    # a registered license is removed from free text too, not only from query strings
    assert redact("failed for key Sk-LIC-777!") == "failed for key ***!"
    # an unknown license in a query string, JSON or key=value text
    assert redact("GET /x?license=zzz99&name=n") == "GET /x?license=***&name=n"
    assert redact('{"license": "zzz99"}') == '{"license": "***"}'
    assert "zzz99" not in redact("license=zzz99 rest")


def test_license_comes_from_environment_only() -> None:
    assert read_license({"NAVTALK_LICENSE": " abc "}) == "abc"
    with pytest.raises(ConfigError, match="NAVTALK_LICENSE"):
        read_license({})
