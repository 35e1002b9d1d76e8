"""The topic graph, built from what each party declares next to its code (and uses: a
service subscribes through its declaration, and its bus refuses undeclared publishes)."""

from __future__ import annotations

import importlib
import re
import typing
from pathlib import Path

import pytest

from agent import messages, runtime, topics
from agent.apps import supervisor
from agent.errors import BusError
from agent.messages import Heartbeat, Metrics, ToolResult
from tests.conftest import MakeBus

ROOT = Path(__file__).resolve().parent.parent


def _parties() -> dict[str, topics.ServiceTopics]:
    parties = {name: importlib.import_module(f"services.{name}").TOPICS for name in topics.SERVICES}
    parties["runtime"] = runtime.RUNTIME_TOPICS  # in every service process
    parties[topics.SUPERVISOR] = supervisor.SUPERVISOR_TOPICS
    parties[topics.EXTERNAL] = topics.EXTERNAL_TOPICS
    return parties


GRAPH = topics.graph(_parties())


@pytest.mark.parametrize("name", sorted(topics.TOPICS))
def test_every_topic_is_written_and_read(name: str) -> None:
    writers, readers = GRAPH[name]
    assert writers, f"{name}: nobody declares writing it"
    assert readers, f"{name}: nobody declares reading it"


def test_known_edges_come_from_the_services() -> None:
    # spot checks that the graph is the services' own: each edge here is a subscription
    # or a publish in services/
    assert GRAPH[topics.AUDIO_MIC] == ({"mic"}, {"session"})
    # (the supervisor reads calls and results for its tool-call metrics: agent.ops_metrics)
    assert GRAPH[topics.TOOL_CALL] == ({"session"}, {"tools", "supervisor"})
    assert GRAPH[topics.HEALTH] == ({"runtime", "supervisor"}, {"supervisor", "session"})
    # the speaker reads navtalk.audio.done (the end of a reply played from the deltas)
    assert GRAPH[topics.NAVTALK_AUDIO_DONE][1] == {"speaker", topics.EXTERNAL}


def test_every_service_is_wired_both_ways() -> None:
    for name, declared in _parties().items():
        assert declared.reads, f"{name} reads nothing"
        if name != topics.EXTERNAL:
            assert declared.writes, f"{name} writes nothing"


def test_services_subscribe_only_through_their_declaration() -> None:
    for path in [
        *sorted((ROOT / "services").glob("*.py")),
        ROOT / "agent/runtime.py",
        ROOT / "agent/apps/supervisor.py",
    ]:
        source = path.read_text()
        if path.name == "__init__.py":
            continue
        assert not re.search(r"\.subscribe\(", source), (
            f"{path.name}: subscribe() outside declare()"
        )
        assert re.search(r"\.declare\(", source), f"{path.name}: does not declare its topics"


def test_a_declaration_names_known_topics_only() -> None:
    with pytest.raises(ValueError, match="not in agent.topics"):
        topics.ServiceTopics(reads=("audio.mike",))
    with pytest.raises(ValueError, match="not declared as reads"):
        topics.ServiceTopics(reads=(topics.AUDIO_MIC,)).subscriptions(without=(topics.AUDIO_OUT,))
    declared = topics.ServiceTopics(reads=(topics.HEALTH, "health.tools", topics.AUDIO_MIC))
    assert declared.subscriptions() == ["health.", "health.tools", "audio.mic"]


async def test_the_bus_refuses_a_publish_outside_the_declared_writes(make_bus: MakeBus) -> None:
    bus = await make_bus("tools")
    bus.declare(
        topics.ServiceTopics(reads=(topics.TOOL_CALL,), writes=(topics.TOOL_RESULT, topics.METRICS))
    )
    assert bus.publish(topics.TOOL_RESULT, ToolResult(call_id="c", name="t", ok=True))
    assert bus.publish("metrics.tools", Metrics(service="tools", values={}))  # family member
    with pytest.raises(BusError, match="does not declare"):
        bus.publish("health.tools", Heartbeat(service="tools", pid=1))


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
    with pytest.raises(KeyError):
        topics.spec_for("health")  # a bare family name does not resolve
