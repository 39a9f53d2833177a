#!/usr/bin/env bash
# Install the command-line tools Sous's workers and tests need if they are missing:
# ffmpeg and ffprobe (transcode jobs); prometheus and promtool (the tests check the alert
# rules and dashboards with promtool and scrape real processes with a real Prometheus).
# Uses apt-get as root; otherwise says what to run.
set -euo pipefail

missing=()
if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
    missing+=(ffmpeg)
fi
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    missing+=(prometheus)
fi
if ! command -v wrk >/dev/null 2>&1; then
    missing+=(wrk)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "missing: ${missing[*]}: install (e.g. sudo apt-get install -y ${missing[*]}) and retry" >&2
        exit 1
    fi
    echo "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The Debian package starts a Prometheus server on :9090; the tests start their own.
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi
    pkill -x prometheus >/dev/null 2>&1 || true
fi
echo "ok: ffmpeg $(ffmpeg -version | head -n 1 | cut -d' ' -f3), $(promtool --version 2>&1 | head -n 1)"
