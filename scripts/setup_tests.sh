#!/usr/bin/env bash
# Installs what the test suite needs, on a fresh machine (README command 2 runs it, then pytest):
#   ffmpeg     museval (the reference the BSSv4 tests compare with) imports stempeg, which refuses to
#              import without ffmpeg; MUSDB18 .stem.mp4 decoding
#   iproute2   `ip netns` for the multi-node tests' hosts
#   umx        editable, with its test extras; openunmix 1.3.0 without its dependencies (they would
#              pull torchaudio), for the tests that load our model directories with it
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
{ command -v ffmpeg && command -v ffprobe; } >/dev/null || missing+=(ffmpeg)
command -v ip >/dev/null || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]} (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "error: the tests need ${missing[*]}; install them with your system's package manager" >&2
    exit 1
  fi
fi
python -m pip install -q -e '.[test]'
python -m pip install -q --no-deps openunmix==1.3.0
# the suite's second architecture, a plugin registered through the umx.architectures entry points
python -m pip install -q --no-deps -e tests/plugins/umx_tinymask
