#!/usr/bin/env bash
# Install Triton's perf_analyzer (the load generator) for benchmarks and e2e tests
# (idempotent; prints the wrapper's path on its last line of stdout).
#
#   - tritonclient==2.51.0 (the CPU Triton image's version; its wheel ships the binary under
#     tritonclient-2.51.0.data/data/bin/) into its OWN virtual environment,
#     .cache/perf-analyzer/venv: the project's environment uses a newer tritonclient
#   - nvidia-cuda-runtime-cu12 into that environment (libcudart.so.12; no GPU is needed)
#   - Debian libb64-0d (libb64.so.0d) with apt-get when missing
#   - .cache/perf-analyzer/perf_analyzer: a wrapper that sets LD_LIBRARY_PATH and execs it
#
# Packages come from the package clients' own configured indexes. PERF_ANALYZER_DIR moves
# the install; PYTHON picks the interpreter for the venv (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

TRITONCLIENT_VERSION=2.51.0
DEST="${PERF_ANALYZER_DIR:-$PWD/.cache/perf-analyzer}"
WRAPPER="$DEST/perf_analyzer"
VENV="$DEST/venv"
log() { echo "install-perf-analyzer: $*" >&2; }

works() { [ -x "$WRAPPER" ] && "$WRAPPER" --version >/dev/null 2>&1; }

case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) ;;
    *) log "the tritonclient wheel ships perf_analyzer for Linux x86_64 only"; exit 2 ;;
esac

mkdir -p "$DEST"
exec 9>"$DEST/.lock"  # concurrent callers (pytest-xdist workers) install once
flock 9

if works; then
    log "already installed"
    echo "$WRAPPER"
    exit 0
fi

# --- libb64.so.0d (Debian libb64-0d)
if ! ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d'; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { log "need root (or sudo) for libb64-0d"; exit 1; }
        SUDO="sudo"
    fi
    log "installing libb64-0d"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    $SUDO env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends libb64-0d >&2
fi

# --- the separate venv, the tritonclient wheel (binary only: --no-deps) and libcudart
rm -rf "$VENV"  # a venv is not relocatable: a stale one (moved checkout) is rebuilt
"${PYTHON:-python3}" -m venv "$VENV"
mkdir -p "$DEST/wheels"
wheel=$(ls "$DEST"/wheels/tritonclient-"$TRITONCLIENT_VERSION"-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ]; then
    log "downloading tritonclient==$TRITONCLIENT_VERSION"
    "$VENV/bin/pip" download -q --no-deps --only-binary=:all: \
        -d "$DEST/wheels" "tritonclient==$TRITONCLIENT_VERSION" >&2
    wheel=$(ls "$DEST"/wheels/tritonclient-"$TRITONCLIENT_VERSION"-*.whl | head -n1)
fi
log "installing $(basename "$wheel") and nvidia-cuda-runtime-cu12 into $VENV"
"$VENV/bin/pip" install -q --no-deps "$wheel" nvidia-cuda-runtime-cu12 >&2

# The wheel's data/bin lands in the venv's bin (the wheel "data" scheme is the venv root).
binary="$VENV/bin/perf_analyzer"
[ -x "$binary" ] || { log "no perf_analyzer in $(basename "$wheel")"; exit 1; }
cudart=$("$VENV/bin/python" -c \
    'import nvidia.cuda_runtime as m, os; print(os.path.join(list(m.__path__)[0], "lib"))')
[ -e "$cudart/libcudart.so.12" ] || { log "no libcudart.so.12 in $cudart"; exit 1; }

tmp="$WRAPPER.tmp.$$"
cat >"$tmp" <<EOF
#!/usr/bin/env bash
# perf_analyzer from tritonclient==$TRITONCLIENT_VERSION (scripts/install-perf-analyzer.sh)
export LD_LIBRARY_PATH="$cudart\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$binary" "\$@"
EOF
chmod +x "$tmp"
mv -f "$tmp" "$WRAPPER"

if ! works; then
    log "the installed perf_analyzer does not run:"
    "$WRAPPER" --version >&2 || true
    exit 1
fi
log "$("$WRAPPER" --version 2>&1 | head -n1)"
echo "$WRAPPER"
