#!/usr/bin/env bash
# `make test`: one private Docker engine and the CPU Triton image for the whole run, then
# every test (unit, contract, API, e2e) with pytest-xdist. The engine is stopped by its pid.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${GPUFLEET_SKIP_DOCKER:-}" ]; then
  if [ -z "${DOCKER_HOST:-}" ] || ! docker -H "$DOCKER_HOST" info >/dev/null 2>&1; then
    RIG_DIR="${GPUFLEET_DOCKERD_DIR:-/tmp/gpufleet-dockerd-$(id -u)-make}"
    mkdir -p "$RIG_DIR"
    DOCKER_HOST=$(bash scripts/dockerd.sh start "$RIG_DIR")
    export DOCKER_HOST
    trap 'bash scripts/dockerd.sh stop "$RIG_DIR"' EXIT
  fi
  DOCKER_HOST="$DOCKER_HOST" bash scripts/build-triton-cpu-image.sh
fi

set +e
.venv/bin/pytest -n "${PYTEST_WORKERS:-3}" --dist loadgroup "$@"
rc=$?
set -e
exit $rc
