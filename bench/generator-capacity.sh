#!/usr/bin/env bash
# How fast can the open-loop generator send? (method and results: BENCHMARKS.md, "Generator
# capacity").
#
#   bench/generator-capacity.sh
#
# Against the built-in simulator in its fastest mode (`simulate --fixed-timing 0ms,1us` with
# one output token: the first and only token at once, no engine), for each request rate R of a ladder, one open-loop
# level of constant gaps (so the schedule's own rate is exactly R):
# - ours: `sweep --rate R --arrival constant --requests R*SECONDS --warmup 0s --max-tokens 1`;
#   its report gives, per level, `schedule.achieved_send_rate_rps` (sends / time to the last
#   send) and `schedule.lag_s` (actual send − scheduled arrival, per request);
# - vLLM's client: `vllm bench serve --request-rate R --burstiness inf --num-prompts R*SECONDS
#   --random-output-len 1 --save-detailed`; achieved rate = num_prompts / duration from its
#   result file. It reports no lag: we judge it from its `start_times` (send times), as
#   (send_i − i/R) − min over j of (send_j − j/R) (its schedule puts request i at i/R after
#   request 0; the request earliest against that schedule is taken as on time, so this is a
#   lower bound of its lag). The same for vllm-bench (VLLM_BENCH_RS), whose file is the same.
# A rate is kept up when the achieved rate is within 1 % of R and the lag p99 ≤ 100 µs. Each
# client runs pinned to 1 core (CPU 0) and to 2 cores (CPUs 0-1) (CLIENT_CPUS); the simulator
# has CPU 1 (SIM_CPUS; on a 2-core machine it shares that CPU with a 2-core client: on a larger
# host give it CPUs of its own, e.g. SIM_CPUS=4-5). Ours runs with --no-gpu (GPU=1 keeps the
# NVML sampling): the sampler's threads share the pinned cores with the sender, and vLLM's
# client samples no GPU either.
#
# Variables: BIN [target/release/vllm-sentinel], OUT [target/bench-generator], SECONDS_PER_LEVEL
# [2], OURS_RATES [250 500 1000 2000 4000 8000 16000], VLLM_RATES [50 100 200 400 800 1600],
# SKIP_VLLM / SKIP_OURS [unset; 1 skips that client], PORT [18431], PRECISE [unset; 1 adds
# --precise-arrivals to ours], GPU [unset; 1 samples the GPUs in ours], CLIENT_CPUS ["0 0-1"],
# SIM_CPUS [1], VLLM_BENCH_RS [unset; the path of a vllm-bench binary (vLLM's Rust client, built
# outside this repository) adds it as a third client], RS_RATES [OURS_RATES], TOKENIZER [the
# tier's tiny model]. Rows are appended to OUT/results.csv.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/vllm-sentinel}
OUT=${OUT:-target/bench-generator}
SECS=${SECONDS_PER_LEVEL:-2}
OURS_RATES=${OURS_RATES:-250 500 1000 2000 4000 8000 16000}
VLLM_RATES=${VLLM_RATES:-50 100 200 400 800 1600}
PORT=${PORT:-18431}
CLIENT_CPUS=${CLIENT_CPUS:-0 0-1}
SIM_CPUS=${SIM_CPUS:-1}
[ -x "$BIN" ] || cargo build --release --locked
mkdir -p "$OUT"

taskset -c "$SIM_CPUS" "$BIN" simulate --listen "127.0.0.1:$PORT" --fixed-timing 0ms,1us \
    --max-model-len 4096 --log-level warn >"$OUT/sim.log" 2>&1 &
sim=$!
trap 'kill $sim 2>/dev/null || true' EXIT
up=0
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && { up=1; break; }
    sleep 0.1
done
[ "$up" = 1 ] || { cat "$OUT/sim.log"; echo "the simulator did not start" >&2; exit 1; }

[ -f "$OUT/results.csv" ] || echo "client,cpus,rate,achieved_rps,lag_p50_us,lag_p99_us,verdict" >"$OUT/results.csv"
for cpus in ${SKIP_OURS:+none} $CLIENT_CPUS; do
    [ "$cpus" = none ] && break
    json="$OUT/ours-$cpus.json"
    # one run per rate: R*SECS requests each (--requests is the same for every level of a run)
    for r in $OURS_RATES; do
        n=$(python3 -c "print(max(200, int($r * $SECS)))")
        taskset -c "$cpus" "$BIN" sweep --target "http://127.0.0.1:$PORT" --no-progress \
            --rate "$r" --arrival constant --requests "$n" --warmup 0s --prompt-tokens 8 \
            --max-tokens 1 --no-server-metrics --max-in-flight 100000 --json "$json" \
            ${PRECISE:+--precise-arrivals} $([ "${GPU:-}" = 1 ] || echo --no-gpu) >/dev/null
        python3 - "$json" "$r" "$cpus" >>"$OUT/results.csv" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
l = d["sweep"]["levels"][0]
s = l["schedule"]
r = float(sys.argv[2])
a, p50, p99 = s["achieved_send_rate_rps"], s["lag_s"]["p50"], s["lag_s"]["p99"]
ok = abs(a / r - 1) <= 0.01 and p99 <= 100e-6
precise = " precise" if d["settings"].get("precise_arrivals") else ""
print(f"vllm-sentinel{precise},{sys.argv[3]},{r:g},{a:.1f},{p50 * 1e6:.1f},{p99 * 1e6:.1f},{'kept up' if ok else 'NOT kept up'}")
EOF
        tail -1 "$OUT/results.csv"
    done
done

# The lag of a client that writes vLLM's result file with --save-detailed, judged from its
# start_times (args: result dir, rate, cpus, client label).
judge_vllm_result() {
    python3 - "$@" <<'EOF'
import glob, json, sys
d = json.load(open(glob.glob(sys.argv[1] + "/*.json")[0]))
r = float(sys.argv[2])
n = d["num_prompts"]
if d["completed"] != n:
    sys.exit(f"{sys.argv[4]}: only {d['completed']} of {n} requests completed")
a = n / d["duration"]
st = d["start_times"]
off = [t - i / r for i, t in enumerate(st)]
lag = sorted(o - min(off) for o in off)
p = lambda q: lag[min(len(lag) - 1, int(q * (len(lag) - 1) + 0.5))]
ok = abs(a / r - 1) <= 0.01 and p(0.99) <= 100e-6
print(f"{sys.argv[4]},{sys.argv[3]},{r:g},{a:.1f},{p(0.5) * 1e6:.1f},{p(0.99) * 1e6:.1f},{'kept up' if ok else 'NOT kept up'}")
EOF
}

# vLLM's Rust client (vllm-bench), when a binary built outside this repository is given: the
# same flags and result file as `vllm bench serve`; it needs a tokenizer directory (TOKENIZER,
# default the real-vLLM tier's tiny model).
if [ -n "${VLLM_BENCH_RS:-}" ]; then
    if [ -z "${TOKENIZER:-}" ]; then
        # shellcheck source=../scripts/vllm-cpu/common.sh
        . scripts/vllm-cpu/common.sh
        TOKENIZER=$TINY_MODEL_DIR
    fi
    for cpus in $CLIENT_CPUS; do
        for r in ${RS_RATES:-$OURS_RATES}; do
            n=$(python3 -c "print(max(200, int($r * $SECS)))")
            d="$OUT/vllm-bench-$cpus-$r"
            rm -rf "$d" && mkdir -p "$d"
            taskset -c "$cpus" "$VLLM_BENCH_RS" --backend vllm --base-url "http://127.0.0.1:$PORT" \
                --model sim-model --tokenizer "$TOKENIZER" --dataset-name random \
                --random-input-len 8 --random-output-len 1 --ignore-eos --num-prompts "$n" \
                --request-rate "$r" --burstiness inf --seed 0 --disable-tqdm --save-result \
                --save-detailed --result-dir "$d" >"$d/log.txt" 2>&1 || {
                echo "vllm-bench failed at $r req/s (see $d/log.txt)"
                continue
            }
            judge_vllm_result "$d" "$r" "$cpus" vllm-bench >>"$OUT/results.csv" || continue
            tail -1 "$OUT/results.csv"
        done
    done
fi

if [ "${SKIP_VLLM:-}" != 1 ]; then
    # shellcheck source=../scripts/vllm-cpu/common.sh
    . scripts/vllm-cpu/common.sh
    for cpus in $CLIENT_CPUS; do
        for r in $VLLM_RATES; do
            n=$(python3 -c "print(max(100, int($r * $SECS)))")
            d="$OUT/vllm-$cpus-$r"
            rm -rf "$d" && mkdir -p "$d"
            PORT=$PORT SERVED_MODEL_NAME=sim-model taskset -c "$cpus" scripts/vllm-cpu/bench-serve.sh \
                --dataset-name random --random-input-len 8 --random-output-len 1 --ignore-eos \
                --num-prompts "$n" --request-rate "$r" --burstiness inf --seed 0 --disable-tqdm \
                --save-result --save-detailed --result-dir "$d" >"$d/log.txt" 2>&1 || {
                echo "vllm bench serve failed at $r req/s (see $d/log.txt)"
                continue
            }
            judge_vllm_result "$d" "$r" "$cpus" "vllm bench serve" >>"$OUT/results.csv" || continue
            tail -1 "$OUT/results.csv"
        done
    done
fi
echo "results: $OUT/results.csv"
