#!/usr/bin/env bash
# End-to-end test of dashboards and rules against a real Prometheus scraping the real binary.
#
#   scripts/ops/e2e-prometheus.sh --binary target/release/vllm-sentinel          # serve + simulate, --no-gpu
#   scripts/ops/e2e-prometheus.sh --binary target/release/vllm-sentinel --demo   # demo --fake-gpus 2
#   (or VLLM_SENTINEL_BIN=path scripts/ops/e2e-prometheus.sh [--demo])
#
# What it does, every step bounded by a deadline, every process killed on exit (trap):
#  1. daemon mode: starts `vllm-sentinel simulate` and `vllm-sentinel serve --target <sim> --no-gpu
#     --tap-listen <port>` on free loopback ports; demo mode: starts `vllm-sentinel demo
#     --fake-gpus 2 --tap-listen <port>` instead (its built-in simulator, two simulated H200s from
#     crate::gpu::FakeSource: the GPU panels and rules are checked there, against the exporter
#     itself). Both: users' traffic through the tap (e2e_queries.py --load: streams, abandoned
#     streams, a passthrough route);
#  2. starts Prometheus (temp dir, free port, 1 s scrape and evaluation intervals) with the real
#     rule files of alerts/ - in a temp copy whose `for:` durations are rewritten to 5s, because
#     the production ones (2m-30m) would make the test take half an hour. Nothing else is changed;
#  3. waits for data, checks every rule is healthy, evaluates every dashboard query, dashboard
#     variable and rule (scripts/ops/e2e_queries.py) - phase "healthy";
#  4. injects faults through the simulator's POST /sim/faults: first tokens slower than the 1 s
#     SLO bucket, then a context limit below the probe prompts, and waits until
#     VllmSentinelTTFTBudgetBurnFast and VllmSentinelContextLengthRejections are pending/firing;
#  5. evaluates everything again - phase "faulted"; a query passes when it never errors and is
#     non-empty in at least one phase, or is listed in scripts/ops/e2e-allowlist.tsv with a reason.
#
# Fault bodies (the simulator's fault API; override if its shape differs):
# (src/sim/faults.rs: the body replaces the whole fault set; 16 tokens is below the prober's
# default 128-token prompts)
#   E2E_FAULT_SLOW_BODY   default {"slow_first_token": "1500ms"}
#   E2E_FAULT_REJECT_BODY default {"max_model_len": 16}
# Other knobs: E2E_DEADLINE_S (per wait, default 180), E2E_KEEP=1 keeps the temp dir.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/ops/lib.sh
. scripts/ops/lib.sh

mode=daemon
bin="${VLLM_SENTINEL_BIN:-}"
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) bin="$2"; shift 2 ;;
        --demo) mode=demo; shift ;;
        -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
        *) ops_die "unknown argument $1 (see --help)" ;;
    esac
done
[ -n "$bin" ] || ops_die "give the built binary: --binary PATH or VLLM_SENTINEL_BIN"
[ -x "$bin" ] || ops_die "$bin is not an executable"
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
deadline="${E2E_DEADLINE_S:-180}"
slow_body="${E2E_FAULT_SLOW_BODY:-{\"slow_first_token\": \"1500ms\"\}}"
reject_body="${E2E_FAULT_REJECT_BODY:-{\"max_model_len\": 16\}}"

ops_need_prometheus
PY=$(ops_venv_python)
Q() { "$PY" scripts/ops/e2e_queries.py "$@"; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/vllm-sentinel-e2e.XXXXXX")
pids=()
cleanup() {
    local rc=$?
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ $rc -ne 0 ]; then
        for f in "$tmp"/*.log; do
            [ -f "$f" ] || continue
            echo "---- last lines of $(basename "$f")" >&2
            tail -n 25 "$f" >&2
        done
    fi
    if [ "${E2E_KEEP:-0}" = 1 ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

sentinel_port=$(free_port)
sim_port=$(free_port)
tap_port=$(free_port)
fault_url="http://127.0.0.1:$sim_port/sim/faults"
if [ "$mode" = daemon ]; then
    ops_step "starting the simulator on 127.0.0.1:$sim_port"
    "$bin" simulate --listen "127.0.0.1:$sim_port" >"$tmp/sim.log" 2>&1 &
    pids+=($!)
    Q --wait-http "http://127.0.0.1:$sim_port/v1/models" --deadline 30 || ops_die "simulator did not come up"
    ops_step "starting the daemon on 127.0.0.1:$sentinel_port"
    "$bin" serve --target "http://127.0.0.1:$sim_port" --listen "127.0.0.1:$sentinel_port" \
        --no-gpu --rate 4 --scrape-interval 1s --tap-listen "127.0.0.1:$tap_port" >"$tmp/sentinel.log" 2>&1 &
    pids+=($!)
else
    ops_step "starting the demo (simulator on 127.0.0.1:$sim_port, 2 fake GPUs) on 127.0.0.1:$sentinel_port"
    "$bin" demo --listen "127.0.0.1:$sentinel_port" --sim-listen "127.0.0.1:$sim_port" \
        --fake-gpus 2 --status-interval 1s --tap-listen "127.0.0.1:$tap_port" >"$tmp/demo.log" 2>&1 &
    pids+=($!)
    Q --wait-http "http://127.0.0.1:$sim_port/v1/models" --deadline 30 || ops_die "the demo's simulator did not come up"
fi
Q --wait-http "http://127.0.0.1:$sentinel_port/metrics" --deadline 30 || ops_die "/metrics did not come up"

ops_step "users' traffic through the tap on 127.0.0.1:$tap_port (background, until the end)"
Q --wait-http "http://127.0.0.1:$tap_port/v1/models" --deadline 30 || ops_die "the tap did not come up"
# Started directly, not through Q: a backgrounded shell function is a subshell, and killing it
# would leave the Python process running after the script.
"$PY" scripts/ops/e2e_queries.py --load "http://127.0.0.1:$tap_port" --deadline 1800 >"$tmp/load.log" 2>&1 &
pids+=($!)

ops_step "rule files: alerts/*.yml with for: rewritten to 5s (temp copy)"
mkdir -p "$tmp/rules"
for f in alerts/*.yml; do
    sed -E 's/^([[:space:]]+)for: .*/\1for: 5s/' "$f" >"$tmp/rules/$(basename "$f")"
done
grep -q 'for: 5s' "$tmp/rules/vllm-sentinel-alerts.yml" || ops_die "for: rewrite did nothing"
prom_port=$(free_port)
cat >"$tmp/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - rules/*.yml
scrape_configs:
  - job_name: vllm-sentinel
    static_configs:
      - targets: ["127.0.0.1:$sentinel_port"]
EOF
ops_start_prometheus "$tmp/prometheus.yml" "$tmp" "$prom_port"

ops_step "waiting for data (probe traffic, recording rules)"
Q --prom "$prom" --wait-query 'up{job="vllm-sentinel"} == 1' --deadline 60 || ops_die "Prometheus cannot scrape the sidecar"
Q --prom "$prom" --wait-query 'sum(rate(vllm_sentinel_probe_ttft_seconds_count[15s])) > 0' --deadline "$deadline" \
    || ops_die "no successful probe traffic reached Prometheus"
Q --prom "$prom" --wait-query 'vllm_sentinel:probe_ttft_seconds:p95_5m' --deadline 60 || ops_die "recording rules produce nothing"
# the 15s rate windows of dashboard queries need 15s of samples
Q --prom "$prom" --wait-query 'count_over_time(vllm_sentinel_build_info[20s]) >= 15' --deadline 60 || ops_die "scrapes too sparse"
Q --prom "$prom" --rules-healthy || ops_die "some rules do not evaluate"

ops_step "phase healthy: every dashboard query, variable and rule"
Q --prom "$prom" --phase healthy --out "$tmp/healthy.json"

ops_step "fault 1: slow first tokens -> VllmSentinelTTFTBudgetBurnFast"
Q --post "$fault_url" --body "$slow_body" || ops_die "fault API refused $slow_body"
Q --prom "$prom" --wait-alerts VllmSentinelTTFTBudgetBurnFast --deadline "$deadline" || ops_die "TTFT alert did not go pending/firing"

ops_step "fault 2: context limit below the probe prompts -> VllmSentinelContextLengthRejections"
Q --post "$fault_url" --body "$reject_body" || ops_die "fault API refused $reject_body"
Q --prom "$prom" --wait-alerts VllmSentinelContextLengthRejections --deadline "$deadline" || ops_die "context-length alert did not go pending/firing"
# users' requests through the tap are rejected too, with a requested/limit ratio
Q --prom "$prom" --wait-query 'sum(rate(vllm_sentinel_traffic_context_length_ratio_count[15s])) > 0' --deadline "$deadline" \
    || ops_die "the tap saw no context-length rejection of users' requests"

ops_step "phase faulted: every dashboard query, variable and rule again"
Q --prom "$prom" --phase faulted --out "$tmp/faulted.json"
Q --prom "$prom" --rules-healthy || ops_die "some rules do not evaluate"

ops_step "verdict ($mode mode)"
Q --verdict "$tmp/healthy.json" "$tmp/faulted.json" --allow scripts/ops/e2e-allowlist.tsv --mode "$mode" \
    || ops_die "dashboard/rule queries failed (see above)"
echo "e2e-prometheus ($mode): OK"
