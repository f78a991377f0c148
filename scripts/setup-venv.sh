#!/usr/bin/env bash
# Create .venv (if missing) and install mldeploy in it, editable, with the given extras, pinned by
# constraints.txt. Does nothing when the same pins and extras are already installed.
#   scripts/setup-venv.sh torch,tensorflow,dev
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extras=${1:-}
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
stamp=.venv/.installed-$( { cat pyproject.toml constraints.txt; echo "$extras"; } | sha256sum | cut -c1-16)
if [ ! -e "$stamp" ]; then
  echo "installing mldeploy${extras:+[$extras]} into .venv ..." >&2
  # --no-compile: a fresh install takes 100 s, not 160 (2 cores); modules compile as they are first imported
  .venv/bin/python -m pip install --disable-pip-version-check -q --no-compile -c constraints.txt -e ".${extras:+[$extras]}"
  touch "$stamp"
fi
