#!/usr/bin/env bash
# Install what the real-component test rig needs (idempotent):
#   - Debian docker.io     (dockerd, containerd, runc, docker CLI)
#   - Debian mmdebstrap    (builds the CPU Triton image's root file system offline)
#   - Debian python3-numpy (the host-side Triton of the runner's process backend: the Python
#                           backend's stub embeds the system Python, which needs numpy)
#   - Debian chromium + chromium-driver (the console's browser tests, headless; selenium
#                           is pointed at both, so nothing downloads a browser)
# Uses the machine's own apt sources. Exits 0 when everything is already present.
set -euo pipefail

deb_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# perf_analyzer in its own venv (.cache/perf-analyzer; exit 2: no binary for this platform)
bash "$(dirname "$0")/install-perf-analyzer.sh" >/dev/null || [ $? -eq 2 ]

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
deb_installed python3-numpy || need+=(python3-numpy)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)

if [ "${#need[@]}" -eq 0 ]; then
    echo "install-rig-deps: dockerd, mmdebstrap, python3-numpy and chromium already present"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-rig-deps: need root (or sudo) to install: ${need[*]}" >&2
        exit 1
    fi
fi

echo "install-rig-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"

for bin in dockerd mmdebstrap chromium chromedriver; do
    command -v "$bin" >/dev/null 2>&1 || { echo "install-rig-deps: $bin still missing" >&2; exit 1; }
done
deb_installed python3-numpy || { echo "install-rig-deps: python3-numpy still missing" >&2; exit 1; }
echo "install-rig-deps: done"
