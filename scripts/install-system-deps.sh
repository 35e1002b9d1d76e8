#!/usr/bin/env bash
# Install the Debian packages navtalk-agent needs, only when something is missing.
# PortAudio (sounddevice), PulseAudio + ALSA plugins (virtual audio for tests),
# Xvfb + openbox (virtual screen), OpenCV's system libraries, espeak-ng + sox (test speech),
# systemd (systemd-analyze checks the units in tests/test_systemd_units.py).
# prometheus (its promtool checks the supervisor's /metrics in tests/test_ops_metrics.py).
# SpeexDSP (the speex echo canceller, mic.aec = "speex").
set -euo pipefail
PKGS=(
  libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins alsa-utils
  xvfb xauth openbox x11-utils
  libgl1 libglib2.0-0 libsm6 libxext6
  libxcb-randr0 libxcb-render0 libxcb-shm0 libxcb-xfixes0
  espeak-ng sox ffmpeg
  systemd
  prometheus
  libspeexdsp1
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi
echo "system packages: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "error: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
