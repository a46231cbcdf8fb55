#!/usr/bin/env bash
# Stop a vLLM server started by serve.sh.
#
#   scripts/vllm-cpu/stop.sh
#   PORT=8001 scripts/vllm-cpu/stop.sh
#
# Sends SIGTERM to the server's process group (serve.sh starts it with setsid,
# so the group holds the API server, VLLM::EngineCore and VLLM::Worker) and to
# any descendant that left the group, waits up to STOP_TIMEOUT (20) seconds,
# then SIGKILLs whatever is left. Idempotent: exits 0 when nothing runs.
#
# Variables: PORT [8000], PIDFILE [$CACHE/run/vllm-$PORT.pid], STOP_TIMEOUT [20].
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PORT=${PORT:-8000}
PIDFILE=${PIDFILE:-$RUN_DIR/vllm-$PORT.pid}
STOP_TIMEOUT=${STOP_TIMEOUT:-20}

if [[ ! -s $PIDFILE ]]; then
    echo "vllm on port $PORT: not running (no pidfile $PIDFILE)"
    exit 0
fi
pid=$(<"$PIDFILE")
if ! [[ $pid =~ ^[0-9]+$ ]] || ! kill -0 "$pid" 2>/dev/null; then
    echo "vllm on port $PORT: not running (stale pidfile, pid ${pid:-?})"
    rm -f "$PIDFILE"
    exit 0
fi
# Guard against a recycled PID: the process must be our python running vLLM.
if ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'vllm'; then
    echo "pid $pid from $PIDFILE is not a vLLM process; removing the stale pidfile"
    rm -f "$PIDFILE"
    exit 0
fi

descendants() { # all descendants of $1, depth first
    local child
    for child in $(pgrep -P "$1" || true); do
        echo "$child"
        descendants "$child"
    done
}
mapfile -t procs < <(echo "$pid"; descendants "$pid")
pgid=$(ps -o pgid= -p "$pid" | tr -d ' ')

signal_all() { # signal_all SIG
    if [[ $pgid == "$pid" ]]; then
        kill "-$1" -- "-$pgid" 2>/dev/null || true
    fi
    local p
    for p in "${procs[@]}"; do
        kill "-$1" "$p" 2>/dev/null || true
    done
}
alive() {
    local p n=0
    for p in "${procs[@]}"; do
        # a zombie still answers kill -0; count it as gone
        if kill -0 "$p" 2>/dev/null && [[ $(ps -o stat= -p "$p" 2>/dev/null) != Z* ]]; then
            n=$((n + 1))
        fi
    done
    echo "$n"
}

t0=$SECONDS
echo "stopping vllm on port $PORT: SIGTERM to pid $pid (${#procs[@]} processes, pgid $pgid)"
signal_all TERM
deadline=$((SECONDS + STOP_TIMEOUT))
while (($(alive) > 0)) && ((SECONDS < deadline)); do
    sleep 0.2
done
if (($(alive) > 0)); then
    echo "still running after ${STOP_TIMEOUT}s; SIGKILL"
    signal_all KILL
    sleep 0.5
fi
rm -f "$PIDFILE"
left=$(alive)
if ((left > 0)); then
    echo "stop.sh: $left process(es) still alive after SIGKILL" >&2
    exit 1
fi

# vLLM leaves its ZMQ IPC socket files (uuid names) and vllm_dist_* rendezvous
# files in $TMPDIR (= $CACHE/tmp) behind. Remove them once no server started
# by serve.sh is left running; the compile cache (torchinductor_*) stays.
others=0
for f in "$RUN_DIR"/*.pid; do
    [[ -s $f ]] || continue
    p=$(<"$f")
    [[ $p =~ ^[0-9]+$ ]] && kill -0 "$p" 2>/dev/null && others=$((others + 1))
done
if ((others == 0)) && [[ -d $CACHE/tmp ]]; then
    find "$CACHE/tmp" -maxdepth 1 \( -type s -o -name 'vllm_dist_*' \) -delete 2>/dev/null || true
fi
echo "vllm on port $PORT stopped after $((SECONDS - t0))s"
