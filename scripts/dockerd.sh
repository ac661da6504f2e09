#!/usr/bin/env bash
# Start/stop a private Docker engine for the test rig.
#
#   scripts/dockerd.sh start DIR   -> prints the engine address (unix://DIR/docker.sock)
#   scripts/dockerd.sh stop DIR    -> stops the engine whose pid is in DIR/pid (no-op if none)
#
# The engine keeps everything under DIR (data root, exec root, socket, pidfile, log) and
# touches no host networking: --bridge=none --iptables=false --ip-forward=false, so
# containers must use the host network (servers inside bind 127.0.0.1).
# If DOCKER_HOST already points at a reachable engine, `start` prints it and does nothing.
# Keep DIR short (a unix socket path is limited to 108 bytes): use e.g. /tmp/gf-dockerd.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
dir=$2
START_TIMEOUT=${DOCKERD_START_TIMEOUT:-60}
STOP_TIMEOUT=${DOCKERD_STOP_TIMEOUT:-30}

reachable() {  # reachable ADDRESS
    timeout 10 docker -H "$1" info >/dev/null 2>&1
}

is_our_dockerd() {  # is_our_dockerd PID -> the pid is alive and is a dockerd
    local pid=$1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "dockerd" ]
}

case "$cmd" in
start)
    command -v docker >/dev/null 2>&1 || { echo "dockerd.sh: docker CLI not found (run scripts/install-rig-deps.sh)" >&2; exit 127; }
    if [ -n "${DOCKER_HOST:-}" ] && reachable "$DOCKER_HOST"; then
        echo "$DOCKER_HOST"
        exit 0
    fi
    command -v dockerd >/dev/null 2>&1 || { echo "dockerd.sh: dockerd not found (run scripts/install-rig-deps.sh)" >&2; exit 127; }
    [ "$(id -u)" -eq 0 ] || { echo "dockerd.sh: a private dockerd needs root" >&2; exit 1; }
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd -P)
    sock="$dir/docker.sock"
    addr="unix://$sock"
    if [ "${#sock}" -ge 108 ]; then
        echo "dockerd.sh: socket path too long (${#sock} >= 108 bytes): $sock; use a shorter DIR such as /tmp/gf-dockerd" >&2
        exit 1
    fi
    # Already running from an earlier `start` with the same DIR?
    if [ -f "$dir/pid" ] && is_our_dockerd "$(cat "$dir/pid")" && reachable "$addr"; then
        echo "$addr"
        exit 0
    fi
    mkdir -p "$dir/data" "$dir/exec"
    log="$dir/dockerd.log"
    # setsid: the engine must not get the caller's terminal signals (Ctrl-C in pytest).
    setsid dockerd \
        --data-root "$dir/data" \
        --exec-root "$dir/exec" \
        -H "$addr" \
        --pidfile "$dir/pid" \
        --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
        --userland-proxy=false \
        </dev/null >"$log" 2>&1 &
    launcher=$!
    echo "$launcher" >"$dir/launcher.pid"
    deadline=$((SECONDS + START_TIMEOUT))
    until reachable "$addr"; do
        if ! kill -0 "$launcher" 2>/dev/null; then
            echo "dockerd.sh: dockerd exited during start-up; log ($log):" >&2
            tail -n 60 "$log" >&2 || true
            exit 1
        fi
        if [ $SECONDS -ge $deadline ]; then
            echo "dockerd.sh: dockerd not reachable at $addr after ${START_TIMEOUT}s; log ($log):" >&2
            tail -n 60 "$log" >&2 || true
            kill -TERM "$launcher" 2>/dev/null || true
            exit 1
        fi
        sleep 0.5
    done
    echo "$addr"
    ;;
stop)
    [ -d "$dir" ] || exit 0
    dir=$(cd "$dir" && pwd -P)
    pid=""
    if [ -f "$dir/pid" ]; then pid=$(cat "$dir/pid"); fi
    if ! is_our_dockerd "$pid"; then
        # Fall back on the pid recorded at launch (dockerd may have died before its pidfile).
        pid=""
        if [ -f "$dir/launcher.pid" ] && is_our_dockerd "$(cat "$dir/launcher.pid")"; then
            pid=$(cat "$dir/launcher.pid")
        fi
    fi
    if [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + STOP_TIMEOUT))
        while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "dockerd.sh: dockerd $pid still running after ${STOP_TIMEOUT}s, sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
            while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
        fi
    fi
    rm -f "$dir/launcher.pid"
    # Leave no mounts behind under DIR (a killed engine can leave overlay/shm mounts),
    # so that DIR can be removed.
    if [ -r /proc/self/mounts ]; then
        awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r |
            while read -r m; do umount -l "$m" 2>/dev/null || true; done
    fi
    ;;
*)
    usage
    ;;
esac
