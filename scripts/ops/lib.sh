# Shared shell helpers of the ops test scripts (sourced).
# shellcheck shell=bash

ops_die() { echo "FAIL: $*" >&2; exit 1; }
ops_step() { printf '==> %s\n' "$*"; }

# Installs Debian's prometheus package (prometheus + promtool) when either is missing.
ops_need_prometheus() {
    if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
        return 0
    fi
    ops_step "installing prometheus + promtool (apt-get)"
    command -v apt-get >/dev/null 2>&1 || ops_die "promtool/prometheus missing and no apt-get to install them"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || ops_die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null || ops_die "apt-get install prometheus failed"
    command -v promtool >/dev/null 2>&1 || ops_die "promtool still missing after installing prometheus"
}

# Creates (once) a venv with PyYAML outside the repository and prints its python.
ops_venv_python() {
    local venv="${XDG_CACHE_HOME:-$HOME/.cache}/vllm-sentinel/ops-venv"
    if ! "$venv/bin/python" -c 'import yaml' >/dev/null 2>&1; then
        command -v python3 >/dev/null 2>&1 || ops_die "python3 missing"
        if ! python3 -m venv "$venv" >/dev/null 2>&1; then
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv >/dev/null \
                || ops_die "cannot create a python venv (python3-venv)"
            python3 -m venv "$venv" || ops_die "python3 -m venv $venv failed"
        fi
        "$venv/bin/pip" install -q 'PyYAML>=6,<7' >&2 || ops_die "pip install PyYAML into $venv failed"
    fi
    echo "$venv/bin/python"
}

# ops_start_prometheus CONFIG DIR PORT: checks CONFIG with promtool, starts Prometheus on
# 127.0.0.1:PORT with its TSDB and log in DIR, adds its pid to the caller's `pids` array, and
# waits (at most 60 s) until it answers /-/ready. Sets `prom` to its base URL.
ops_start_prometheus() {
    local config=$1 dir=$2 port=$3 end=$((SECONDS + 60))
    promtool check config "$config" >/dev/null || ops_die "generated prometheus config invalid"
    ops_step "starting Prometheus on 127.0.0.1:$port"
    prometheus --config.file="$config" --storage.tsdb.path="$dir/data" \
        --web.listen-address="127.0.0.1:$port" >"$dir/prometheus.log" 2>&1 &
    pids+=($!)
    prom="http://127.0.0.1:$port"
    until curl -sf --max-time 5 "$prom/-/ready" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || ops_die "Prometheus did not become ready (log: $dir/prometheus.log)"
        sleep 0.2 # poll interval of a bounded wait
    done
}
