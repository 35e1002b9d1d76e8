"""The display's WebRTC peer (agent/video/peer.py), on real aiortc."""

from __future__ import annotations

from agent.video.peer import DisplayPeer


async def test_connections_we_drop_ourselves_report_no_state() -> None:
    """Replacing a connection by a fresh one (a new offer) or closing it is our own doing:
    reporting its "closed" would make the display offer yet again, and two offers in flight
    get their answers crossed."""
    states: list[tuple[int, str]] = []
    peer = DisplayPeer(
        "127.0.0.1", lambda kind, gen, frame: None, lambda g, s: states.append((g, s))
    )
    try:
        await peer.offer()
        await peer.offer()  # replaces generation 1
        assert peer.generation == 2 and peer.signaling_state == "have-local-offer"
    finally:
        await peer.close()
    assert states == []
