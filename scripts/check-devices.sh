#!/usr/bin/env bash
# Check that the virtual devices answer, under scripts/with-virtual-devices.sh:
#   scripts/with-virtual-devices.sh scripts/check-devices.sh
# PulseAudio's null sink "vsink" at $PULSE_SERVER, and the X display $DISPLAY.
# Exit 1 with one line saying what is missing. .ci/run runs it before the tests.
set -euo pipefail
fail() { echo "check-devices: $*" >&2; exit 1; }
[ -n "${PULSE_SERVER:-}" ] || fail "PULSE_SERVER is not set (run under scripts/with-virtual-devices.sh)"
sinks="$(timeout 10 pactl list short sinks 2>&1)" || fail "PulseAudio at $PULSE_SERVER does not answer: $sinks"
grep -q $'\tvsink\t' <<<"$sinks" || fail "PulseAudio at $PULSE_SERVER has no sink vsink"
[ -n "${DISPLAY:-}" ] || fail "DISPLAY is not set"
timeout 10 xdpyinfo >/dev/null 2>&1 || fail "no X display answers at $DISPLAY"
echo "check-devices: PulseAudio vsink at $PULSE_SERVER, X display $DISPLAY"
