#!/usr/bin/env bash
# Install the command-line tools Sous's workers and tests need if they are missing:
# ffmpeg and ffprobe (transcode jobs). Uses apt-get as root; otherwise says what to run.
set -euo pipefail

if command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1; then
    echo "ok: ffmpeg $(ffmpeg -version | head -n 1 | cut -d' ' -f3)"
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ffmpeg is missing: install it (e.g. sudo apt-get install -y ffmpeg) and retry" >&2
    exit 1
fi
echo "installing ffmpeg (apt-get)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null
echo "ok: ffmpeg $(ffmpeg -version | head -n 1 | cut -d' ' -f3)"
