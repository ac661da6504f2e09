#!/usr/bin/env bash
# Build the runner image and start the runner container on this (GPU) host.
#
#   make deploy-runner CONTROL_PLANE_URL=https://… JOIN_TOKEN=gfj_…
#   scripts/deploy-runner.sh [all|wheels|build|run|args]      (default: all = wheels build run)
#
#   wheels  the `gpufleet` and `gpufleet-runner` wheels (distributions/) + the wheels of their
#           dependencies for the image's Python and platform into $WHEELS_DIR (pip download
#           --platform/--python-version: works on any build host; re-downloaded only when
#           distributions/{gpufleet,runner}/pyproject.toml change; OFFLINE=1 uses the
#           directory as it is, e.g. copied onto an air-gapped host)
#   build   docker build -f Dockerfile.runner (no network inside the build)
#   run     (re)start the runner container; its arguments come from
#           `python3 -m runner.deploy args` (unit-tested), then waits until it is healthy
#   args    print those arguments, one a line (nothing is started)
#
# Settings (environment or make variables):
#   CONTROL_PLANE_URL  control plane base URL                               (run: required)
#   JOIN_TOKEN         join token (POST /v1/admin/join-tokens); may be left out when
#                      $DATA_DIR/runner/credentials.json exists (already registered)
#   IMAGE              image tag        (gpufleet/runner:<version in sdk/gpufleet/_version.py>)
#   BASE_IMAGE         build argument BASE_IMAGE                   (the Dockerfile's default)
#   PYTHON_VERSION     Python of BASE_IMAGE, for the wheels                            (3.11)
#   ARCH, PLATFORMS    wheel architecture (uname -m) / pip --platform tags (from ARCH)
#   WHEELS_DIR         wheel directory, inside the repository      (.cache/runner-wheels)
#   RUNNER_UID         uid of the image's non-root user                              (10001)
#   GPUS               all | none | 0,1 | GPU-<uuid>,…                                   (all)
#   DATA_DIR           host directory mounted at the same path in the container (so that
#                      Triton's bind mount of the model repository is valid): the model
#                      repository in models/, the runner's state (credentials, Triton key
#                      and log, download cache) in runner/                (/var/lib/gpufleet)
#   TRITON_IMAGE       Triton image             (unset: the runner's default, NVIDIA's image)
#   RUNNER_NAME        runner name                                     (unset: the host name)
#   CONTAINER_NAME     runner container's name                           (gpufleet-runner)
#   STATUS_PORT        runner's local status port on 127.0.0.1                         (8765)
#   WAIT_S             how long `run` waits for the container to be healthy (600; 0: no wait)
#   GPUFLEET_RUNNER_*  any other runner setting, passed into the container as it is
# The Docker engine is the one DOCKER_HOST names (a unix socket; default /var/run/docker.sock):
# its socket is mounted into the runner, which starts Triton as a sibling container.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"
cmd=${1:-all}

if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' sdk/gpufleet/_version.py | head -n 1)
IMAGE=${IMAGE:-gpufleet/runner:$VERSION}
PYTHON_VERSION=${PYTHON_VERSION:-3.11}
WHEELS_DIR=${WHEELS_DIR:-.cache/runner-wheels}
RUNNER_UID=${RUNNER_UID:-10001}
GPUS=${GPUS:-all}
DATA_DIR=${DATA_DIR:-/var/lib/gpufleet}
DATA_DIR=${DATA_DIR%/}
MODELS_DIR="$DATA_DIR/models"
STATE_DIR="$DATA_DIR/runner"
CONTAINER_NAME=${CONTAINER_NAME:-gpufleet-runner}
STATUS_PORT=${STATUS_PORT:-8765}
WAIT_S=${WAIT_S:-600}
# Wheel platforms a Debian bookworm (glibc 2.36) base of this machine's architecture can
# load, newest first (ARCH=aarch64 on an x86_64 build host for ARM GPU hosts, with a base
# image of that architecture).
ARCH=${ARCH:-$(uname -m)}
if [ -z "${PLATFORMS:-}" ]; then
    PLATFORMS=""
    for glibc in 2_36 2_35 2_34 2_31 2_28 2_27 2_24 2_17; do PLATFORMS+="manylinux_${glibc}_$ARCH "; done
    PLATFORMS+="manylinux2014_$ARCH linux_$ARCH"
    [ "$ARCH" = x86_64 ] && PLATFORMS+=" manylinux2010_x86_64 manylinux1_x86_64"
fi

t0=$SECONDS
log() { printf '[deploy-runner +%ss] %s\n' "$((SECONDS - t0))" "$*"; }
die() { printf 'deploy-runner: %s\n' "$*" >&2; exit 1; }

case "$WHEELS_DIR" in
/*) die "WHEELS_DIR must be relative to the repository (it is the build context): $WHEELS_DIR" ;;
esac

wheels() {  # $WHEELS_DIR/app: the gpufleet and gpufleet-runner wheels; $WHEELS_DIR/deps: the rest, and pip
    local app="$WHEELS_DIR/app" deps="$WHEELS_DIR/deps"
    if [ "${OFFLINE:-0}" = 1 ]; then
        ls "$app"/gpufleet-*.whl "$app"/gpufleet_runner-*.whl "$app"/pip-*.whl "$deps"/pip-*.whl >/dev/null 2>&1 \
            || die "OFFLINE=1 but $WHEELS_DIR lacks app/gpufleet-*.whl, app/gpufleet_runner-*.whl, app/pip-*.whl or deps/pip-*.whl"
        log "OFFLINE=1: using the wheels in $WHEELS_DIR as they are"
        return
    fi
    mkdir -p "$app" "$deps"
    log "building the gpufleet and gpufleet-runner wheels (distributions/)"
    rm -f "$app"/gpufleet-*.whl "$app"/gpufleet_*.whl
    "$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$app" distributions/gpufleet distributions/runner \
        || die "pip wheel of distributions/gpufleet and distributions/runner failed"
    local sdk runner stamp
    sdk=$(ls "$app"/gpufleet-*.whl | head -n 1)
    runner=$(ls "$app"/gpufleet_runner-*.whl | head -n 1)
    stamp="$deps/.stamp-$( { cat distributions/gpufleet/pyproject.toml distributions/runner/pyproject.toml; echo "$PYTHON_VERSION $PLATFORMS"; } | sha256sum | cut -c1-16)"
    if [ -f "$stamp" ]; then
        log "dependency wheels up to date ($deps)"
    else
        download_deps "$sdk" "$runner" "$stamp"
    fi
    rm -f "$app"/pip-*.whl
    cp "$(ls "$deps"/pip-*.whl | head -n 1)" "$app/"  # the image installs gpufleet with it
}

download_deps() {  # download_deps GPUFLEET_WHEEL RUNNER_WHEEL STAMP
    local sdk=$1 runner=$2 stamp=$3 deps="$WHEELS_DIR/deps" platform_args=()
    for p in $PLATFORMS; do platform_args+=(--platform "$p"); done
    log "downloading the gpufleet-runner dependency wheels for Python $PYTHON_VERSION"
    rm -rf "$deps" && mkdir -p "$deps"  # one version of each: the image installs them all
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
        --python-version "$PYTHON_VERSION" --implementation cp "${platform_args[@]}" \
        --dest "$deps" "$runner" "$sdk" pip \
        || die "pip download of the gpufleet-runner dependencies failed"
    rm -f "$deps"/gpufleet-*.whl "$deps"/gpufleet_*.whl
    touch "$stamp"
    log "wheels ready: $(ls "$deps"/*.whl | wc -l) files, $(du -sh "$deps" | cut -f1)"
}

build() {
    command -v docker >/dev/null 2>&1 || die "docker CLI not found"
    local build_args=(--build-arg "WHEELS=$WHEELS_DIR" --build-arg "RUNNER_UID=$RUNNER_UID")
    [ -n "${BASE_IMAGE:-}" ] && build_args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
    [ -n "${DOCKER_GID:-}" ] && build_args+=(--build-arg "DOCKER_GID=$DOCKER_GID")
    log "docker build -f Dockerfile.runner -t $IMAGE ${BASE_IMAGE:+(base $BASE_IMAGE)}"
    # The classic builder needs no buildx plugin; both builders read this Dockerfile.
    DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} docker build --network none --file Dockerfile.runner \
        --tag "$IMAGE" "${build_args[@]}" . \
        || die "docker build failed"
    log "built $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
}

docker_socket() {
    local host=${DOCKER_HOST:-unix:///var/run/docker.sock}
    case "$host" in
    unix://*) echo "${host#unix://}" ;;
    *) die "DOCKER_HOST=$host: the runner needs the engine's unix socket (run this on the GPU host)" ;;
    esac
}

render_args() {  # fills the array `run_args`
    [ -n "${CONTROL_PLANE_URL:-}" ] || die "CONTROL_PLANE_URL is required (make deploy-runner CONTROL_PLANE_URL=… JOIN_TOKEN=…)"
    local sock gid_args=() token_args=() extra=()
    sock=$(docker_socket)
    [ -S "$sock" ] || die "no Docker socket at $sock"
    # Non-root when the socket's group may use it (mode g+rw); else the runner runs as root.
    if [ "$(( 0$(stat -c %a "$sock") & 060 ))" -eq $((060)) ]; then
        gid_args=(--socket-gid "$(stat -c %g "$sock")")
    else
        echo "deploy-runner: $sock is not group read-write: the runner container runs as root" >&2
    fi
    if [ -z "${JOIN_TOKEN:-}" ]; then
        [ -f "$STATE_DIR/credentials.json" ] \
            || die "JOIN_TOKEN is required (no $STATE_DIR/credentials.json from an earlier registration)"
        token_args=(--no-join-token)
    fi
    [ -n "${TRITON_IMAGE:-}" ] && extra+=(--triton-image "$TRITON_IMAGE")
    [ -n "${RUNNER_NAME:-}" ] && extra+=(--runner-name "$RUNNER_NAME")
    mapfile -d '' run_args < <("$PYTHON" -m runner.deploy args --pass-environment \
        --image "$IMAGE" --control-plane-url "$CONTROL_PLANE_URL" \
        --data-dir "$DATA_DIR" \
        --container-name "$CONTAINER_NAME" --gpus "$GPUS" --docker-socket "$sock" \
        --status-port "$STATUS_PORT" "${gid_args[@]}" "${token_args[@]}" "${extra[@]}")
    [ "${#run_args[@]}" -gt 0 ] || die "python -m runner.deploy args failed"
    uses_root=0
    [ "${#gid_args[@]}" -eq 0 ] && uses_root=1
    return 0
}

prepare_dirs() {
    mkdir -p "$MODELS_DIR" "$STATE_DIR" || die "cannot create $MODELS_DIR and $STATE_DIR (run as root?)"
    if [ "$(id -u)" = 0 ]; then
        chmod 0700 "$STATE_DIR"  # credentials and the Triton repository key
        if [ "$uses_root" = 0 ]; then
            local d
            for d in "$MODELS_DIR" "$STATE_DIR"; do
                [ "$(stat -c %u "$d")" = "$RUNNER_UID" ] || chown -R "$RUNNER_UID" "$d"
            done
        fi
    fi
    if [ "$uses_root" = 0 ]; then
        local d
        for d in "$MODELS_DIR" "$STATE_DIR"; do
            [ "$(stat -c %u "$d")" = "$RUNNER_UID" ] \
                || die "$d must belong to uid $RUNNER_UID, the runner's user (sudo chown -R $RUNNER_UID $DATA_DIR, or run as root)"
        done
    fi
}

run() {
    render_args
    prepare_dirs
    if docker container inspect "$CONTAINER_NAME" >/dev/null 2>&1; then
        log "replacing the running $CONTAINER_NAME (SIGTERM: it drains its jobs first)"
        docker stop --time 90 "$CONTAINER_NAME" >/dev/null
        docker rm "$CONTAINER_NAME" >/dev/null
    fi
    log "docker ${run_args[*]}"
    GPUFLEET_RUNNER_JOIN_TOKEN=${JOIN_TOKEN:-} docker "${run_args[@]}" >/dev/null \
        || die "docker run failed"
    [ "$WAIT_S" -gt 0 ] || { log "started $CONTAINER_NAME"; return; }
    log "waiting up to ${WAIT_S}s for $CONTAINER_NAME to be healthy (Triton's first start may pull its image)"
    local deadline=$((SECONDS + WAIT_S)) health state
    while :; do
        state=$(docker inspect -f '{{.State.Status}}' "$CONTAINER_NAME" 2>/dev/null || echo gone)
        health=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$CONTAINER_NAME" 2>/dev/null || true)
        if [ "$health" = healthy ]; then
            log "$CONTAINER_NAME is healthy; status: docker exec $CONTAINER_NAME gpufleet-runner status"
            return 0
        fi
        if [ "$state" != running ] && [ "$state" != restarting ] || [ "$health" = unhealthy ] || [ $SECONDS -ge $deadline ]; then
            docker logs --tail 60 "$CONTAINER_NAME" >&2 2>&1 || true
            die "$CONTAINER_NAME is $state${health:+ ($health)}; see docker logs $CONTAINER_NAME"
        fi
        sleep 2
    done
}

# One wheels+build at a time per checkout: a second one would replace the wheels while the
# first one's build context is being sent.
locked() {
    mkdir -p "$WHEELS_DIR"
    exec 9>"$WHEELS_DIR/.lock"
    flock 9
    "$@"
    flock -u 9
}
wheels_and_build() { wheels; build; }

case "$cmd" in
wheels) locked wheels ;;
build) locked wheels_and_build ;;
run) run ;;
args) render_args; printf '%s\n' "${run_args[@]}" ;;
all) locked wheels_and_build; run ;;
*) die "unknown command $cmd (all | wheels | build | run | args)" ;;
esac
