"""agent/apps/preflight.py: what is checked before start, each problem named in one line."""

from __future__ import annotations

import socket
from pathlib import Path

from agent.apps.preflight import problems, services_to_run
from agent.config import loads

LICENSED = {"NAVTALK_LICENSE": "x", "DISPLAY": ":0"}


def _problems(text: str, services: list[str], env: dict[str, str] | None = None) -> list[str]:
    return problems(loads(text), services, environ=LICENSED if env is None else env, devices=False)


def test_a_good_profile_has_no_problem(tmp_path: Path) -> None:
    wav = tmp_path / "guest.wav"
    import wave

    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24_000)
        w.writeframes(bytes(4800))
    text = f'[mic]\nbackend = "file"\nwav_path = "{wav}"\n[display]\nbackend = "null"\n'
    assert _problems(text, ["session", "mic", "speaker", "display", "tools", "supervisor"]) == []


def test_the_embedded_emulator_needs_no_license() -> None:
    assert _problems("[emulator]\nembedded = true\n", ["session", "emulator"], env={}) == []
    assert "NAVTALK_LICENSE is not set" in _problems("", ["session"], env={})[0]


def test_files_that_are_not_what_they_should_be(tmp_path: Path) -> None:
    not_wav = tmp_path / "x.wav"
    not_wav.write_text("hello")
    got = _problems(f'[mic]\nbackend = "file"\nwav_path = "{not_wav}"\n', ["mic"])
    assert len(got) == 1 and "not a WAV file" in got[0]
    got = _problems('[camera]\nbackend = "image"\npath = "/nonexistent.png"\n', ["tools"])
    assert got == ["camera.path = '/nonexistent.png': no such file"]
    got = _problems('[mic]\necho_mode = "software_aec"\naec_factory = "nope_aec_xyz:make"\n',
                    ["mic"])  # fmt: skip
    assert len(got) == 1 and "mic.aec_factory = 'nope_aec_xyz:make'" in got[0]


def test_ports_valid_and_free() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        got = _problems(f"[supervisor]\nmetrics_port = {port}\n", ["supervisor"])
        assert got == [
            f"supervisor.metrics_port = {port}: cannot serve metrics on 127.0.0.1:{port} "
            "(in use); set a free port, or 0 for none"
        ]
    got = _problems(
        '[bus.control]\npublish = "tcp://127.0.0.1:99999"\nsubscribe = "tcp://127.0.0.1:5556"\n'
        "hwm = 10\n",
        ["supervisor"],
    )
    assert got == ["bus.control.publish = 'tcp://127.0.0.1:99999': the port must be 1..65535"]
    got = _problems('[navtalk]\nurl = "wss://example.invalid:0/x"\n', ["session"])
    assert got == ["navtalk.url = 'wss://example.invalid:0/x': the port must be 1..65535"]


def test_only_the_services_that_run_are_checked() -> None:
    s = loads("[emulator]\nembedded = true\n[mic]\nenabled = false\n")
    assert services_to_run(s) == ["emulator", "tools", "speaker", "display", "session"]
    assert services_to_run(s, only=["session", "mic"]) == ["emulator", "session"]
    text = '[mic]\nenabled = false\nbackend = "file"\n'  # no wav_path: not a problem, off
    assert _problems(text, services_to_run(loads(text))) == []


def test_the_face_trigger_needs_the_camera_service() -> None:
    got = _problems('[session]\nstart_triggers = ["face"]\n', ["session"])
    assert got == ['session.start_triggers has "face" but camera.enabled = false']
    on = '[session]\nstart_triggers = ["face"]\n[camera]\nenabled = true\n'
    assert _problems(on, ["session"]) == []
    assert _problems(on, ["camera"]) == [
        'camera.enabled = true needs camera.backend = "opencv" or "image"'
    ]
    assert _problems(on + 'backend = "opencv"\n', ["session", "camera"]) == []
