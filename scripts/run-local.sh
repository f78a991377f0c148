#!/usr/bin/env bash
# The main job on the embedded default (cloud: local), on a fresh machine: set up, then run the
# pipeline on the example model repo in examples/model-repo.
# The pipeline so far: convert (a parity-checked ONNX bundle), then optimize (the fastest model
# within the accuracy budget). Build, push and the local canary deploy join it as they land.
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-venv.sh torch
cd examples/model-repo
../../.venv/bin/mldeploy convert
../../.venv/bin/mldeploy optimize
echo "bundle: $(pwd)/.mldeploy/bundle"
