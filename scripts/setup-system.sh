#!/usr/bin/env bash
# Install the system tools the tests drive, from Debian's packages, when missing and we are root:
#   wrk   the HTTP load generator of the serving load test and benchmarks/serve.py
# Without root, tests that need a missing tool are skipped and say why.
set -Eeuo pipefail
missing=()
command -v wrk >/dev/null || missing+=(wrk)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "not root: cannot install ${missing[*]}; the tests that need them will be skipped" >&2
  exit 0
fi
echo "installing ${missing[*]} ..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }
