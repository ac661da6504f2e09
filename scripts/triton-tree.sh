#!/usr/bin/env bash
# Lay out a real Triton Inference Server (2.51, CPU) in NVIDIA's layout, offline from the
# nvidia-pytriton 0.7.0 wheel (downloaded with pip and unpacked, never installed):
#     DEST/bin/tritonserver
#     DEST/lib/                      (the wheel's nvidia_pytriton.libs: LD_LIBRARY_PATH)
#     DEST/backends/python/          (+ triton_python_backend_stub for Python $STUB_PY)
#     DEST/caches/local/
# Shared by scripts/build-triton-cpu-image.sh (copied to /opt/tritonserver in the image) and
# the runner's process backend on the host (tests/rig.py ensure_tritonserver_tree()).
#
#   scripts/triton-tree.sh [DEST]    # prints DEST (default: $RIG_CACHE_DIR/tritonserver-2.51-py$STUB_PY)
#
# The Python backend stub embeds the system Python $STUB_PY (libpython$STUB_PY) and needs
# numpy in that Python (Debian: libpython3.11, python3-numpy). Idempotent: a complete DEST is
# left as it is (FORCE=1 lays it out again). Downloads are cached in .cache/rig/ (RIG_CACHE_DIR).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
CACHE=${RIG_CACHE_DIR:-$REPO/.cache/rig}
PYTRITON_VERSION=0.7.0
PYTHON=${PYTHON:-python3}
STUB_PY=${STUB_PY:-3.11}
DEST=${1:-$CACHE/tritonserver-2.51-py$STUB_PY}

log() { printf '[triton-tree] %s\n' "$*" >&2; }
die() { printf 'triton-tree: %s\n' "$*" >&2; exit 1; }

marker="$DEST/.complete"
stamp="nvidia-pytriton $PYTRITON_VERSION, python stub $STUB_PY"
complete() { [ -f "$marker" ] && [ "$(cat "$marker")" = "$stamp" ] && [ -x "$DEST/bin/tritonserver" ]; }

if [ "${FORCE:-0}" != 1 ] && complete; then
    echo "$DEST"
    exit 0
fi
mkdir -p "$CACHE"
# One writer at a time per cache (parallel test workers and image builds share .cache/rig).
if command -v flock >/dev/null 2>&1; then
    exec 8>"$CACHE/.tree.lock"
    flock 8
    if [ "${FORCE:-0}" != 1 ] && complete; then
        echo "$DEST"
        exit 0
    fi
fi

# --- the wheel, downloaded once and unpacked once ----------------------------------------
wheel=$(ls "$CACHE"/nvidia_pytriton-"$PYTRITON_VERSION"-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ]; then
    log "downloading nvidia-pytriton==$PYTRITON_VERSION"
    # --platform: the wheel may go into an image, whatever this host's glibc is.
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
        --platform manylinux_2_35_x86_64 --python-version 3.11 \
        "nvidia-pytriton==$PYTRITON_VERSION" -d "$CACHE" >&2 \
        || die "pip download nvidia-pytriton==$PYTRITON_VERSION failed"
    wheel=$(ls "$CACHE"/nvidia_pytriton-"$PYTRITON_VERSION"-*.whl | head -n1)
fi
unpacked="$CACHE/pytriton-$PYTRITON_VERSION"
if [ ! -f "$unpacked/.complete" ]; then
    log "unpacking $(basename "$wheel")"
    rm -rf "$unpacked"
    "$PYTHON" -m zipfile -e "$wheel" "$unpacked"
    touch "$unpacked/.complete"
fi
tsrc="$unpacked/pytriton/tritonserver"
[ -f "$tsrc/bin/tritonserver" ] || die "no tritonserver binary in $wheel"
stub="$tsrc/python_backend_stubs/$STUB_PY/triton_python_backend_stub"
[ -f "$stub" ] || die "no Python $STUB_PY stub in $wheel"

# --- NVIDIA's layout ------------------------------------------------------------------------
# Never clobber a directory this script did not make (no marker) unless it is empty.
if [ -e "$DEST" ] && [ ! -f "$marker" ] && [ -n "$(ls -A "$DEST" 2>/dev/null)" ]; then
    die "$DEST exists and is not a tree made by this script; pick another DEST"
fi
log "laying out $DEST"
tmp="$DEST.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
cp -a "$tsrc/bin" "$tsrc/backends" "$tsrc/caches" "$tmp/"
cp -a "$unpacked/nvidia_pytriton.libs" "$tmp/lib"
cp -a "$stub" "$tmp/backends/python/"
chmod 0755 "$tmp/bin/tritonserver" "$tmp/backends/python/triton_python_backend_stub"
echo "$stamp" >"$tmp/.complete"
rm -rf "$DEST"
mkdir -p "$(dirname "$DEST")"
mv "$tmp" "$DEST"
echo "$DEST"
