#!/usr/bin/env bash
# Run a command with the virtual devices a machine without sound card or screen needs:
#   - a private PulseAudio null sink (scripts/virtual-audio.sh) + the ALSA file devices,
#   - an Xvfb screen (1280x720) with the openbox window manager (fullscreen needs one).
# Both are started only when missing and stopped again afterwards if we started them.
#
#   scripts/with-virtual-devices.sh COMMAND [ARGS...]
#
# Set NAVTALK_NO_VIRTUAL_DISPLAY=1 to keep an existing $DISPLAY (a real screen).
# A device that does not start is an error (exit 1, COMMAND not run), never a silent skip;
# the command runs with NAVTALK_REQUIRE_DEVICES=1, so a test that needs a device fails
# instead of skipping (tests/conftest.py).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

started_audio=0
if ! "$here/scripts/virtual-audio.sh" status 2>/dev/null; then started_audio=1; fi
# Not `eval "$(... start)"`: the status of a command substitution inside eval is lost, so a
# PulseAudio that did not start would go unnoticed and the audio tests would only skip.
audio_env="$("$here/scripts/virtual-audio.sh" start)" || {
  echo "with-virtual-devices: the virtual audio devices did not start (see above)" >&2
  exit 1
}
eval "$audio_env"

xvfb_pid=""
wm_pid=""
if [ -z "${NAVTALK_NO_VIRTUAL_DISPLAY:-}" ] || [ -z "${DISPLAY:-}" ]; then
  command -v Xvfb >/dev/null || { echo "with-virtual-devices: Xvfb is not installed" >&2; exit 1; }
  n=90
  while [ -e "/tmp/.X11-unix/X$n" ] || [ -e "/tmp/.X$n-lock" ]; do n=$((n + 1)); done
  Xvfb ":$n" -screen 0 1280x720x24 -nolisten tcp >/dev/null 2>&1 &
  xvfb_pid=$!
  for _ in $(seq 100); do [ -S "/tmp/.X11-unix/X$n" ] && break; sleep 0.05; done
  [ -S "/tmp/.X11-unix/X$n" ] || { echo "with-virtual-devices: Xvfb :$n did not start" >&2; exit 1; }
  export DISPLAY=":$n"
  if command -v openbox >/dev/null; then
    openbox >/dev/null 2>&1 &
    wm_pid=$!
  fi
fi

cleanup() {
  [ -n "$wm_pid" ] && kill "$wm_pid" 2>/dev/null || true
  [ -n "$xvfb_pid" ] && kill "$xvfb_pid" 2>/dev/null || true
  if [ "$started_audio" = 1 ]; then "$here/scripts/virtual-audio.sh" stop || true; fi
}
trap cleanup EXIT
export NAVTALK_REQUIRE_DEVICES="${NAVTALK_REQUIRE_DEVICES:-1}"
"$@"
