"""Latched topics on the real proxy: late subscribers, unlatch, restarts, bounded depth,
and a holder in another OS process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent import topics
from agent.bus import Bus, Delivery
from agent.config import BusSettings
from agent.errors import BusError
from agent.messages import AudioFrame, IceCandidate, SdpMessage, ToolResult
from tests.bus_peer import peer
from tests.conftest import MakeBus


async def _recv(bus: Bus, timeout: float = 5.0) -> Delivery:
    return await asyncio.wait_for(bus.recv(), timeout)


def _offer(sdp: str) -> SdpMessage:
    return SdpMessage(sdp_type="offer", sdp=sdp)


async def _passed_the_proxy(witness: Bus, n: int) -> None:
    """Wait until ``witness`` (subscribed before the publishes) got ``n`` messages live: the
    proxy has forwarded them, so a subscriber that comes up now cannot get them live. (Its own
    latch request may be answered with some of them as well: those are not counted.)"""
    while n:
        if not (await _recv(witness)).replayed:
            n -= 1


async def test_late_subscriber_gets_the_latched_value(make_bus: MakeBus) -> None:
    session = await make_bus("session")
    witness = await make_bus("witness", "webrtc.remote.")
    session.publish(topics.WEBRTC_REMOTE_OFFER, _offer("v=0 first"), latch=1)
    session.publish(topics.WEBRTC_REMOTE_OFFER, _offer("v=0 second"), latch=1)
    await _passed_the_proxy(witness, 2)
    display = await make_bus("display", topics.WEBRTC_REMOTE_OFFER)
    d = await _recv(display)
    assert d.topic == topics.WEBRTC_REMOTE_OFFER and d.sender == "session"
    assert isinstance(d.msg, SdpMessage) and d.msg.sdp == "v=0 second"
    assert d.replayed and d.seq == 2


async def test_unlatched_value_is_not_delivered(make_bus: MakeBus) -> None:
    session = await make_bus("session")
    witness = await make_bus("witness", "webrtc.remote.")
    session.publish(topics.WEBRTC_REMOTE_OFFER, _offer("stale"), latch=1)
    session.publish(topics.WEBRTC_REMOTE_ICE, IceCandidate(candidate="c1"), latch=8)
    session.unlatch(topics.WEBRTC_REMOTE_OFFER)
    await _passed_the_proxy(witness, 2)
    display = await make_bus("display", "webrtc.remote.")
    # one holder answers one request in publish order: had the offer been re-sent, it would
    # come first
    d = await _recv(display)
    assert isinstance(d.msg, IceCandidate) and d.msg.candidate == "c1", d


async def test_a_restarted_subscriber_gets_it_again(
    bus_settings: BusSettings, make_bus: MakeBus
) -> None:
    session = await make_bus("session")
    witness = await make_bus("witness", "webrtc.remote.")
    session.publish(topics.WEBRTC_REMOTE_OFFER, _offer("v=0 x"), latch=1)
    await _passed_the_proxy(witness, 1)
    for _ in range(3):
        async with Bus(bus_settings, "display") as display:
            display.subscribe(topics.WEBRTC_REMOTE_OFFER)  # after start(): asks again
            d = await _recv(display)
            assert isinstance(d.msg, SdpMessage) and d.msg.sdp == "v=0 x" and d.replayed
    assert session.stats.latch_resent >= 3


async def test_only_the_last_n_are_kept_and_resent_in_publish_order(make_bus: MakeBus) -> None:
    session = await make_bus("session")
    witness = await make_bus("witness", "webrtc.remote.")
    for i in range(5):
        session.publish(topics.WEBRTC_REMOTE_ICE, IceCandidate(candidate=f"c{i}"), latch=3)
    session.publish(topics.WEBRTC_REMOTE_OFFER, _offer("last"), latch=1)
    await _passed_the_proxy(witness, 6)
    display = await make_bus("display", "webrtc.remote.")
    got = [(await _recv(display)).msg for _ in range(4)]
    assert [getattr(m, "candidate", getattr(m, "sdp", None)) for m in got] == [
        "c2",
        "c3",
        "c4",
        "last",
    ]


async def test_only_what_was_asked_for_is_resent(make_bus: MakeBus) -> None:
    tools = await make_bus("tools")
    witness = await make_bus("witness", topics.WEBRTC_REMOTE_OFFER, topics.TOOL_RESULT)
    tools.publish(topics.TOOL_RESULT, ToolResult(call_id="r", name="t", ok=True), latch=1)
    tools.publish(topics.WEBRTC_REMOTE_OFFER, _offer("o"), latch=1)
    await _passed_the_proxy(witness, 2)
    display = await make_bus("display", topics.WEBRTC_REMOTE_OFFER)
    d = await _recv(display)
    assert isinstance(d.msg, SdpMessage) and d.replayed
    tools.publish(topics.WEBRTC_REMOTE_OFFER, _offer("live"))
    d = await _recv(display)  # a tool result re-sent would have come before it
    assert isinstance(d.msg, SdpMessage) and d.msg.sdp == "live" and not d.replayed
    assert display.stats.per_topic == {topics.WEBRTC_REMOTE_OFFER: 2}


async def test_latch_is_refused_on_the_media_plane_and_past_its_bound(make_bus: MakeBus) -> None:
    mic = await make_bus("mic")
    with pytest.raises(BusError, match="control-plane"):
        mic.publish(topics.AUDIO_MIC, AudioFrame(sample_rate_hz=24000), b"\0\0", latch=1)
    with pytest.raises(BusError, match="latch depth"):
        mic.publish(topics.WEBRTC_REMOTE_OFFER, _offer("x"), latch=100_000)


async def test_a_holder_in_another_process_answers_late_subscribers(
    bus_settings: BusSettings, short_tmp: Path
) -> None:
    witness = Bus(bus_settings, "witness")
    witness.subscribe("webrtc.remote.")
    async with peer(short_tmp, "session") as session, witness:
        await session.do("offer v=0-remote 1")
        await session.do("ice cand-a 32")
        await session.do("ice cand-b 32")
        await _passed_the_proxy(witness, 3)
        for _ in range(2):  # and again after a restart
            async with Bus(bus_settings, "display") as display:
                display.subscribe("webrtc.remote.")
                got = [(await _recv(display)).msg for _ in range(3)]
                assert got == [
                    _offer("v=0-remote"),
                    IceCandidate(candidate="cand-a"),
                    IceCandidate(candidate="cand-b"),
                ]
        await session.do(f"unlatch {topics.WEBRTC_REMOTE_OFFER}")
        await session.do("ice cand-c 2")  # depth now 2: keeps b and c
        await _passed_the_proxy(witness, 1)
        bus = Bus(bus_settings, "display")
        bus.subscribe("webrtc.remote.")
        async with bus as display:
            got = [(await _recv(display)).msg for _ in range(2)]
            assert got == [IceCandidate(candidate="cand-b"), IceCandidate(candidate="cand-c")]


async def test_a_resend_of_a_message_received_live_is_dropped(make_bus: MakeBus) -> None:
    session = await make_bus("session")
    display = await make_bus("display", topics.WEBRTC_REMOTE_OFFER)
    session.publish(topics.WEBRTC_REMOTE_OFFER, _offer("once"), latch=1)
    live = await _recv(display)
    assert live.msg == _offer("once") and not live.replayed
    display.subscribe("webrtc.remote.")  # asks again: the offer is re-sent, and dropped
    session.publish(topics.WEBRTC_REMOTE_ICE, IceCandidate(candidate="sentinel"))
    d = await _recv(display)  # the re-send (answered before the sentinel) would come first
    assert d.msg == IceCandidate(candidate="sentinel"), d
    assert display.stats.per_topic[topics.WEBRTC_REMOTE_OFFER] == 1
    # (twice, likely: the request of its start() may have been answered after the publish)
    assert display.stats.replay_duplicates >= 1
