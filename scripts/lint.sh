#!/usr/bin/env bash
# The static gates CI runs beside the tests (scripts/test.sh with no arguments): ruff (rules in
# [tool.ruff]), mypy (every function of src/mldeploy typed, [tool.mypy]) and import-linter (the layers,
# no cycles, cloud SDKs only in the deploy targets: [tool.importlinter]). Each must find nothing.
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=.venv/bin
"$bin/ruff" check src tests scripts benchmarks
"$bin/mypy"
"$bin/lint-imports"
