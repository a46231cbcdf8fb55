#!/usr/bin/env bash
# What the tap adds to users' streams (method and results: BENCHMARKS.md, "Tap overhead").
#
#   bench/tap-overhead.sh [CONCURRENCIES...]        # default: 1 100 1000
#
# For each concurrency and each path - direct to the simulator, through the tap
# (`vllm-sentinel serve --tap-listen`, probes, canary, scrape and GPU off), through nginx
# (`proxy_buffering off`, upstream keepalive), through HAProxy (HTTP mode, keep-alive to the
# server, one thread; it streams responses as they arrive) - start a fresh simulator in fixed-timing mode
# (first token 50 ms after the request, then one every 10 ms; every SSE event stamped with its
# CLOCK_MONOTONIC send time `sim_sent_ns`) and run the prober's own request engine
# (examples/prober_bench.rs) through the path. Its delays are receive time - the server's send
# stamp, so "added" = through a proxy - direct, same client, same run. Client on CPU 0; the
# simulator and the proxy share CPU 1 by default (a 2-core machine; on a larger host give the
# proxy its own core with PROXY_CPU=2). The proxy's CPU over the client run
# (utime + stime from /proc) divided by the streamed tokens gives CPU per token; its peak RSS is
# VmHWM (nginx: its single worker).
# Then the large-body case: per path, BIG_REQS sequential requests with a BIG_PROMPT-token prompt
# (token ids: ~6.5 bytes each in the JSON body) and 10 output tokens; "added TTFT" is the
# client-measured time to first token (from the request's start, so it includes sending the body)
# through the proxy minus direct.
#
# Variables: BIN [target/release/vllm-sentinel], CLIENT_BIN [target/release/examples/prober_bench],
# REQS [10] requests per stream, TOKENS [100] output tokens per request, OUT [target/bench-tap],
# NGINX [nginx on PATH; unset or missing: nginx skipped], HAPROXY [haproxy on PATH; likewise],
# BIG_PROMPT [100000; 0 skips the large-body case], BIG_REQS [10], PRIO ["nice -n -20"],
# CLIENT_CPU [0], SIM_CPU [1], PROXY_CPU [1].
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/vllm-sentinel}
CLIENT_BIN=${CLIENT_BIN:-target/release/examples/prober_bench}
REQS=${REQS:-10}
TOKENS=${TOKENS:-100}
OUT=${OUT:-target/bench-tap}
NGINX=${NGINX-$(command -v nginx || true)}
HAPROXY=${HAPROXY-$(command -v haproxy || true)}
BIG_PROMPT=${BIG_PROMPT:-100000}
BIG_REQS=${BIG_REQS:-10}
PRIO=${PRIO-nice -n -20}
CLIENT_CPU=${CLIENT_CPU:-0}
SIM_CPU=${SIM_CPU:-1}
PROXY_CPU=${PROXY_CPU:-1}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# shellcheck source=bench/lib.sh
. bench/lib.sh
raise_autogroup
trap restore_autogroup EXIT
concs=("$@")
[[ ${#concs[@]} -gt 0 ]] || concs=(1 100 1000)
for f in "$BIN" "$CLIENT_BIN"; do
    [[ -x $f ]] || { echo "$f missing: cargo build --release --bin vllm-sentinel --example prober_bench" >&2; exit 2; }
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
hwm_mib() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$1/status" 2>/dev/null || echo 0; }
# Waits (bounded) until URL answers.
wait_http() {
    for _ in $(seq 1 200); do
        curl -sf "$1" >/dev/null 2>&1 && return 0
        sleep 0.05 # poll interval of a bounded wait
    done
    echo "$1 did not come up" >&2
    return 1
}

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
trap 'cleanup; restore_autogroup' EXIT

start_sim() {
    SIM_PORT=$(free_port)
    $PRIO taskset -c "$SIM_CPU" "$BIN" simulate --listen "127.0.0.1:$SIM_PORT" --model tiny \
        --fixed-timing 50ms,10ms --max-model-len 131072 --num-gpu-blocks 16384 --log-level warn >"$OUT/sim.log" 2>&1 &
    PIDS+=($!)
    wait_http "http://127.0.0.1:$SIM_PORT/v1/models"
}

# The tap alone: one open-loop workload at 0.0001/s (first probe after hours), no canary, no
# scrape, no GPU (docs/tap.md, "A minimal config without synthetic probes").
start_tap() {
    local port mport
    port=$(free_port); mport=$(free_port)
    cat >"$OUT/tap.toml" <<EOF
[server]
listen = "127.0.0.1:$mport"
[gpu]
enabled = false
[[targets]]
name = "sim"
url = "http://127.0.0.1:$SIM_PORT"
endpoint = "completions"
[[targets.workloads]]
name = "idle"
rate = 0.0001
arrival = "constant"
[targets.canary]
enabled = false
[targets.scrape]
enabled = false
[tap]
enabled = true
listen = "127.0.0.1:$port"
EOF
    $PRIO taskset -c "$PROXY_CPU" "$BIN" serve --config "$OUT/tap.toml" --log-level warn >"$OUT/tap.log" 2>&1 &
    PROXY_PID=$!
    PIDS+=($PROXY_PID)
    wait_http "http://127.0.0.1:$port/v1/models"
    URL="http://127.0.0.1:$port"
}

start_nginx() {
    local port
    port=$(free_port)
    mkdir -p "$OUT/nginx"
    cat >"$OUT/nginx/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $OUT/nginx/body;
    proxy_temp_path $OUT/nginx/proxy;
    fastcgi_temp_path $OUT/nginx/fastcgi;
    uwsgi_temp_path $OUT/nginx/uwsgi;
    scgi_temp_path $OUT/nginx/scgi;
    upstream sim {
        server 127.0.0.1:$SIM_PORT;
        keepalive 512;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://sim;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            tcp_nodelay on;
            proxy_read_timeout 600s;
        }
    }
}
EOF
    # master_process off: one process that is the worker, so its CPU and RSS are the proxy's.
    $PRIO taskset -c "$PROXY_CPU" "$NGINX" -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" >"$OUT/nginx/stdout.log" 2>&1 &
    PROXY_PID=$!
    PIDS+=($PROXY_PID)
    wait_http "http://127.0.0.1:$port/v1/models"
    URL="http://127.0.0.1:$port"
}

start_haproxy() {
    local port
    port=$(free_port)
    mkdir -p "$OUT/haproxy"
    cat >"$OUT/haproxy/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    http-reuse always
    # Streaming: send each chunk at once (no Nagle coalescing), as nginx's tcp_nodelay.
    option http-no-delay
frontend f
    bind 127.0.0.1:$port
    default_backend b
backend b
    server s1 127.0.0.1:$SIM_PORT maxconn 8000
EOF
    # -db: foreground, one process (its CPU and RSS are the proxy's).
    $PRIO taskset -c "$PROXY_CPU" "$HAPROXY" -db -f "$OUT/haproxy/haproxy.cfg" >"$OUT/haproxy/stdout.log" 2>&1 &
    PROXY_PID=$!
    PIDS+=($PROXY_PID)
    wait_http "http://127.0.0.1:$port/v1/models"
    URL="http://127.0.0.1:$port"
}

# Starts the simulator and PATH's proxy in front of it; sets URL and PROXY_PID.
start_path() {
    start_sim
    PROXY_PID=
    case $1 in
        direct) URL="http://127.0.0.1:$SIM_PORT" ;;
        tap) start_tap ;;
        nginx) start_nginx ;;
        haproxy) start_haproxy ;;
    esac
}

# run_client PATH LABEL ARGS...: one client run through the started path, one JSON line out.
run_client() {
    local path=$1 label=$2; shift 2
    local p0=0 p1=0 rss=0 line
    [[ -n $PROXY_PID ]] && p0=$(cpu_ticks "$PROXY_PID")
    line=$($PRIO taskset -c "$CLIENT_CPU" "$CLIENT_BIN" --target "$URL" --label "$label" "$@")
    if [[ -n $PROXY_PID ]]; then p1=$(cpu_ticks "$PROXY_PID"); rss=$(hwm_mib "$PROXY_PID"); fi
    echo "${line%\}},\"path\":\"$path\",\"proxy_cpu_s\":$(awk "BEGIN { printf \"%.4f\", ($p1 - $p0) / 100 }"),\"proxy_peak_rss_mib\":$rss}" \
        | tee -a "$OUT/results.jsonl"
}

: >"$OUT/results.jsonl"
paths=(direct tap)
[[ -n $NGINX && -x $NGINX ]] && paths+=(nginx)
[[ -n $HAPROXY && -x $HAPROXY ]] && paths+=(haproxy)
for c in "${concs[@]}"; do
    for path in "${paths[@]}"; do
        start_path "$path"
        run_client "$path" "$path-c$c" --concurrency "$c" --requests-per-stream "$REQS" --max-tokens "$TOKENS"
        cleanup
    done
done
if (( BIG_PROMPT > 0 )); then
    for path in "${paths[@]}"; do
        start_path "$path"
        run_client "$path" "$path-big" --concurrency 1 --requests-per-stream "$BIG_REQS" \
            --max-tokens 10 --prompt-tokens "$BIG_PROMPT"
        cleanup
    done
fi

python3 - "$OUT/results.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def key(r):
    return r["label"].split("-", 1)[1]
direct = {key(r): r for r in rows if r["path"] == "direct"}
print(f"{'path':7} {'run':>5} {'first mean/p99 ms':>18} {'later mean/p99 ms':>18} {'added first mean/p99':>21} {'added later mean/p99':>21} {'proxy µs/token':>15} {'proxy RSS MiB':>13} fail")
for r in rows:
    d = direct.get(key(r))
    f, l = r["first_warm"], r["later_warm"]
    def add(k, m):
        return f"{r[k][m] - d[k][m]:+.3f}" if d else "-"
    cpu = r["proxy_cpu_s"] * 1e6 / r["tokens"] if r["tokens"] and r["path"] != "direct" else float("nan")
    print(f"{r['path']:7} {key(r):>5} {f['mean_ms']:>8.3f}/{f['p99_ms']:<9.3f} {l['mean_ms']:>8.3f}/{l['p99_ms']:<9.3f} "
          f"{add('first_warm','mean_ms'):>10}/{add('first_warm','p99_ms'):<10} {add('later_warm','mean_ms'):>10}/{add('later_warm','p99_ms'):<10} "
          f"{cpu:>15.2f} {r['proxy_peak_rss_mib']:>13} {r['failures']}")
big = [r for r in rows if key(r) == "big"]
if big:
    print("large body: client TTFT from the request's start (warm requests), added = path - direct")
    for r in big:
        d = direct.get("big")
        t = r["ttft_warm"]
        added = f"{t['mean_ms'] - d['ttft_warm']['mean_ms']:+.3f} / {t['p99_ms'] - d['ttft_warm']['p99_ms']:+.3f}" if d else "-"
        print(f"  {r['path']:7} TTFT mean/p99 {t['mean_ms']:.3f}/{t['p99_ms']:.3f} ms  added {added} ms  proxy RSS {r['proxy_peak_rss_mib']} MiB  fail {r['failures']}")
EOF
