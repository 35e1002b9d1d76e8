"""Where ICE gathers its host candidates: a pure decision from two settings.

::

    display.webrtc_host   NavTalk URL host   ->  ICE host candidates on
    "auto" (default)      loopback           ->  127.0.0.1 only (the local emulator)
    "auto"                anything else      ->  every interface ("")
    "" / 0.0.0.0 / ::     any                ->  every interface ("")
    a loopback address    loopback           ->  that address
    a loopback address    anything else      ->  ConfigError: nothing could ever connect
    another address       any                ->  that address (the robot's LAN address)

The URL is the one the session connects to (the embedded emulator's when it is on).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from agent.errors import ConfigError

__all__ = ["AUTO", "EVERY_INTERFACE", "ice_host", "is_loopback", "url_host"]

AUTO = "auto"
EVERY_INTERFACE = ""
LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    """``host`` is a loopback address (or ``localhost``)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def url_host(url: str) -> str:
    """The host of ``url`` ("" when it has none or cannot be parsed)."""
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def ice_host(webrtc_host: str, navtalk_url: str) -> str:
    """The address ICE gathers host candidates on, "" for every interface.

    Raises :class:`ConfigError` for a combination that can never connect.
    """
    host = webrtc_host.strip()
    remote = url_host(navtalk_url)
    if host.lower() == AUTO:
        return LOOPBACK if is_loopback(remote) else EVERY_INTERFACE
    if host in ("", "0.0.0.0", "::"):
        return EVERY_INTERFACE
    if is_loopback(host) and not is_loopback(remote):
        where = remote or "a URL without a host"
        raise ConfigError(
            f"display.webrtc_host = {host!r} keeps WebRTC on loopback, but NavTalk is at "
            f"{where!r}: the avatar could never connect; set webrtc_host = "
            f'"auto" (or the robot\'s LAN address)'
        )
    return host
