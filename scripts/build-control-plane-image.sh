#!/usr/bin/env bash
# Build the control-plane image (Dockerfile.control-plane) from wheels made here.
#
#   scripts/build-control-plane-image.sh [all|wheels|build]     (default: all = wheels build)
#
#   wheels  the gpufleet and gpufleet-control-plane wheels (distributions/) + the wheels of
#           their dependencies for the image's Python and platform, into $WHEELS_DIR (app/
#           and deps/); the dependency wheels are downloaded once per
#           distributions/{gpufleet,control-plane}/pyproject.toml (a stamp file), with pip
#   build   docker build --network none -f Dockerfile.control-plane (nothing fetched)
#
# Settings (environment):
#   IMAGE            the tag                                   (gpufleet/control-plane:VERSION)
#   BASE_IMAGE       build argument BASE_IMAGE                 (the Dockerfile's default)
#   PYTHON_VERSION   Python of BASE_IMAGE, for the wheels      (3.11)
#   WHEELS_DIR       wheel directory, inside the repository    (.cache/control-plane-wheels)
#   OFFLINE=1        use the wheels in WHEELS_DIR as they are (air-gapped build hosts)
#   PYTHON           the Python that builds the wheels         (.venv/bin/python, else python3)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
VERSION=$("$PYTHON" -c 'import re; print(re.search(r"__version__ = \"([^\"]+)\"", open("sdk/gpufleet/_version.py").read())[1])')
IMAGE=${IMAGE:-gpufleet/control-plane:$VERSION}
PYTHON_VERSION=${PYTHON_VERSION:-3.11}
WHEELS_DIR=${WHEELS_DIR:-.cache/control-plane-wheels}
ARCH=${ARCH:-$(uname -m)}
PLATFORMS=""
for glibc in 2_36 2_35 2_34 2_31 2_28 2_27 2_24 2_17; do PLATFORMS+="manylinux_${glibc}_$ARCH "; done
PLATFORMS+="manylinux2014_$ARCH linux_$ARCH"
[ "$ARCH" = x86_64 ] && PLATFORMS+=" manylinux2010_x86_64 manylinux1_x86_64"

t0=$SECONDS
log() { printf '[control-plane-image +%ss] %s\n' "$((SECONDS - t0))" "$*"; }
die() { printf 'build-control-plane-image: %s\n' "$*" >&2; exit 1; }
case "$WHEELS_DIR" in /*) die "WHEELS_DIR must be relative to the repository: $WHEELS_DIR" ;; esac

wheels() {
    local app="$WHEELS_DIR/app" deps="$WHEELS_DIR/deps"
    if [ "${OFFLINE:-0}" = 1 ]; then
        ls "$app"/gpufleet-*.whl "$app"/gpufleet_control_plane-*.whl "$app"/pip-*.whl "$deps"/pip-*.whl >/dev/null 2>&1 \
            || die "OFFLINE=1 but $WHEELS_DIR lacks app/gpufleet-*.whl, app/gpufleet_control_plane-*.whl, app/pip-*.whl or deps/pip-*.whl"
        log "OFFLINE=1: using the wheels in $WHEELS_DIR as they are"
        return
    fi
    mkdir -p "$app" "$deps"
    log "building the gpufleet and gpufleet-control-plane wheels (distributions/)"
    rm -f "$app"/gpufleet-*.whl "$app"/gpufleet_*.whl
    "$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$app" distributions/gpufleet distributions/control-plane \
        || die "pip wheel of distributions/gpufleet and distributions/control-plane failed"
    local sdk part stamp platform_args=()
    sdk=$(ls "$app"/gpufleet-*.whl | head -n 1)
    part=$(ls "$app"/gpufleet_control_plane-*.whl | head -n 1)
    stamp="$deps/.stamp-$( { cat distributions/gpufleet/pyproject.toml distributions/control-plane/pyproject.toml; echo "$PYTHON_VERSION $PLATFORMS"; } | sha256sum | cut -c1-16)"
    if [ -f "$stamp" ]; then
        log "dependency wheels up to date ($deps)"
    else
        for p in $PLATFORMS; do platform_args+=(--platform "$p"); done
        log "downloading the gpufleet-control-plane dependency wheels for Python $PYTHON_VERSION"
        rm -rf "$deps" && mkdir -p "$deps"
        "$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
            --python-version "$PYTHON_VERSION" --implementation cp "${platform_args[@]}" \
            --dest "$deps" "$part" "$sdk" pip \
            || die "pip download of the gpufleet-control-plane dependencies failed"
        rm -f "$deps"/gpufleet-*.whl "$deps"/gpufleet_*.whl
        touch "$stamp"
        log "wheels ready: $(ls "$deps"/*.whl | wc -l) files, $(du -sh "$deps" | cut -f1)"
    fi
    rm -f "$app"/pip-*.whl
    cp "$(ls "$deps"/pip-*.whl | head -n 1)" "$app/"
}

build() {
    command -v docker >/dev/null 2>&1 || die "docker CLI not found"
    local build_args=(--build-arg "WHEELS=$WHEELS_DIR")
    [ -n "${BASE_IMAGE:-}" ] && build_args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
    log "docker build -f Dockerfile.control-plane -t $IMAGE ${BASE_IMAGE:+(base $BASE_IMAGE)}"
    DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} docker build --network none \
        --file Dockerfile.control-plane --tag "$IMAGE" "${build_args[@]}" . \
        || die "docker build failed"
    log "built $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
}

case "${1:-all}" in
all) wheels; build ;;
wheels) wheels ;;
build) build ;;
*) die "usage: $0 [all|wheels|build]" ;;
esac
