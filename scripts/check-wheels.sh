#!/usr/bin/env bash
# Prove that every pin of the lock file has a binary wheel for CPython 3.11 on x86-64 and
# on aarch64 (Raspberry Pi OS bookworm: glibc 2.36), so a device install never compiles.
#   scripts/check-wheels.sh [--download] [LOCK]     (default LOCK: requirements/lock-py311.txt)
# Default: pip resolves the pins for each platform with --only-binary=:all: and the index's
# metadata (a dry run: the big wheels are not fetched). --download: pip download them all.
# Exit: 0 all binary, 1 a pin has no wheel for a platform, 3 the package index is unreachable.
set -uo pipefail
PY=${PYTHON:-python3}
download=0
if [ "${1:-}" = "--download" ]; then download=1; shift; fi
LOCK=${1:-"$(dirname "$0")/../requirements/lock-py311.txt"}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

platforms() {  # manylinux2014 = manylinux_2_17; anything up to the device's glibc 2.36 runs
  local arch=$1 v
  printf -- '--platform manylinux2014_%s ' "$arch"
  for v in 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36; do
    printf -- '--platform manylinux_2_%s_%s ' "$v" "$arch"
  done
}

status=0
for arch in x86_64 aarch64; do
  log="$work/$arch.log"
  # shellcheck disable=SC2046  # the platform flags are meant to split
  if [ "$download" = 1 ]; then
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.11 \
      --implementation cp --abi cp311 --abi abi3 --abi none $(platforms "$arch") \
      --retries 1 --timeout 20 -d "$work/$arch" -r "$LOCK" >"$log" 2>&1
  else
    "$PY" -m pip install --dry-run --ignore-installed --no-deps --only-binary=:all: \
      --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
      $(platforms "$arch") --retries 1 --timeout 20 --target "$work/$arch" \
      --report "$work/$arch.json" -r "$LOCK" >"$log" 2>&1
  fi
  rc=$?
  if [ $rc -ne 0 ]; then
    if grep -qE 'NewConnectionError|Max retries exceeded|Temporary failure in name resolution|Network is unreachable|ConnectTimeout|ProxyError|Failed to establish a new connection' "$log"; then
      echo "check-wheels: the package index cannot be reached; nothing was checked:" >&2
      grep -m3 -E 'Error|error' "$log" >&2
      exit 3
    fi
    echo "check-wheels: $arch: some pin has no binary wheel for CPython 3.11:" >&2
    grep -E 'ERROR|No matching distribution|Could not find' "$log" >&2
    status=1
    continue
  fi
  if [ "$download" = 1 ]; then
    n=$(find "$work/$arch" -name '*.whl' | wc -l)
  else
    n=$("$PY" -c 'import json,sys; r=json.load(open(sys.argv[1]))["install"]; bad=[i["download_info"]["url"] for i in r if not i["download_info"]["url"].endswith(".whl")]; print(len(r)) if not bad else sys.exit("not wheels: "+" ".join(bad))' "$work/$arch.json") || { status=1; continue; }
  fi
  echo "check-wheels: $arch: $n binary wheels for CPython 3.11"
done
exit $status
