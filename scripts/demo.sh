#!/usr/bin/env bash
# `make demo`: an embedded control plane (SQLite + local blobs) and one runner with a real Triton
# server when it can: the docker backend on a reachable (or privately started) Docker engine
# with the CPU Triton image, else the process backend (a local `tritonserver`), else the
# mock backend with a loud notice. Pushes model_repository/add_sub and deploys it as a user
# would (the runner starts with an empty model repository), runs jobs through the SDK,
# prints inputs, outputs and timings and "next, try:" commands, then shuts everything down
# by pid — unless KEEP=1 (`make demo KEEP=1`): then the fleet keeps running for those commands.
# GPUFLEET_DEMO_HOLD=1 is the same as KEEP=1 (look at the jobs in the console).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
WORK=$(mktemp -d /tmp/gpufleet-demo.XXXXXX)
CP_PORT=$($PY -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
PIDS=()
STOP_DOCKERD=""

cleanup() {
  set +e
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null
  done
  if [ -n "$STOP_DOCKERD" ]; then bash scripts/dockerd.sh stop "$STOP_DOCKERD" >/dev/null; fi
  echo "demo: stopped everything (logs in $WORK)"
}
trap cleanup EXIT

# ---- choose the backend: docker (an engine reachable or startable), else process (a
# `tritonserver` on PATH, e.g. scripts/triton-tree.sh's tree/bin), else mock
BACKEND=mock
if [ -n "${GPUFLEET_DEMO_BACKEND:-}" ]; then
  BACKEND=$GPUFLEET_DEMO_BACKEND
else
  if [ -n "${DOCKER_HOST:-}" ] && docker -H "$DOCKER_HOST" info >/dev/null 2>&1; then
    BACKEND=docker
  elif [ -S /var/run/docker.sock ] && docker info >/dev/null 2>&1; then
    BACKEND=docker; export DOCKER_HOST=unix:///var/run/docker.sock
  elif [ "$(id -u)" = 0 ] && { command -v dockerd >/dev/null || bash scripts/install-rig-deps.sh >"$WORK/rig-deps.log" 2>&1; }; then
    RIG_DIR="${GPUFLEET_DOCKERD_DIR:-/tmp/gpufleet-dockerd-$(id -u)-demo}"
    mkdir -p "$RIG_DIR"
    if DOCKER_HOST=$(bash scripts/dockerd.sh start "$RIG_DIR" 2>"$WORK/dockerd.err"); then
      export DOCKER_HOST; BACKEND=docker; STOP_DOCKERD=$RIG_DIR
    else
      unset DOCKER_HOST
      echo "demo: could not start a private Docker engine (see $WORK/dockerd.err)"
    fi
  fi
  # not an elif: also when starting an engine was tried and failed
  if [ "$BACKEND" = mock ] && command -v tritonserver >/dev/null; then
    BACKEND=process
  fi
fi
if [ "$BACKEND" = process ]; then
  echo "demo: tritonserver = $(command -v tritonserver || echo '<not on PATH>')"
fi
if [ "$BACKEND" = docker ]; then
  echo "demo: building/reusing the CPU Triton image (first time: ~1 minute)"
  bash scripts/build-triton-cpu-image.sh >"$WORK/image.log" 2>&1 || { echo "demo: image build failed, see $WORK/image.log"; exit 1; }
fi
if [ "$BACKEND" = mock ]; then
  echo "################################################################################"
  echo "# demo: NO Triton available (no Docker engine, no tritonserver binary).        #"
  echo "# Using the MOCK backend: outputs are zeros shaped from the model config.      #"
  echo "################################################################################"
fi
echo "demo: backend = $BACKEND"

# ---- control plane (embedded store: SQLite + local blobs in the demo's temporary directory)
# A fleet gives mock runners no work unless allowed: the demo's own mock runner is.
ALLOW_MOCK=false
if [ "$BACKEND" = mock ]; then ALLOW_MOCK=true; fi
GPUFLEET_ALLOW_MOCK_RUNNERS=$ALLOW_MOCK $PY -m control_plane serve --embedded --data-dir "$WORK/data" --host 127.0.0.1 --port "$CP_PORT" \
  --admin-key-file "$WORK/admin.key" >"$WORK/control-plane.log" 2>&1 &
PIDS+=($!)
URL="http://127.0.0.1:$CP_PORT"
for _ in $(seq 1 100); do
  curl -fs "$URL/v1/health" >/dev/null 2>&1 && [ -s "$WORK/admin.key" ] && break; sleep 0.2
done
curl -fs "$URL/v1/health" >/dev/null || { echo "demo: control plane did not start"; cat "$WORK/control-plane.log"; exit 1; }
echo "demo: control plane on $URL"
echo "demo: console on $URL/console (sign in with the demo's admin API key: $(cat "$WORK/admin.key"))"

# ---- runner: an empty model repository (the model comes from the push), except for the
# mock backend, which answers from the configs of the repository's own models
MODELS="$WORK/models"; mkdir -p "$MODELS"
if [ "$BACKEND" = mock ]; then MODELS="$PWD/model_repository"; fi
JOIN_TOKEN=$($PY scripts/demo.py join-token --url "$URL" --api-key-file "$WORK/admin.key")
HTTP_PORT=$($PY -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
GRPC_PORT=$($PY -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
METRICS_PORT=$($PY -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
STATUS_PORT=$($PY -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
GPUFLEET_RUNNER_STATE_DIR="$WORK/runner" \
GPUFLEET_RUNNER_NAME=demo-runner \
GPUFLEET_RUNNER_TRITON_IMAGE=gpufleet/tritonserver-cpu:2.51 \
GPUFLEET_RUNNER_MODEL_REPOSITORY="$MODELS" \
GPUFLEET_RUNNER_TRITON_HTTP_PORT=$HTTP_PORT GPUFLEET_RUNNER_TRITON_GRPC_PORT=$GRPC_PORT \
GPUFLEET_RUNNER_TRITON_METRICS_PORT=$METRICS_PORT GPUFLEET_RUNNER_STATUS_PORT=$STATUS_PORT \
GPUFLEET_RUNNER_SHM_SIZE=256m GPUFLEET_RUNNER_ULIMITS='{"stack": 67108864}' \
  .venv/bin/gpufleet-runner start --control-plane-url "$URL" --join-token "$JOIN_TOKEN" \
  --backend "$BACKEND" >"$WORK/runner.log" 2>&1 &
PIDS+=($!)
echo "demo: runner started (log: $WORK/runner.log)"

# ---- the job: push add_sub, run jobs through the SDK, print results
# (memlock=-1, NVIDIA's other recommended ulimit, is refused by a private rootless-style engine)
$PY scripts/demo.py run --url "$URL" --api-key-file "$WORK/admin.key" \
  --model-dir model_repository/add_sub --runner-pid "${PIDS[1]}" --runner-log "$WORK/runner.log"

# ---- what to try next, against what this demo started
echo
if [ "${KEEP:-${GPUFLEET_DEMO_HOLD:-}}" = 1 ]; then
  KEEP=1
  echo "demo: still running (KEEP=1): control plane $URL, runner status on :$STATUS_PORT"
  echo "next, try:"
else
  echo "demo: run \`make demo KEEP=1\` to keep the fleet running, then try:"
fi
echo "  .venv/bin/gpufleet login --url $URL --api-key \"\$(cat $WORK/admin.key)\""
echo "  .venv/bin/gpufleet models list"
echo "  .venv/bin/gpufleet infer add_sub -i 'INPUT0=[[1,2,3,4]]' -i 'INPUT1=[[1,1,1,1]]'"
echo "  .venv/bin/gpufleet jobs list --limit 5"
echo "  .venv/bin/gpufleet-runner status --port $STATUS_PORT"
echo "  open $URL/docs   (the API reference)"
echo "  open $URL/console   (the console: sign in with the admin key above)"
if [ "${KEEP:-}" = 1 ]; then
  echo "stop it with: kill ${PIDS[*]}"
  trap - EXIT
fi
