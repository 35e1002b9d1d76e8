"""The ICE host decision (agent.video.ice): a pure function, no traffic."""

from __future__ import annotations

import msgspec
import pytest

from agent.bus import Bus
from agent.config import BusSettings, default_settings
from agent.errors import ConfigError
from agent.video.ice import EVERY_INTERFACE, ice_host, is_loopback, url_host
from agent.video.settings import DisplaySettings
from services import display

REMOTE = "wss://transfer.navtalk.ai/wss/v2/realtime-chat"
LOCAL = "ws://127.0.0.1:8765/wss/v2/realtime-chat"


@pytest.mark.parametrize(
    ("webrtc_host", "url", "expected"),
    [
        ("auto", LOCAL, "127.0.0.1"),
        ("auto", "ws://localhost:8765/", "127.0.0.1"),
        ("auto", "ws://[::1]:8765/", "127.0.0.1"),
        ("AUTO", REMOTE, EVERY_INTERFACE),
        ("auto", "wss://10.0.0.5:443/x", EVERY_INTERFACE),
        ("", REMOTE, EVERY_INTERFACE),
        ("0.0.0.0", LOCAL, EVERY_INTERFACE),
        ("127.0.0.1", LOCAL, "127.0.0.1"),
        ("192.168.1.20", REMOTE, "192.168.1.20"),
        ("192.168.1.20", LOCAL, "192.168.1.20"),
    ],
)
def test_ice_host(webrtc_host: str, url: str, expected: str) -> None:
    assert ice_host(webrtc_host, url) == expected


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
@pytest.mark.parametrize("url", [REMOTE, "wss://10.0.0.5/x", "not a url"])
def test_loopback_ice_with_a_remote_url_is_refused_in_one_line(host: str, url: str) -> None:
    with pytest.raises(ConfigError) as info:
        ice_host(host, url)
    text = str(info.value)
    assert "\n" not in text and "display.webrtc_host" in text and repr(host) in text


def test_helpers() -> None:
    assert url_host("wss://[::1]:9/x") == "::1"
    assert url_host("http://[bad") == ""
    assert is_loopback("LOCALHOST") and is_loopback("127.9.9.9") and not is_loopback("10.0.0.1")


async def test_the_display_service_refuses_such_a_profile_before_using_the_bus(
    bus_settings: BusSettings,
) -> None:
    """The display raises ConfigError at start (the runtime exits 2 on it): no bus, no screen."""
    settings = msgspec.structs.replace(
        default_settings(),
        bus=bus_settings,
        display=DisplaySettings(webrtc_host="127.0.0.1", backend="null"),
    )
    bus = Bus(bus_settings, "display")
    try:
        with pytest.raises(ConfigError, match="webrtc_host"):
            await display.run(settings, bus)
    finally:
        await bus.close()
