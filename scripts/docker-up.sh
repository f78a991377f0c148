#!/usr/bin/env bash
# Make a Docker engine, a local OCI registry and a slim Python base image available, then print
# the variables that point at them (eval "$(scripts/docker-up.sh)").
#
# - An engine that already answers (DOCKER_HOST, or the default socket) is used as it is.
# - Otherwise, as root, Debian's docker.io is installed and a private dockerd is started with its
#   own data root and socket (/run/mldeploy-docker.sock), so it never disturbs a system engine.
# - A registry on 127.0.0.1:5000 (Debian's docker-registry; loopback registries need no TLS).
# - The base image: python:3.11-slim when the engine has it or can pull it; where nothing can be
#   pulled (these machines, air-gapped CI), a Debian 12 minbase with python3 is built once with
#   debootstrap (about 3 minutes) and imported as mldeploy-base:bookworm.
# Progress goes to stderr; only `export ...` lines go to stdout.
set -Eeuo pipefail

STATE=${MLDEPLOY_DOCKER_STATE:-/var/lib/mldeploy-docker}
SOCK=/run/mldeploy-docker.sock
REGISTRY=${MLDEPLOY_REGISTRY:-127.0.0.1:5000}
LOCAL_BASE=mldeploy-base:bookworm
say() { echo "docker-up: $*" >&2; }
# one at a time: scripts/test.sh runs test processes side by side, and each may start the engine first
exec 9>"${TMPDIR:-/tmp}/mldeploy-docker-up.lock"
flock 9

engine_up() { docker info >/dev/null 2>&1; }

if ! engine_up; then
  export DOCKER_HOST=unix://$SOCK
fi
if ! engine_up; then
  [ "$(id -u)" = 0 ] || { say "no Docker engine answers and we are not root: start one and set DOCKER_HOST"; exit 1; }
  if ! command -v dockerd >/dev/null || ! command -v docker-registry >/dev/null || ! command -v debootstrap >/dev/null; then
    say "installing docker.io, docker-registry, debootstrap (Debian packages) ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq docker.io docker-registry debootstrap >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq docker.io docker-registry debootstrap >/dev/null; }
  fi
  mkdir -p "$STATE"
  say "starting dockerd (data root $STATE/data, socket $SOCK) ..."
  nohup dockerd --data-root "$STATE/data" --exec-root /run/mldeploy-docker --pidfile "$STATE/dockerd.pid" \
    -H "unix://$SOCK" >"$STATE/dockerd.log" 2>&1 9>&- &
  for _ in $(seq 1 100); do engine_up && break; sleep 0.2; done
  engine_up || { say "dockerd did not start; see $STATE/dockerd.log"; tail -5 "$STATE/dockerd.log" >&2; exit 1; }
fi

# The registry
if ! curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1; then
  if [ "${REGISTRY%%:*}" = 127.0.0.1 ] && command -v docker-registry >/dev/null; then
    mkdir -p "$STATE/registry"
    cat >"$STATE/registry.yml" <<EOF
version: 0.1
storage:
  filesystem:
    rootdirectory: $STATE/registry
  delete:
    enabled: true
http:
  addr: $REGISTRY
EOF
    say "starting a registry on $REGISTRY ..."
    nohup docker-registry serve "$STATE/registry.yml" >"$STATE/registry.log" 2>&1 9>&- &
    echo $! >"$STATE/registry.pid"
    for _ in $(seq 1 50); do curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1 && break; sleep 0.2; done
  fi
  curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1 || say "warning: no registry answers at $REGISTRY"
fi

# The base image
base=python:3.11-slim
if ! docker image inspect "$base" >/dev/null 2>&1 && ! timeout 60 docker pull -q "$base" >/dev/null 2>&1; then
  base=$LOCAL_BASE
  if ! docker image inspect "$base" >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || { say "cannot pull python:3.11-slim and not root to build $LOCAL_BASE"; exit 1; }
    rootfs=$(mktemp -d)
    say "python:3.11-slim cannot be pulled: building $LOCAL_BASE with debootstrap (about 3 minutes) ..."
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
      >"$STATE/debootstrap.log" 2>&1 || { say "debootstrap failed; see $STATE/debootstrap.log"; exit 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc \
      "$rootfs"/usr/share/man "$rootfs"/usr/share/locale
    tar -C "$rootfs" -c . | docker import -c 'CMD ["python3"]' - "$base" >/dev/null
    rm -rf "$rootfs"
  fi
fi
say "engine: ${DOCKER_HOST:-default}; registry: $REGISTRY; base image: $base"
echo "export DOCKER_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock}"
echo "export MLDEPLOY_IMAGE__REGISTRY=$REGISTRY"
echo "export MLDEPLOY_IMAGE__BASE=$base"
