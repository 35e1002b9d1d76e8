"""The topic graph: every topic is published and read by someone; types are consistent."""

from __future__ import annotations

import typing

from agent import messages, topics


def test_no_orphan_topics() -> None:
    for spec in topics.TOPICS.values():
        assert spec.publishers, f"{spec.name}: nobody publishes it"
        assert spec.subscribers, f"{spec.name}: nobody reads it"
        assert spec.publishers <= topics.ALL_PARTIES, spec.name
        assert spec.subscribers <= topics.ALL_PARTIES, spec.name


def test_every_service_is_wired_both_ways() -> None:
    for party in topics.SERVICES:
        assert topics.published_by(party), f"{party} publishes nothing"
        assert topics.subscribed_by(party), f"{party} reads nothing"


def test_every_message_type_rides_some_topic() -> None:
    carried = {spec.type for spec in topics.TOPICS.values()}
    union = set(typing.get_args(messages.AnyMessage))
    assert union == carried, f"message types on no topic: {union - carried}"


def test_media_plane_carries_only_audio() -> None:
    for spec in topics.TOPICS.values():
        if spec.plane is topics.Plane.MEDIA:
            assert spec.type is messages.AudioFrame, spec.name


def test_no_topic_is_a_prefix_of_another() -> None:
    # a subscription to one exact topic must never also deliver another one
    names = [s.prefix for s in topics.TOPICS.values()]
    for a in names:
        for b in names:
            assert a == b or not b.startswith(a), f"{a!r} is a prefix of {b!r}"


def test_spec_for_family_and_unknown() -> None:
    assert topics.spec_for("health.mic").type is messages.Heartbeat
    assert topics.spec_for("audio.mic").plane is topics.Plane.MEDIA
    try:
        topics.spec_for("health")
    except KeyError:
        pass
    else:
        raise AssertionError("bare family name must not resolve")
