#!/usr/bin/env bash
# Virtual audio devices for tests, CI and the bench, on machines with no sound card.
#
#   scripts/virtual-audio.sh start    start (or reuse) a private PulseAudio server with a null
#                                     sink "vsink" (the speaker) whose monitor is the microphone;
#                                     prints the environment to export
#   scripts/virtual-audio.sh env      print the environment only
#   scripts/virtual-audio.sh status   exit 0 when the server answers and vsink exists
#   scripts/virtual-audio.sh stop     stop the private server (only ours; idempotent)
#
# Typical use:   eval "$(scripts/virtual-audio.sh start)"
#
# The server is private: its socket lives in $NAVTALK_VAUDIO_DIR (default
# /tmp/navtalk-vaudio-<uid>), so it never touches a user's own PulseAudio.
# Recipe: shared/recipes/virtual-audio.md (option B). Notes:
#  - norewinds=1 on the null sink, or the sink renders 2 s ahead and everything stalls;
#  - --exit-idle-time=-1, or the daemon exits when idle;
#  - a root client never autospawns a server, so clients need PULSE_SERVER.
# The ALSA file devices vplay/vrec (option A, no daemon) need only ALSA_CONFIG_PATH, also printed.
set -euo pipefail

cmd="${1:-start}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${NAVTALK_VAUDIO_DIR:-/tmp/navtalk-vaudio-$(id -u)}"
server="unix:$dir/pulse/native"
alsa_conf="/usr/share/alsa/alsa.conf:$here/config/alsa/virtual-audio.conf"

print_env() {
  echo "export PULSE_SERVER=$server"
  echo "export ALSA_CONFIG_PATH=$alsa_conf"
}

is_up() {
  PULSE_SERVER="$server" timeout 5 pactl list short sinks 2>/dev/null | grep -q $'\tvsink\t'
}

case "$cmd" in
  start)
    command -v pulseaudio >/dev/null || {
      echo "virtual-audio: pulseaudio is not installed (scripts/install-system-deps.sh)" >&2
      exit 1
    }
    if ! is_up; then
      mkdir -p "$dir" && chmod 700 "$dir"
      # A stale server of ours (sink missing, socket dead): stop it first.
      XDG_RUNTIME_DIR="$dir" pulseaudio --kill 2>/dev/null || true
      XDG_RUNTIME_DIR="$dir" pulseaudio --daemonize=yes --exit-idle-time=-1 --disallow-exit -n \
        --log-target=file:"$dir/pulse.log" \
        --load=module-native-protocol-unix \
        --load="module-null-sink sink_name=vsink rate=48000 norewinds=1 sink_properties=device.description=VirtualSpeaker" \
        2>>"$dir/pulse.stderr" || {
        echo "virtual-audio: pulseaudio failed to start (exit $?):" >&2
        tail -n 5 "$dir/pulse.stderr" >&2 || true
        exit 1
      }
      for _ in $(seq 50); do is_up && break; sleep 0.1; done
      is_up || { echo "virtual-audio: server did not come up; see $dir/pulse.log" >&2; exit 1; }
      PULSE_SERVER="$server" pactl set-default-sink vsink
      PULSE_SERVER="$server" pactl set-default-source vsink.monitor
    fi
    print_env
    ;;
  env)
    print_env
    ;;
  status)
    is_up
    ;;
  stop)
    if [ -d "$dir" ]; then
      XDG_RUNTIME_DIR="$dir" pulseaudio --kill 2>/dev/null || true
    fi
    ;;
  *)
    echo "usage: $0 start|env|status|stop" >&2
    exit 2
    ;;
esac
