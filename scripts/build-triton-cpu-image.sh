#!/usr/bin/env bash
# Build the CPU Triton image used by the test rig (`make triton-cpu-image`), offline:
#   1. the nvidia-pytriton 0.7.0 wheel (a real Triton 2.51 `tritonserver`, its libraries and
#      the Python backend) is downloaded with pip and unpacked (never installed), and laid
#      out in NVIDIA's tree by scripts/triton-tree.sh (shared with the process backend tests);
#   2. a Debian bookworm root file system (python3, python3-numpy, libpython3.11, libgomp1)
#      is made with mmdebstrap from this machine's apt sources and `docker import`ed;
#   3. a small Dockerfile adds the Triton tree in NVIDIA's layout:
#        /opt/tritonserver/bin/tritonserver
#        /opt/tritonserver/lib/                       (the wheel's nvidia_pytriton.libs)
#        /opt/tritonserver/backends/python/           (+ the Python 3.11 stub)
#        /opt/tritonserver/caches/local/
#      ENTRYPOINT ["tritonserver", "--backend-directory=/opt/tritonserver/backends"];
#   4. the result is checked by serving model_repository/add_sub, then tagged.
# Idempotent: does nothing when the image exists (FORCE=1 rebuilds). Uses DOCKER_HOST.
# Downloads are cached in .cache/rig/ (RIG_CACHE_DIR).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
IMAGE=${TRITON_CPU_IMAGE:-gpufleet/tritonserver-cpu:2.51}
BASE_IMAGE=${RIG_BASE_IMAGE:-gpufleet/rig-bookworm-base:1}
CACHE=${RIG_CACHE_DIR:-$REPO/.cache/rig}
PYTRITON_VERSION=0.7.0
PYTHON=${PYTHON:-python3}
SUITE=bookworm
PACKAGES=python3,python3-numpy,libpython3.11,libgomp1
STUB_PY=3.11   # must match the Python of the root file system ($SUITE: 3.11)

t0=$SECONDS
log() { printf '[build-triton-cpu-image +%ss] %s\n' "$((SECONDS - t0))" "$*"; }
die() { printf 'build-triton-cpu-image: %s\n' "$*" >&2; exit 1; }

command -v docker >/dev/null 2>&1 || die "docker CLI not found (run scripts/install-rig-deps.sh)"
timeout 20 docker info >/dev/null 2>&1 \
    || die "no reachable Docker engine at DOCKER_HOST=${DOCKER_HOST:-<default>} (start one: scripts/dockerd.sh start /tmp/gf-dockerd)"

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "$IMAGE already present"
    exit 0
fi
mkdir -p "$CACHE"
# One build at a time per cache (parallel test workers share .cache/rig).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE/.build.lock"
    flock 9
    if [ "${FORCE:-0}" != 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
        log "$IMAGE already present"
        exit 0
    fi
fi

# --- 1. Triton from the nvidia-pytriton wheel: laid out in step 3 by scripts/triton-tree.sh -
# (download and unpack cached in $CACHE; the host-side process backend tests use the same
# script). A fresh tree goes into the build context: a tree a host Triton has run is changed
# by it (__pycache__, the stub's mode), so the cached host tree is not copied.

# --- 2. base root file system --------------------------------------------------------------
rootfs="$CACHE/$SUITE-rootfs.tar"
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    if [ ! -f "$rootfs" ]; then
        command -v mmdebstrap >/dev/null 2>&1 || die "mmdebstrap not found (run scripts/install-rig-deps.sh)"
        # This machine's own apt sources for the Debian archive (no mirror is named here).
        # RIG_APT_SOURCES overrides: space-separated sources files (deb822 or one-line).
        sources=()
        if [ -n "${RIG_APT_SOURCES:-}" ]; then
            read -r -a sources <<<"$RIG_APT_SOURCES"
        else
            for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
                [ -f "$f" ] || continue
                grep -Eq "^[^#]*[[:space:]]$SUITE([[:space:]]|\$)" "$f" || continue
                grep -Eqi '^[^#]*debian' "$f" || continue
                sources+=("$f")
            done
        fi
        log "mmdebstrap $SUITE ($PACKAGES) from ${sources[*]:-mmdebstrap defaults}"
        rm -f "$rootfs.tmp"
        mmdebstrap --variant=apt --include="$PACKAGES" --format=tar \
            --aptopt='Acquire::Languages "none"' \
            --dpkgopt='path-exclude=/usr/share/man/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' \
            --dpkgopt='path-exclude=/usr/share/doc/*' \
            --dpkgopt='path-include=/usr/share/doc/*/copyright' \
            "$SUITE" "$rootfs.tmp" "${sources[@]}" </dev/null \
            || { rm -f "$rootfs.tmp"; die "mmdebstrap failed"; }
        mv "$rootfs.tmp" "$rootfs"
    fi
    log "docker import $(basename "$rootfs") -> $BASE_IMAGE"
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' \
        "$rootfs" "$BASE_IMAGE" >/dev/null
fi

# --- 3. image with Triton --------------------------------------------------------------------
ctx=$(mktemp -d "$CACHE/context.XXXXXX")
log "preparing build context"
RIG_CACHE_DIR="$CACHE" PYTHON="$PYTHON" STUB_PY="$STUB_PY" \
    bash "$REPO/scripts/triton-tree.sh" "$ctx/opt/tritonserver" >/dev/null \
    || { rm -rf "$ctx"; die "scripts/triton-tree.sh failed"; }
rm -f "$ctx/opt/tritonserver/.complete"
cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $BASE_IMAGE
COPY opt/tritonserver /opt/tritonserver
ENV PATH=/opt/tritonserver/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    LD_LIBRARY_PATH=/opt/tritonserver/lib \\
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/tritonserver
LABEL org.opencontainers.image.title="gpufleet CPU Triton (test rig)" \\
      org.opencontainers.image.version="2.51 (nvidia-pytriton $PYTRITON_VERSION)"
ENTRYPOINT ["/opt/tritonserver/bin/tritonserver", "--backend-directory=/opt/tritonserver/backends"]
DOCKERFILE
candidate="$IMAGE-candidate"
log "docker build -> $candidate"
# The classic builder: needs no buildx plugin and no registry.
if ! DOCKER_BUILDKIT=0 docker build -t "$candidate" "$ctx" >"$ctx.log" 2>&1; then
    cat "$ctx.log" >&2
    die "docker build failed"
fi
rm -rf "$ctx" "$ctx.log"

# --- 4. check: serve add_sub, infer, scrape metrics -----------------------------------------
if [ "${RIG_SKIP_VERIFY:-0}" != 1 ]; then
    log "verifying $candidate with model_repository/add_sub"
    read -r http_port grpc_port metrics_port < <("$PYTHON" - <<'PY'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
for s in socks:
    s.close()
PY
)
    name="gf-triton-verify-$$"
    cleanup() { docker rm -f "$name" >/dev/null 2>&1 || true; }
    trap cleanup EXIT
    docker run -d --name "$name" --network host --shm-size=256m \
        -v "$REPO/model_repository:/models:ro" "$candidate" \
        --model-repository=/models --model-control-mode=explicit --load-model=add_sub \
        --http-address=127.0.0.1 --http-port="$http_port" \
        --grpc-address=127.0.0.1 --grpc-port="$grpc_port" \
        --metrics-address=127.0.0.1 --metrics-port="$metrics_port" >/dev/null
    if ! "$PYTHON" - "$http_port" "$metrics_port" <<'PY'
import json, sys, time, urllib.request
http, metrics = sys.argv[1], sys.argv[2]
base = f"http://127.0.0.1:{http}"
deadline = time.monotonic() + 90
while True:
    try:
        with urllib.request.urlopen(f"{base}/v2/models/add_sub/ready", timeout=2) as r:
            if r.status == 200:
                break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit("add_sub not ready after 90 s")
    time.sleep(0.5)
body = {"inputs": [
    {"name": "INPUT0", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6, 7, 8]},
    {"name": "INPUT1", "shape": [2, 4], "datatype": "FP32", "data": [1, 1, 1, 1, 2, 2, 2, 2]},
]}
req = urllib.request.Request(f"{base}/v2/models/add_sub/infer", data=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=10) as r:
    out = {o["name"]: o["data"] for o in json.load(r)["outputs"]}
assert out["OUTPUT0"] == [2, 3, 4, 5, 7, 8, 9, 10], out
assert out["OUTPUT1"] == [0, 1, 2, 3, 3, 4, 5, 6], out
with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as r:
    text = r.read().decode()
assert 'nv_inference_request_success{model="add_sub",version="1"} 1' in text, text[:2000]
print("verify: add_sub inference and metrics OK")
PY
    then
        echo "--- tritonserver log ---" >&2
        docker logs "$name" 2>&1 | tail -n 80 >&2 || true
        die "verification of $candidate failed"
    fi
    cleanup
    trap - EXIT
fi

docker tag "$candidate" "$IMAGE"
docker rmi "$candidate" >/dev/null
log "built $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
