"""Echo cancellers on the offline room (agent/audio/room.py): ERLE, false barge-ins, double talk.

For each canceller (``mic.aec`` = webrtc, speex) and ``echo_mode = none`` as the positive control,
in every room of ``ROOMS``, through the mic's real core (reference buffer, canceller, VAD):

- far end only (``FAR_S`` of avatar speech): ERLE after 2 s (of the canceller's output, also
  where the mic published silence before convergence), VAD onsets (false barge-ins),
  the tracked delay against the room's, the canceller's CPU per second of audio;
- double talk (``TRIALS`` per room, the guest starts 5-7 s into the avatar's speech, once the
  canceller has converged): the guest's
  onset detected (first VAD onset within 500 ms of it, none before it) and its latency (from
  the guest's first sample to the frame where the onset was decided); the near end kept:
  correlation of the cleaned signal with the clean guest, and with the guest alone through
  the same canceller (what double talk costs, apart from the canceller's own filtering).

``python -m bench.bench_aec [far_s] [trials]``; JSON in bench/results/aec.json.
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

import numpy as np

from agent.audio import room as R
from agent.audio.aec import AlignedCanceller
from agent.audio.settings import MicSettings
from bench.common import percentiles, save, table

FAR_S = 24.0
TRIALS = 2
DOUBLE_S = 10.0
MODES = (("none", "webrtc"), ("software_aec", "webrtc"), ("software_aec", "speex"))


def _settings(mode: str, aec: str) -> MicSettings:
    return MicSettings(backend="null", echo_mode=mode, aec=aec)  # type: ignore[arg-type]


def far_end(room: R.Room, mode: str, aec: str, seconds: float, seed: int) -> dict[str, Any]:
    scene = R.render(room, R.avatar_talk(seconds, seed=seed), seed=seed)
    run = R.play(scene, _settings(mode, aec))
    c = run.canceller
    # the tracked delay includes the reference's lookahead: take it out to compare
    est = c.estimator.delay_ms if isinstance(c, AlignedCanceller) else None
    est = None if est is None or not isinstance(c, AlignedCanceller) else est - c.lookahead_ms
    return {
        "erle_db": round(R.erle_db(scene.echo, run.unmuted), 1),
        "false_onsets": len(run.onsets_s()),
        "false_onsets_after_2s": sum(t >= 2.0 for t in run.onsets_s()),
        "muted_s": round(getattr(run.canceller, "muted_frames", 0) * 0.02, 2),
        "delay_true_ms": round(scene.echo_delay_ms, 1),
        "delay_est_ms": None if est is None else round(est, 1),
        "cpu_pct": round(100 * run.canceller_cpu_s / seconds, 2),
        "frame_ms_p99": round(float(np.percentile(run.frame_cpu_ms, 99)), 3)
        if run.frame_cpu_ms
        else 0.0,
    }


def double_talk(room: R.Room, mode: str, aec: str, trial: int) -> dict[str, Any]:
    rng = np.random.default_rng(1000 + trial)
    guest = R.speech(R.GUEST_LINES[trial % len(R.GUEST_LINES)], R.GUEST_VOICE)
    at = float(rng.uniform(5.0, 7.0))
    far = R.avatar_talk(DOUBLE_S, seed=100 + trial)
    scene = R.render(room, far, guest, guest_at_s=at, seed=trial)
    run = R.play(scene, _settings(mode, aec))
    alone = R.render(room, np.zeros_like(far), guest, guest_at_s=at, seed=trial)
    alone_run = R.play(alone, _settings(mode, aec))
    start = scene.guest_start / R.RATE
    onsets = run.onsets_s()
    decided = run.decided_s()
    early = [t for t in onsets if t < start - 0.05]
    hit = [i for i, t in enumerate(onsets) if start - 0.05 <= t <= start + 0.5]
    corr, _ = R.near_correlation(scene, run.cleaned)
    a, b = scene.guest_start, scene.guest_end
    kept = float(np.corrcoef(alone_run.cleaned[a:b], run.cleaned[a:b])[0, 1])
    return {
        "detected": bool(hit) and not early,
        "false_before": len(early),
        "latency_ms": round((decided[hit[0]] - start) * 1000, 1) if hit else None,
        "corr_clean_guest": round(corr, 3),
        "corr_guest_through_canceller": round(kept, 3),
    }


def main() -> int:
    far_s = float(sys.argv[1]) if len(sys.argv) > 1 else FAR_S
    trials = int(sys.argv[2]) if len(sys.argv) > 2 else TRIALS
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for mode, aec in MODES:
        name = aec if mode == "software_aec" else "none"
        lat: list[float] = []
        det = 0
        n = 0
        per_room: list[dict[str, Any]] = []
        for i, room in enumerate(R.ROOMS):
            f = far_end(room, mode, aec, far_s, seed=i)
            dts = [double_talk(room, mode, aec, i * trials + k) for k in range(trials)]
            n += len(dts)
            det += sum(d["detected"] for d in dts)
            lat += [d["latency_ms"] for d in dts if d["latency_ms"] is not None]
            row = {
                "canceller": name,
                "room": room.name,
                "rt60_s": room.rt60_s,
                "gain_db": room.echo_gain_db,
                **f,
                "dt_detected": f"{sum(d['detected'] for d in dts)}/{len(dts)}",
                "corr_clean": min(d["corr_clean_guest"] for d in dts),
                "corr_kept": min(d["corr_guest_through_canceller"] for d in dts),
                "double_talk": dts,
            }
            rows.append(row)
            per_room.append(row)
            print(f"  {name:6s} {room.name:8s} done", flush=True)
        summary[name] = {
            "erle_db_median": statistics.median(r["erle_db"] for r in per_room),
            "erle_db_worst": min(r["erle_db"] for r in per_room),
            "false_onsets": sum(r["false_onsets"] for r in per_room),
            "false_onsets_after_2s": sum(r["false_onsets_after_2s"] for r in per_room),
            "avatar_speech_s": far_s * len(per_room),
            "cpu_pct_max": max(r["cpu_pct"] for r in per_room),
            "frame_ms_p99_max": max(r["frame_ms_p99"] for r in per_room),
            "double_talk_detected": f"{det}/{n}",
            "onset_latency": percentiles(lat),
            "corr_clean_guest_min": min(r["corr_clean"] for r in per_room),
            "corr_guest_through_canceller_min": min(r["corr_kept"] for r in per_room),
        }
    cols = (
        "canceller room rt60_s gain_db erle_db false_onsets false_onsets_after_2s muted_s "
        "delay_true_ms delay_est_ms cpu_pct frame_ms_p99 dt_detected corr_clean corr_kept"
    ).split()
    print(
        table(f"echo cancellers on the offline room ({far_s:.0f} s far end per room)", rows, cols)
    )
    for name, s in summary.items():
        print(f"{name}: {s}")
    path = save(
        "aec", {"far_s": far_s, "trials_per_room": trials, "summary": summary, "rows": rows}
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
