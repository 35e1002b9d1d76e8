"""Audio helpers shared by the mic and speaker: resampling, VAD turn logic, jitter buffer."""
