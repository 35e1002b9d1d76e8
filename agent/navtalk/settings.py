"""Settings of the NavTalk link, the session service and the emulator.

The NavTalk license is a secret: it is read only from the environment variable
``NAVTALK_LICENSE`` (:func:`read_license`), never from a file, and never logged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec

from agent.errors import ConfigError

LICENSE_ENV = "NAVTALK_LICENSE"

PosInt = Annotated[int, msgspec.Meta(gt=0)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0.0)]
PosFloat = Annotated[float, msgspec.Meta(gt=0.0)]
Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class NavTalkSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: str = "wss://transfer.navtalk.ai/wss/v2/realtime-chat"  # base URL, without query
    name: str = ""  # character name, e.g. "navtalk.Leo" (query `name`)
    avatar_id: str = ""  # avatar id (query `avatarId`); wins over `name` when both are set
    model: str = ""  # optional query `model` (e.g. "gpt-realtime"); empty = not sent
    # The license is NOT a setting: it comes from the environment variable NAVTALK_LICENSE.


class SessionSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True  # run the session service at all
    autostart: bool = True  # false drops the "always" start trigger (the older switch)
    # --- kiosk policy ---------------------------------------------------------------------
    # when a visit (one guest's conversation) starts and ends; see docs/kiosk.md
    # always = at service start; voice = local VAD; button = control.session start;
    # face = the camera service sees a face ([camera] enabled = true)
    start_triggers: tuple[Literal["always", "voice", "button", "face"], ...] = (
        "always",
        "button",
    )
    idle_timeout_s: NonNegFloat = 0.0  # no guest or avatar speech this long ends it (0 = off)
    max_session_s: NonNegFloat = 0.0  # a visit ends this long after its start (0 = off)
    # the text turn that asks the model for a goodbye before an idle or maximum-length end
    # ("" = close without one)
    wrapup_text: str = "The visit is over: say a short, polite goodbye to the guest."
    wrapup_max_s: PosFloat = 15.0  # the wrap-up or last words may take this long, then close
    voice_cooldown_s: NonNegFloat = 0.5  # voice onsets ignored this long after a visit ended
    # no face this long ends a visit (with the "face" trigger; 0 = off). The camera then
    # keeps looking during visits too, not only while idle.
    face_gone_s: NonNegFloat = 0.0
    budget_daily_minutes: NonNegFloat = 0.0  # minutes of session a day, then none (0 = no cap)
    budget_monthly_minutes: NonNegFloat = 0.0  # minutes of session a month, then none (0 = no cap)
    budget_warn_fraction: Fraction = 0.8  # log a warning once this much of a budget is used
    budget_path: str = "~/.local/share/navtalk-agent/budget.json"  # today's use, kept on restart
    # --- history -----------------------------------------------------------------------------
    history_enabled: bool = True  # store transcripts on disk (false = store nothing)
    history_replay_count: NonNegInt = 3  # this visit's last N user turns resent on a reconnect
    history_db_path: str = "~/.local/share/navtalk-agent/history.sqlite3"  # SQLite file
    history_max_age_s: NonNegFloat = 30 * 24 * 3600.0  # rows older than this are deleted (0=keep)
    history_max_rows: NonNegInt = 10_000  # keep at most this many rows (0 = no limit)
    # --- tools -------------------------------------------------------------------------------
    declare_tools: bool = True  # send realtime.input_function_call with the tool catalog
    catalog_wait_ms: NonNegInt = 1000  # wait this long for tool.catalog before opening the socket
    tool_timeout_ms: PosInt = 10_000  # a tool call with no result by then gets an error output
    send_session_update: bool = False  # also send the OpenAI-style session.update (hotel client)
    # --- audio -------------------------------------------------------------------------------
    audio_only: bool = False  # no WebRTC media: publish audio.delta on navtalk.audio.delta
    preroll_ms: NonNegInt = 500  # ask the mic for this much audio on session start (0 = off)
    max_audio_backlog_ms: PosInt = 4000  # mic audio held until ready (covers connect time)
    # --- connection --------------------------------------------------------------------------
    connect_timeout_s: PosFloat = 10.0  # WebSocket opening handshake timeout
    handshake_timeout_s: PosFloat = 10.0  # socket open -> realtime.session.updated, else retry
    ping_interval_s: NonNegFloat = 20.0  # WebSocket keepalive ping (0 = off)
    reconnect: bool = True  # reconnect after transient failures
    reconnect_initial_s: PosFloat = 0.5  # first backoff delay
    reconnect_max_s: PosFloat = 30.0  # backoff ceiling
    reconnect_factor: Annotated[float, msgspec.Meta(ge=1.0)] = 2.0  # growth per attempt
    reconnect_jitter: Fraction = 0.25  # +/- this fraction of each delay, random
    reconnect_max_attempts: NonNegInt = 0  # consecutive failed attempts before giving up (0 = ∞)
    state_interval_s: PosFloat = 5.0  # session.state is republished this often


class EmulatorSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    embedded: bool = False  # the supervisor runs the emulator and points the session at it
    host: str = "127.0.0.1"  # listen address
    port: Port = 8765  # listen port (0 = any free port)
    tls: bool = False  # wss:// with a self-signed certificate generated at start
    script_path: str = ""  # rules file (TOML); empty = the built-in default_script.toml
    webrtc: bool = True  # offer WebRTC (avatar video + voice) after connected.success
    send_audio_deltas: bool = True  # also send realtime.response.audio.delta
    video_width: PosInt = 512  # avatar video width (pixels)
    video_height: PosInt = 512  # avatar video height (pixels)
    video_fps: Annotated[int, msgspec.Meta(gt=0, le=60)] = 25  # avatar video frame rate
    tts_voice: str = "en-us"  # espeak-ng voice
    tts_words_per_minute: Annotated[int, msgspec.Meta(ge=80, le=450)] = 160  # espeak-ng speed
    vad_mode: Annotated[int, msgspec.Meta(ge=0, le=3)] = 3  # webrtcvad aggressiveness
    vad_start_ms: PosInt = 90  # voiced audio needed before speech_started
    vad_end_ms: PosInt = 600  # silence needed before speech_stopped
    pace: PosFloat = 1.0  # audio.delta pacing: 1.0 = real time, larger = faster
    recognizer: Literal["speech", "order"] = "speech"  # speech (pocketsphinx, `hears`) / order
    strict_fail: bool = True  # a conformance violation closes the socket, fails the run
    conformance_log_path: str = ""  # append each violation as a JSON line here ("" = off)
    offer_deadline_s: PosFloat = 3.0  # a server WebRTC offer unanswered this long = violation
    # --- fault injection (also triggered by license values, see agent.emulator.faults) ---------
    reject_license: bool = False  # answer every connection with conversation.connected.fail
    insufficient_balance: bool = False  # send insufficient_balance then close
    duplicate_name_warning: bool = False  # send conversation.connected.warning after success
    drop_after_s: NonNegFloat = 0.0  # drop the socket (no close frame) after N s (0 = never)
    malformed_frames: bool = False  # interleave malformed and unknown frames


def read_license(environ: Mapping[str, str] | None = None) -> str:
    """The NavTalk license, from ``NAVTALK_LICENSE`` only. Raises ConfigError when unset."""
    env = os.environ if environ is None else environ
    value = env.get(LICENSE_ENV, "").strip()
    if not value:
        raise ConfigError(
            f"{LICENSE_ENV} is not set: the NavTalk license comes from the environment only"
        )
    return value
