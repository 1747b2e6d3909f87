#!/usr/bin/env bash
# Start a Docker engine when none answers, and stop it later only if this script started it.
#
#   deploy/docker-engine.sh start   # no-op when `docker info` already answers
#   deploy/docker-engine.sh stop    # stops the dockerd that `start` launched (by pid), else nothing
#   deploy/docker-engine.sh status
#
# The engine runs with --iptables=false and the overlay2 storage driver, falling back to vfs when
# the kernel or filesystem cannot do overlay mounts (vfs copies the whole image for every
# container: about a minute per container for edgefed's 1.8 GB image on 2 cores). Set
# EDGEFED_DOCKERD_ARGS to choose the flags yourself. State (pid file, log, the "we started it"
# marker) lives in EDGEFED_DOCKER_STATE.
set -euo pipefail

state=${EDGEFED_DOCKER_STATE:-/tmp/edgefed-dockerd}
wait_s=${EDGEFED_DOCKER_WAIT:-90}
pidfile=$state/dockerd.pid
log=$state/dockerd.log
marker=$state/started-by-edgefed
containerd_pidfile=/var/run/docker/containerd/containerd.pid  # dockerd's own (default exec-root)

answers() { timeout 10 docker info >/dev/null 2>&1; }

# Whether pid $1 runs program $2 and is not a zombie (a killed process stays a zombie until its
# parent reaps it; dockerd would still count it as running).
live() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    case $stat in
        "$1 ($2) Z"*) return 1 ;;
        "$1 ($2) "*) return 0 ;;
        *) return 1 ;;
    esac
}

# The pid in the marker when it is a live dockerd (a stale marker may name a reused pid).
ours() {
    local pid
    pid=$(cat "$marker" 2>/dev/null) || return 1
    live "$pid" dockerd && echo "$pid"
}

# Once our dockerd is gone: the containerd it ran is killed if it outlived it, and its pid file
# removed (a next dockerd would wait on that pid, even a zombie's, instead of starting its own).
reap_containerd() {
    local pid waited
    pid=$(cat "$containerd_pidfile" 2>/dev/null) || return 0
    for waited in $(seq 1 10); do
        live "$pid" containerd || break
        [ "$waited" = 5 ] && kill -KILL "$pid" 2>/dev/null
        sleep 1
    done
    rm -f "$containerd_pidfile"
}

# Launch dockerd with the flags "$@" and wait until it answers. Returns 1 if it exits first.
launch() {
    mkdir -p "$state"
    setsid dockerd "$@" --pidfile "$pidfile" >"$log" 2>&1 </dev/null &
    echo $! >"$marker"
    local waited=0
    until answers; do
        if ! ours >/dev/null; then
            echo "docker-engine: dockerd $* exited; last log lines:" >&2
            tail -n 5 "$log" >&2
            rm -f "$marker"
            reap_containerd
            return 1
        fi
        if [ "$waited" -ge "$wait_s" ]; then
            echo "docker-engine: no answer after ${wait_s}s; stopping it (log: $log)" >&2
            stop
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    echo "docker-engine: dockerd $* (pid $(cat "$marker")) answers (log: $log)"
}

start() {
    if answers; then
        echo "docker-engine: an engine already answers; leaving it alone"
        return 0
    fi
    command -v dockerd >/dev/null || { echo "docker-engine: dockerd not installed" >&2; exit 1; }
    [ "$(id -u)" = 0 ] || { echo "docker-engine: starting dockerd needs root" >&2; exit 1; }
    if ours >/dev/null; then
        echo "docker-engine: the dockerd started earlier does not answer; restarting it" >&2
        stop >&2
    fi
    if [ -n "${EDGEFED_DOCKERD_ARGS:-}" ]; then
        # shellcheck disable=SC2086  # a list of flags
        launch $EDGEFED_DOCKERD_ARGS || exit 1
    else
        launch --storage-driver=overlay2 --iptables=false ||
            launch --storage-driver=vfs --iptables=false || exit 1
    fi
}

stop() {
    if [ ! -f "$marker" ]; then
        echo "docker-engine: not started by this script; leaving it alone"
        return 0
    fi
    local pid
    if ! pid=$(ours); then
        rm -f "$marker"
        reap_containerd
        echo "docker-engine: the dockerd started earlier is gone"
        return 0
    fi
    kill -TERM "$pid"
    for _ in $(seq 1 30); do
        ours >/dev/null || break
        sleep 1
    done
    if ours >/dev/null; then
        echo "docker-engine: dockerd $pid ignored TERM for 30s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
        for _ in $(seq 1 10); do
            ours >/dev/null || break
            sleep 1
        done
    fi
    rm -f "$marker" "$pidfile"  # a killed dockerd leaves its pid file, which blocks the next start
    reap_containerd
    echo "docker-engine: dockerd $pid stopped"
}

status() {
    local pid
    if answers; then echo "answers"; else echo "down"; fi
    if pid=$(ours); then echo "started by this script: pid $pid"; fi
    return 0
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
