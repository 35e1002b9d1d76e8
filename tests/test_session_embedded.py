"""The session's first connect to the embedded emulator waits for it to listen.

The supervisor starts the emulator and the session together; the session used to connect
before the emulator's port was open, was refused, logged a lost session and backed off. Here
the emulator's port is taken (bound, not listening: a connect is refused) while the session
starts, and the real emulator is started on it only once the session says it is connecting.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agent.config import BusSettings, default_settings
from agent.emulator.server import Emulator
from agent.messages import SessionPhase, SessionState
from agent.navtalk.settings import EmulatorSettings, SessionSettings
from services import session as session_service
from services.session_parts.embedded import wait_listening
from tests.conftest import running_service
from tests.test_session_e2e import Recorder, is_state

LICENSE = "Lic-SECRET-embedded-77"


async def test_first_connect_waits_for_the_embedded_emulator(
    bus_settings: BusSettings,
    make_bus: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    held = socket.socket()
    held.bind(("127.0.0.1", 0))  # reserved, not listening: a connect now is refused
    port = held.getsockname()[1]
    emu_settings = EmulatorSettings(embedded=True, host="127.0.0.1", port=port, recognizer="order")
    settings = msgspec.structs.replace(
        default_settings(),
        bus=bus_settings,
        emulator=emu_settings,
        session=SessionSettings(
            history_db_path=str(tmp_path / "history.sqlite3"),
            reconnect_initial_s=0.05,
            catalog_wait_ms=0,
            preroll_ms=0,
        ),
    )
    rec = Recorder(await make_bus("external", "session."))
    emulator: Emulator | None = None
    try:
        async with running_service("session", session_service.run, settings, license=LICENSE):
            await rec.wait_for(is_state(SessionPhase.CONNECTING))
            held.close()
            emulator = Emulator(msgspec.structs.replace(emu_settings, embedded=False))
            await emulator.start()
            await rec.wait_for(is_state(SessionPhase.READY))
            assert len(emulator.sessions) == 1
    finally:
        held.close()
        await rec.stop()
        if emulator is not None:
            await emulator.close()
    phases = [d.msg.phase for d in rec.seen if isinstance(d.msg, SessionState)]
    before_ready = phases[: phases.index(SessionPhase.READY)]
    assert SessionPhase.CLOSED not in before_ready and SessionPhase.FAILED not in before_ready
    session_logs = [r for r in caplog.records if r.name.startswith("services.session")]
    assert not [r for r in session_logs if r.levelno >= logging.WARNING], [
        r.getMessage() for r in session_logs if r.levelno >= logging.WARNING
    ]
    texts = " ".join(r.getMessage() for r in session_logs)
    assert "refused" not in texts and "cannot connect" not in texts


async def test_wait_listening_gives_up_on_a_closed_port() -> None:
    held = socket.socket()
    held.bind(("127.0.0.1", 0))  # never listens
    try:
        assert not await wait_listening("127.0.0.1", held.getsockname()[1], timeout_s=0.2)
    finally:
        held.close()


async def test_wait_listening_sees_a_listening_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        assert await wait_listening("127.0.0.1", server.getsockname()[1], timeout_s=5)
