#!/usr/bin/env bash
# Builds vllm-sentinel and runs the main job.
#   scripts/run.sh                      # a vLLM on 127.0.0.1:8000? watch it; otherwise run the demo
#   scripts/run.sh http://host:8000     # watch that server
# Extra arguments after the URL go to `vllm-sentinel serve` (or `demo`).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "run.sh: cargo is required (install a stable Rust toolchain with rustup)" >&2
    exit 1
fi
if ! command -v curl >/dev/null 2>&1; then
    echo "==> installing curl"
    apt-get update -qq && apt-get install -y -qq curl >/dev/null
fi

echo "==> building vllm-sentinel (release)"
cargo build --release --locked --quiet
bin=target/release/vllm-sentinel

target=""
if [ $# -gt 0 ] && [[ "$1" == http* ]]; then
    target=$1
    shift
elif curl -fsS -m 2 http://127.0.0.1:8000/health >/dev/null 2>&1; then
    target=http://127.0.0.1:8000
fi

if [ -n "$target" ]; then
    echo "==> watching $target; metrics on http://127.0.0.1:9471/metrics (Ctrl-C stops)"
    exec "$bin" serve --target "$target" --listen "${VLLM_SENTINEL_LISTEN:-0.0.0.0:9471}" "$@"
else
    echo "==> no vLLM found on 127.0.0.1:8000: running the demo on the built-in simulator (Ctrl-C stops)"
    exec "$bin" demo "$@"
fi
