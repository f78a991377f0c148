#!/usr/bin/env bash
# Used by the composite actions: install mldeploy from the action's own checkout (so the action and
# the package are always the same version) into a private venv, with only the extras given.
# Prints the path of the `mldeploy` executable. Re-runs with the same kit and extras do nothing.
#
#   scripts/action-setup.sh [EXTRA...]       e.g. scripts/action-setup.sh torch
#
# The extra `target` is the deploy target's own (from the target registry: aws, eks, kubernetes, ...),
# for deploy.cloud and deploy.target as the config says them (MLDEPLOY_CONFIG, MLDEPLOY_DEPLOY__CLOUD
# and MLDEPLOY_DEPLOY__TARGET override, as for every command).
#
# Environment: MLDEPLOY_PYTHON (interpreter for the venv, default python3),
#              MLDEPLOY_TORCH_INDEX_URL (the index torch alone is installed from, e.g. PyTorch's CPU
#              index https://download.pytorch.org/whl/cpu; empty: pip's configured indexes, like the rest).
# Says on stderr which extras it installed (and where torch came from) and which the venv had.
set -Eeuo pipefail

kit=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${MLDEPLOY_PYTHON:-python3}
command -v "$python" >/dev/null || { echo "::error::python interpreter '$python' not found; add actions/setup-python before this step" >&2; exit 2; }

# Python runs isolated (-I): the working directory is the model repo's checkout, and `python -m pip`
# would otherwise import a `pip/` (or `venv/`) that a pull request put there, in a job that holds
# a cloud credential.
# The venv is keyed by the kit's content and the interpreter, so a new kit version gets a new venv
# and copies of the same kit in other folders share one (every file of the package counts: its code,
# templates and runtime.lock; not src/*.egg-info, which the install itself rewrites).
key=$( { "$python" -I -c 'import sys; print(sys.version)'; cat "$kit/pyproject.toml" "$kit/constraints.txt";
         find "$kit/src/mldeploy" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z | xargs -0 cat; } | sha256sum | cut -c1-16)
root=${RUNNER_TOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}}/mldeploy
if [ "${RUNNER_ENVIRONMENT:-}" = self-hosted ]; then
  # A self-hosted runner keeps its tool cache across jobs, and any job (a pull request's build job
  # runs the model repo's code) could plant a venv there that a later production job would run:
  # each job makes its own, under RUNNER_TEMP, which the runner empties for every job.
  root="${RUNNER_TEMP:?RUNNER_TEMP is not set on this self-hosted runner}/mldeploy"
  export PIP_CACHE_DIR="$root/pip-cache"  # pip's cache too: a planted wheel would be installed as is
fi
venv="$root/venv-$key"
log="$root/install-$key.log"
mkdir -p "$root"

install() {  # install the kit (with extras "$1") into the venv; output goes to the log unless it fails
  local spec="$kit"
  [ -n "$1" ] && spec="$kit[$1]"
  if [ "$1" = torch ] && [ -n "${MLDEPLOY_TORCH_INDEX_URL:-}" ]; then
    # Only torch comes from that index (no other package can be swapped in through it).
    "$venv/bin/python" -I -m pip install --disable-pip-version-check --no-compile --no-deps -c "$kit/constraints.txt" \
      --index-url "$MLDEPLOY_TORCH_INDEX_URL" torch >>"$log" 2>&1 || { tail -n 40 "$log" >&2; exit 2; }
  fi
  # --no-compile: a job imports a small part of what it installs (torch, tensorflow); byte-compiling all
  # of it took a third of the install here, and each venv is one job's (see above) or one runner's
  if ! "$venv/bin/python" -I -m pip install --disable-pip-version-check --no-compile -c "$kit/constraints.txt" \
        "$spec" >>"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "::error::installing mldeploy${1:+[$1]} failed (log above)" >&2
    exit 2
  fi
}

if [ ! -x "$venv/bin/mldeploy" ]; then
  "$python" -I -m venv "$venv"
  install ""
fi
# the frameworks' and the serving runtime's extras, and each deploy target's (from the target registry)
known=" torch tensorflow serve image monitor $("$python" -I "$kit/src/mldeploy/targets.py" extras) "
for extra in "$@"; do
  [ "$extra" = onnx ] && continue
  if [ "$extra" = target ]; then  # what the config deploys to decides (target eks needs the kubernetes client too)
    cloud=$("$venv/bin/mldeploy" config get deploy.cloud) && target=$("$venv/bin/mldeploy" config get deploy.target) \
      && extra=$("$python" -I "$kit/src/mldeploy/targets.py" extra "$cloud" "$target") || exit 2
    [ -n "$extra" ] || continue
  fi
  case "$known" in *" $extra "*) ;; *) echo "::error::unknown extra '$extra' (one of:$known)" >&2; exit 2 ;; esac
  if [ ! -e "$venv/.extra-$extra" ]; then
    install "$extra"
    touch "$venv/.extra-$extra"
    from=""
    # the index without any user:password@ it may carry (a private mirror's token stays out of the log)
    [ "$extra" = torch ] && [ -n "${MLDEPLOY_TORCH_INDEX_URL:-}" ] &&
      from=" (torch from $(sed -E 's#://[^/@]*@#://#' <<< "$MLDEPLOY_TORCH_INDEX_URL"))"
    echo "mldeploy: installed extra $extra$from" >&2
  else
    echo "mldeploy: extra $extra already installed" >&2
  fi
done
# an image build packs the kit's source: this copy, which exists while this action runs
echo "$kit" > "$venv/kit-source"
echo "$venv/bin/mldeploy"
