"""The CurveZMQ remote gateway on real loopback sockets: allowed keys read and command,
unknown keys get nothing, media only when allowed, commands checked."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest
import zmq
import zmq.asyncio

from agent import topics
from agent.bus import Bus
from agent.config import BusSettings, Settings
from agent.errors import BusError
from agent.keys import ClientKeys, KeyRing, generate, list_keys, load_client_keys
from agent.messages import (
    AudioFrame,
    Envelope,
    Heartbeat,
    Metrics,
    SessionControl,
    Shutdown,
    TextInput,
    encode_envelope,
)
from agent.remote import CommandRefused, Gateway, RemoteCommander, check_command
from agent.remote_settings import RemoteSettings
from tests.conftest import MakeBus, free_port
from tests.supervisor_helpers import ROOT

NOTHING_WITHIN_S = 2.0


@pytest.fixture
def keyring(short_tmp: Path) -> Path:
    """server pair; alice reads and writes; bob reads only; mallory is known to nobody."""
    keys = short_tmp / "keys"
    generate(keys, "server")
    for name in ("alice", "bob", "mallory"):
        generate(short_tmp / "clients", name)
    for name, roles in (("alice", ("readers", "writers")), ("bob", ("readers",))):
        for role in roles:
            (keys / role).mkdir(exist_ok=True)
            shutil.copy(short_tmp / "clients" / f"{name}.key", keys / role / f"{name}.key")
    return keys


def client(keyring: Path, name: str) -> ClientKeys:
    return load_client_keys(
        str(keyring.parent / "clients" / f"{name}.key_secret"), str(keyring / "server.key")
    )


GatewayFactory = Callable[..., "contextlib.AbstractAsyncContextManager[Gateway]"]


@pytest.fixture
def gateway(bus_settings: BusSettings, keyring: Path) -> GatewayFactory:
    @contextlib.asynccontextmanager
    async def run(**remote: object) -> AsyncIterator[Gateway]:
        settings = Settings(
            bus=bus_settings,
            remote=RemoteSettings(
                keys_dir=str(keyring),
                read_port=free_port(),
                command_port=free_port(),
                **remote,  # type: ignore[arg-type]
            ),
        )
        gw = Gateway(settings, metrics_interval_s=0.1)
        task = asyncio.create_task(gw.run())
        try:
            async with asyncio.timeout(10):
                await gw.ready.wait()
            yield gw
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return run


def reader(gw: Gateway, keys: ClientKeys, *prefixes: str) -> zmq.asyncio.Socket:
    sock = zmq.asyncio.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    keys.apply(sock)
    for p in prefixes or ("",):
        sock.setsockopt(zmq.SUBSCRIBE, p.encode())
    sock.connect(gw.read_endpoint)
    return sock


async def publish_until_received(
    bus: Bus, sock: zmq.asyncio.Socket, timeout: float, *, audio: bool = False
) -> list[bytes] | None:
    """Publish a heartbeat (and a mic frame) every 20 ms until ``sock`` receives something."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        bus.publish("health.mic", Heartbeat(service="mic", pid=1))
        if audio:
            bus.publish(topics.AUDIO_MIC, AudioFrame(sample_rate_hz=24000), b"\x01\x02" * 480)
        if await sock.poll(20):
            return list(await sock.recv_multipart())
    return None


async def test_allowed_key_reads_and_unknown_key_gets_nothing(
    gateway: GatewayFactory, keyring: Path, make_bus: MakeBus, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.keys")
    bus = await make_bus("mic")
    async with gateway() as gw:
        alice = reader(gw, client(keyring, "alice"), "health.")
        mallory = reader(gw, client(keyring, "mallory"), "health.")
        try:
            frames = await publish_until_received(bus, alice, 5.0)
            assert frames is not None and frames[0] == b"health.mic"
            assert await publish_until_received(bus, mallory, NOTHING_WITHIN_S) is None
        finally:
            alice.close()
            mallory.close()
        assert gw.readers.refused >= 1
    mallory_key = client(keyring, "mallory").public.decode()
    refused = [r for r in caplog.records if "unknown CURVE key" in r.getMessage()]
    assert refused and mallory_key in refused[0].getMessage()
    assert len(refused) == 1, "a reconnecting unknown client is logged once, then counted"


async def test_media_only_when_allowed(
    gateway: GatewayFactory, keyring: Path, make_bus: MakeBus
) -> None:
    bus = await make_bus("mic")
    async with gateway() as gw:  # default: no media
        bob = reader(gw, client(keyring, "bob"), topics.AUDIO_MIC)
        try:
            assert await publish_until_received(bus, bob, NOTHING_WITHIN_S, audio=True) is None
        finally:
            bob.close()
    async with gateway(media=[topics.AUDIO_MIC]) as gw:
        bob = reader(gw, client(keyring, "bob"), topics.AUDIO_MIC)
        try:
            frames = await publish_until_received(bus, bob, 5.0, audio=True)
        finally:
            bob.close()
    assert frames is not None and frames[0] == b"audio.mic" and frames[2] == b"\x01\x02" * 480


async def test_writer_commands_reach_the_bus(
    gateway: GatewayFactory, keyring: Path, make_bus: MakeBus
) -> None:
    session = await make_bus("session", topics.INPUT_TEXT, topics.CONTROL_SESSION)
    monitor = await make_bus("supervisor", "metrics.gateway")
    async with gateway() as gw:
        alice = RemoteCommander(gw.command_endpoint, client(keyring, "alice"))
        try:
            await alice.send(topics.INPUT_TEXT, TextInput(text="hello from afar"))
            await alice.send(topics.CONTROL_SESSION, SessionControl(action="end"))
            with pytest.raises(BusError, match="not writable"):
                await alice.send(topics.CONTROL_SHUTDOWN, Shutdown(reason="nope"))
        finally:
            alice.close()
        got = []
        async with asyncio.timeout(5):
            while len(got) < 2:
                got.append(await session.recv())
        assert got[0].msg == TextInput(text="hello from afar") and got[0].sender == "gateway"
        assert got[1].msg == SessionControl(action="end")
        assert gw.stats.commands == 2 and gw.stats.refused_commands == 1
        async with asyncio.timeout(5):  # and it says so on metrics.gateway
            while True:
                m = (await monitor.recv()).msg
                assert isinstance(m, Metrics)
                if m.values["commands"] == 2:
                    break
        assert m.values["refused_commands"] == 1 and m.service == "gateway"


async def test_reader_only_and_unknown_keys_cannot_publish(
    gateway: GatewayFactory, keyring: Path, make_bus: MakeBus
) -> None:
    session = await make_bus("session", topics.INPUT_TEXT)
    async with gateway() as gw:
        for name in ("bob", "mallory"):
            c = RemoteCommander(gw.command_endpoint, client(keyring, name))
            try:
                with pytest.raises(BusError, match="no answer"):
                    await c.send(topics.INPUT_TEXT, TextInput(text=name), timeout=1.0)
            finally:
                c.close()
        assert gw.writers.refused >= 2 and gw.stats.commands == 0
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await session.recv()


def test_check_command_refuses_what_it_must() -> None:
    def body(msg: object) -> bytes:
        return encode_envelope(Envelope("x", 1, 0, 0, msg))  # type: ignore[arg-type]

    allowed = [topics.INPUT_TEXT, topics.CONTROL_SESSION]
    topic, msg, payload = check_command([b"input.text", body(TextInput(text="hi"))], allowed)
    assert (topic, msg, payload) == ("input.text", TextInput(text="hi"), [])
    cases = {
        "need \\[topic": [b"input.text"],
        "not writable": [b"control.shutdown", body(Shutdown())],
        "carries TextInput": [b"input.text", body(Shutdown())],
        "bad message body": [b"input.text", b"\xc1garbage"],
        "frames, at most": [b"input.text", body(TextInput(text="a")), *([b""] * 10)],
    }
    for reason, frames in cases.items():
        with pytest.raises(CommandRefused, match=reason):
            check_command(frames, allowed)


def test_keyring_reloads_and_counts(short_tmp: Path) -> None:
    generate(short_tmp / "c", "carol")
    ring = KeyRing("reader", short_tmp / "readers")
    carol = client_public(short_tmp / "c" / "carol.key")
    assert not ring.check(carol, now=0.0) and ring.refused == 1
    (short_tmp / "readers").mkdir()
    shutil.copy(short_tmp / "c" / "carol.key", short_tmp / "readers" / "carol.key")
    assert ring.check(carol, now=1.0) and ring.name_of(carol) == "carol"
    for i in range(100):
        ring.check(b"X" * 40, now=2.0 + i)
    assert ring.refused == 101


def client_public(path: Path) -> bytes:
    import zmq.auth

    public, _ = zmq.auth.load_certificate(path)
    return public


def test_keys_generate_and_list_commands(short_tmp: Path) -> None:
    d = short_tmp / "k"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent", "keys", *args, "--dir", str(d)],
            cwd=ROOT, capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    r = cli("generate", "server")
    assert r.returncode == 0, r.stderr
    assert (d / "server.key").exists() and (d / "server.key_secret").stat().st_mode & 0o077 == 0
    assert cli("generate", "server").returncode == 2  # never overwrites a pair
    (d / "readers").mkdir()
    generate(short_tmp / "c", "dave")
    shutil.copy(short_tmp / "c" / "dave.key", d / "readers")
    r = cli("list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(x.startswith("own") and "server" in x and "(+secret)" in x for x in lines)
    assert any(x.startswith("reader") and "dave" in x for x in lines)
    assert [e.name for e in list_keys(d)] == ["server", "dave"]


def test_gateway_without_server_key_is_a_config_error(short_tmp: Path) -> None:
    from agent.errors import ConfigError

    settings = Settings(remote=RemoteSettings(keys_dir=str(short_tmp / "none")))
    with pytest.raises(ConfigError, match="keys generate server"):
        Gateway(settings)
    assert msgspec.structs.asdict(settings.remote)["media"] == []
    keys = short_tmp / "k"
    generate(keys, "server")
    typo = RemoteSettings(keys_dir=str(keys), write_topics=["input.txt"])
    with pytest.raises(ConfigError, match="remote.write_topics"):
        Gateway(Settings(remote=typo))
