"""Settings of the mic and speaker services (``[mic]`` and ``[speaker]`` in the TOML profiles).

Audio on the bus is always 24 kHz mono PCM16; the device backends convert from and to the
device's own rate and channel count (soxr, streaming).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = ["EchoMode", "MicSettings", "SpeakerSettings"]

PosInt = Annotated[int, msgspec.Meta(gt=0)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
FrameMs = Literal[10, 20, 30, 40, 60]
VadFrameMs = Literal[10, 20, 30]
SampleRate = Annotated[int, msgspec.Meta(ge=0, le=384_000)]
Channels = Annotated[int, msgspec.Meta(ge=0, le=32)]
# PortAudio latency: "low", "high" or seconds (float).
Latency = Literal["low", "high"] | Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
EchoMode = Literal["none", "half_duplex", "software_aec"]


class MicSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True  # run the mic service at all
    # --- device ------------------------------------------------------------------------------
    # sounddevice: a real input device; file: a WAV played in real time (demo "guest");
    # null: silence in real time.
    backend: Literal["sounddevice", "file", "null"] = "sounddevice"
    # Input device: index ("3") or case-insensitive name substring ("ReSpeaker"); "" = default.
    device: str = ""
    sample_rate_hz: SampleRate = (
        0  # device rate (0 = 24 kHz if the device takes it, else its default)
    )
    channels: Channels = 0  # channels opened (0 = mono, or stereo if the device refuses mono)
    channel: Annotated[int, msgspec.Meta(ge=-1, le=31)] = -1  # channel used (-1 = average all)
    latency: Latency = "low"  # PortAudio input latency
    # Device callback block (ms); 0 = whatever the host delivers. 5 ms: each 20 ms frame is
    # complete at a callback (measured on PulseAudio: frame age p99 20.6 ms vs 25.5 ms with 0).
    block_ms: Annotated[int, msgspec.Meta(ge=0, le=100)] = 5
    wav_path: str = ""  # "file" backend: the WAV to play (PCM16, any rate/channels)
    loop: bool = False  # "file" backend: start again at the end
    pad_silence: bool = True  # "file" backend: silence after the end (else the input ends)
    queue_ms: PosInt = 2000  # captured audio held for a slow reader; oldest dropped beyond
    # --- framing -----------------------------------------------------------------------------
    frame_ms: FrameMs = 20  # audio.mic frame length (24 kHz mono PCM16)
    # --- local VAD (webrtcvad on 16 kHz) -------------------------------------------------------
    vad_enabled: bool = True  # publish vad.state
    vad_aggressiveness: Annotated[int, msgspec.Meta(ge=0, le=3)] = 2  # 0 lenient .. 3 strict
    vad_frame_ms: VadFrameMs = 30  # webrtcvad frame length
    vad_start_ms: NonNegInt = 60  # speech needed in a row before "speaking" (start hangover)
    vad_stop_ms: NonNegInt = 300  # non-speech needed in a row before "silent" (stop hangover)
    # --- pre-roll ----------------------------------------------------------------------------
    preroll_ms: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 1000  # recent audio kept
    # --- echo --------------------------------------------------------------------------------
    # none: the mic array cancels echo itself; half_duplex: while the speaker plays, frames are
    # replaced by silence and VAD is gated; software_aec: frames go through the echo canceller
    # `aec` (or `aec_factory`), barge-in by voice while the avatar speaks (docs/aec.md).
    echo_mode: EchoMode = "none"
    echo_tail_ms: NonNegInt = 200  # half_duplex: keep gating this long after the speaker stops
    # software_aec: "module:callable" returning an agent.audio.echo.EchoCanceller.
    aec_factory: str = ""
    # software_aec: the built-in canceller when aec_factory is "" (docs/aec.md): speex = SpeexDSP
    # (libspeexdsp1), keeps the guest in double talk; webrtc = WebRTC AEC3 + noise suppression
    # (the livekit wheel: pip install navtalk-agent[webrtc]), deeper echo cut, weaker guest.
    aec: Literal["speex", "webrtc"] = "speex"
    aec_reference_ms: PosInt = 1000  # software_aec: played reference kept for alignment


class SpeakerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True  # run the speaker service at all
    # --- device ------------------------------------------------------------------------------
    # sounddevice: a real output device; file: write what is played to a WAV in real time;
    # null: discard in real time.
    backend: Literal["sounddevice", "file", "null"] = "sounddevice"
    # Output device: index ("3") or case-insensitive name substring ("USB"); "" = default.
    device: str = ""
    sample_rate_hz: SampleRate = (
        0  # device rate (0 = 24 kHz if the device takes it, else its default)
    )
    channels: Channels = 0  # channels opened (0 = mono, or stereo if the device refuses mono)
    latency: Latency = "low"  # PortAudio output latency (what is queued past the callback)
    # Device callback period: barge-in is silent from the next period on. 5 ms: barge-in to
    # silence at the sink p99 ~20 ms on PulseAudio (10 ms: ~34 ms with the output latency).
    period_ms: Literal[5, 10, 20] = 5
    wav_path: str = "out/speaker.wav"  # "file" backend: the WAV written (24 kHz mono PCM16)
    record_path: str = ""  # also record what was played to this WAV (24 kHz mono); "" = off
    # --- source ------------------------------------------------------------------------------
    # Play only navtalk.audio.delta (24 kHz PCM from the WebSocket), never audio.out (the
    # WebRTC voice forwarded by the display); for sessions without video. Otherwise both are
    # heard and each response is played from one of them: the deltas while WebRTC is not live.
    audio_only: bool = False
    # The WebRTC voice is not live when no audio.out frame came for this long (ms): the
    # speaker then plays the deltas (a response WebRTC was playing continues from them).
    voice_stall_ms: PosInt = 400
    # --- jitter buffer -----------------------------------------------------------------------
    jitter_target_ms: NonNegInt = 60  # buffered before playback starts (and after an underrun)
    jitter_max_ms: PosInt = 2000  # beyond this the oldest audio is dropped (overrun)
    # --- behaviour ---------------------------------------------------------------------------
    volume: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 1.0  # start volume (control.volume)
    barge_in_hold_ms: NonNegInt = 250  # after a barge-in, audio arriving this long is dropped
    idle_after_ms: NonNegInt = 100  # speaker.state: idle this long after the last audible sample
    state_interval_ms: PosInt = 1000  # speaker.state is also re-published this often
    publish_played: bool = True  # publish audio.played (the echo reference for the mic)
