#!/usr/bin/env bash
# Install the three clouds' own Python SDKs, each in its own virtual environment, for the tests that
# drive the serving image with the SDKs' local modes (tests/integration/test_cloud_local_modes.py).
# They stay out of .venv: their pins conflict with ours and with each other.
#
#   .sdk-venvs/sagemaker  sagemaker 2.x (local mode: LocalSession, instance_type="local")
#   .sdk-venvs/compose    docker-compose 1.29.2, which SageMaker's local mode runs; its PyYAML<6
#                         conflicts with sagemaker's, so it has its own venv; PyYAML 5.4.1 only
#                         builds with Cython<3 and no build isolation, and docker-compose 1.29.2
#                         needs docker 6.1.3 and requests<2.32 (newer ones broke its http+docker://)
#   .sdk-venvs/bin        docker-compose linked here: put this folder on the SDK's PATH
#   .sdk-venvs/vertex     google-cloud-aiplatform[prediction] 2.x (LocalModel, local endpoints)
#   .sdk-venvs/azure      azure-ai-ml 1.35 + azure-identity (local online endpoints) + docker
#
# Idempotent: a venv whose pins have not changed is left alone (stamp files); the first run takes
# a few minutes (the three install side by side), later runs well under a second.
# Progress goes to stderr. Exit status non-zero when a venv could not be made (its log is shown).
# MLDEPLOY_SDK_VENVS moves the folder; PYTHON picks the interpreter (3.11 by default, python3).
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENVS=${MLDEPLOY_SDK_VENVS:-$PWD/.sdk-venvs}
PY=${PYTHON:-python3}
say() { echo "setup-cloud-sdks: $*" >&2; }
# one at a time: scripts/test.sh starts it early, and the local-mode tests run it again (then a no-op)
exec 9>"${TMPDIR:-/tmp}/mldeploy-cloud-sdks.lock"
flock 9

# Every top-level version, pinned.
SAGEMAKER_PINS=(sagemaker==2.257.7)
COMPOSE_BUILD_PINS=(cython==0.29.37 setuptools==75.8.0 wheel==0.45.1)
COMPOSE_YAML_PIN=PyYAML==5.4.1
COMPOSE_PINS=(docker-compose==1.29.2 docker==6.1.3 requests==2.31.0 PyYAML==5.4.1)
VERTEX_PINS=("google-cloud-aiplatform[prediction]==2.7.0")
AZURE_PINS=(azure-ai-ml==1.35.2 azure-identity==1.27.0 docker==7.1.0)

PIP=(-m pip install --disable-pip-version-check -q)
mkdir -p "$VENVS/bin"

# new_venv NAME: a fresh, empty venv (a venv is only (re)made when its pins changed or it is new).
new_venv() {
  rm -rf "${VENVS:?}/$1"
  "$PY" -m venv "$VENVS/$1"
}

PYVER=$("$PY" -c 'import sys; print(sys.version)')
stamp_of() { printf '%s\n' "$@" "$PYVER" | sha256sum | cut -c1-16; }

install_sagemaker() {
  new_venv sagemaker
  "$VENVS/sagemaker/bin/python" "${PIP[@]}" "${SAGEMAKER_PINS[@]}"
  SAGEMAKER_SUPPRESS_V2_WARNING=1 "$VENVS/sagemaker/bin/python" -c 'import sagemaker.local, sagemaker.model'
}

install_compose() {
  new_venv compose
  local py=$VENVS/compose/bin/python
  "$py" "${PIP[@]}" "${COMPOSE_BUILD_PINS[@]}"
  "$py" "${PIP[@]}" --no-build-isolation "$COMPOSE_YAML_PIN"
  "$py" "${PIP[@]}" "${COMPOSE_PINS[@]}"
  ln -sf "$VENVS/compose/bin/docker-compose" "$VENVS/bin/docker-compose"
  "$VENVS/bin/docker-compose" version --short
}

install_vertex() {
  new_venv vertex
  "$VENVS/vertex/bin/python" "${PIP[@]}" "${VERTEX_PINS[@]}"
  "$VENVS/vertex/bin/python" -c 'from google.cloud.aiplatform.prediction import LocalModel'
}

install_azure() {
  new_venv azure
  "$VENVS/azure/bin/python" "${PIP[@]}" "${AZURE_PINS[@]}"
  "$VENVS/azure/bin/python" -c 'import docker; from azure.ai.ml import MLClient, load_online_deployment'
}

# Start every venv whose stamp is missing, side by side; each logs to its own file.
declare -A pids=()
for name in sagemaker compose vertex azure; do
  case $name in
    sagemaker) pins=("${SAGEMAKER_PINS[@]}") ;;
    compose) pins=("${COMPOSE_BUILD_PINS[@]}" "${COMPOSE_PINS[@]}") ;;
    vertex) pins=("${VERTEX_PINS[@]}") ;;
    azure) pins=("${AZURE_PINS[@]}") ;;
  esac
  stamp=$VENVS/$name/.installed-$(stamp_of "${pins[@]}")
  if [ -e "$stamp" ]; then
    say "$name: up to date ($VENVS/$name)"
    continue
  fi
  say "$name: installing ${pins[*]} into $VENVS/$name ..."
  rm -f "$VENVS/$name"/.installed-*
  ( set -e; "install_$name"; touch "$stamp" ) >"$VENVS/$name.log" 2>&1 &
  pids[$name]=$!
done

failed=()
started=$SECONDS
for name in "${!pids[@]}"; do
  if wait "${pids[$name]}"; then
    say "$name: done after $((SECONDS - started)) s"
  else
    failed+=("$name")
    say "$name: FAILED after $((SECONDS - started)) s; the end of $VENVS/$name.log:"
    tail -n 15 "$VENVS/$name.log" >&2
  fi
done
[ ${#failed[@]} -eq 0 ] || { say "could not install: ${failed[*]}"; exit 1; }
ln -sf "$VENVS/compose/bin/docker-compose" "$VENVS/bin/docker-compose"
say "ready: $VENVS/{sagemaker,vertex,azure}/bin/python; docker-compose in $VENVS/bin"
