#!/usr/bin/env bash
# Install the system tools the tests drive, from Debian's packages, when missing and we are root
# (and Azurite from the npm registry, below):
#   wrk   the HTTP load generator of the serving load test and benchmarks/serve.py
#   curl  the docs' examples ask the server with it (tests/unit/test_docs_examples.py runs them)
# Without root, tests that need a missing tool are skipped and say why.
set -Eeuo pipefail
# Azurite (Azure Blob storage's emulator, from the npm registry) for tests/contract/test_artifact_stores.py,
# into a cache folder (about 40 s once); no blob versioning before 3.38, which the tests account for
azurite_dir="${MLDEPLOY_AZURITE_DIR:-$HOME/.cache/mldeploy/azurite-3.37.0}"
if [ ! -x "$azurite_dir/node_modules/.bin/azurite-blob" ]; then
  if command -v npm >/dev/null; then
    npm install --prefix "$azurite_dir" --no-audit --no-fund --loglevel=error azurite@3.37.0 >/dev/null
  else
    echo "no npm: cannot install Azurite; the Blob storage tests will be skipped" >&2
  fi
fi
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "not root: cannot install ${missing[*]}; the tests that need them will be skipped" >&2
  exit 0
fi
echo "installing ${missing[*]} ..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }
