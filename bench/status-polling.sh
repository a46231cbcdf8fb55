#!/usr/bin/env bash
# Does a browser left open on the status page disturb the prober or /metrics? (method and
# results: BENCHMARKS.md, "Status page polling").
#
#   bench/status-polling.sh [RUNS]        # default: 1
#
# One run: start `vllm-sentinel demo --fake-gpus 8 --concurrency 100 --status-interval 100ms`
# (the simulator and the daemon in one process, 100 probe streams, 8 fake GPUs: the status
# history's largest ordinary shape) pinned to DAEMON_CPU, wait until the status ring is full
# (360 samples: 36 s at 100 ms, so a full response is as large as after 30 minutes at 5 s), then
# three phases of PHASE_S seconds each, in this order:
#   ref  no browser;
#   new  N simulated browsers (one Python thread each, pinned to CLIENT_CPU, starts staggered
#        over the poll period) polling /api/v1/status every POLL_S: the whole history once, then
#        `?since=<newest timestamp held>` as the page does now;
#   old  the same N browsers fetching the whole history at every poll (the page before `since`).
# In each phase: (a) the prober's runtime lag, the delta of the histogram
# `vllm_sentinel_prober_runtime_lag_seconds` (a 10 ms timer's lateness in the daemon's runtime)
# between /metrics read at the start and at the end: mean and p99 (interpolated within buckets);
# (b) /metrics render latency: 50 `curl -w %{time_total}` of /metrics spread over the phase,
# p50 / p99; (c) the daemon's CPU: utime + stime from /proc/PID/stat over the phase, in cores.
# Ratios are against `ref` of the same run. The simulator runs inside the daemon's process, so
# (c) includes it and the 100 streams' traffic: the polling's cost is the difference.
# At a 100 ms status interval an incremental poll every 5 s carries ~50 samples; at the default
# 5 s interval it carries one, so `new` here is an upper bound of what a real page costs.
#
# Variables: BIN [target/release/vllm-sentinel], N [10] browsers, POLL_S [5], PHASE_S [30],
# STREAMS [100], INTERVAL [100ms], DAEMON_CPU [1], CLIENT_CPU [0], OUT [target/bench-status],
# PRIO ["nice -n -20"].
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/vllm-sentinel}
N=${N:-10}
POLL_S=${POLL_S:-5}
PHASE_S=${PHASE_S:-30}
STREAMS=${STREAMS:-100}
INTERVAL=${INTERVAL:-100ms}
DAEMON_CPU=${DAEMON_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
OUT=${OUT:-target/bench-status}
PRIO=${PRIO-nice -n -20}
RUNS=${1:-1}
[[ -x $BIN ]] || { echo "$BIN missing: cargo build --release --bin vllm-sentinel" >&2; exit 2; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# shellcheck source=bench/lib.sh
. bench/lib.sh
raise_autogroup
trap restore_autogroup EXIT
TCK=$(getconf CLK_TCK)

# The browsers: N threads until $OUT/stop exists; one line per poll to stdout (mode bytes secs).
cat >"$OUT/browsers.py" <<'EOF'
import json, os, sys, threading, time, urllib.request
base, n, poll, mode, stop = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
lock = threading.Lock()
def browser(i):
    time.sleep(poll * i / n)
    held = None
    while not os.path.exists(stop):
        url = base + "/api/v1/status"
        if mode == "new" and held is not None:
            url += "?since=" + repr(held)
        t0 = time.perf_counter()
        body = urllib.request.urlopen(url, timeout=30).read()
        dt = time.perf_counter() - t0
        doc = json.loads(body)
        ts = doc["timestamps"]
        if mode == "new" and not (held is not None and doc.get("contiguous")):
            held = None
        if ts:
            held = ts[-1]
        with lock:
            print(mode, len(body), f"{dt:.6f}", flush=True)
        time.sleep(max(0.0, poll - dt))
ths = [threading.Thread(target=browser, args=(i,), daemon=True) for i in range(n)]
for t in ths: t.start()
for t in ths: t.join()
EOF

# Reads the lag histogram out of a /metrics text: "count sum le:cum,le:cum,...".
cat >"$OUT/lag.py" <<'EOF'
import re, sys
name = "vllm_sentinel_prober_runtime_lag_seconds"
count = total = 0.0; buckets = {}
for line in open(sys.argv[1]):
    if line.startswith(name + "_count"): count = float(line.split()[-1])
    elif line.startswith(name + "_sum"): total = float(line.split()[-1])
    elif line.startswith(name + "_bucket"):
        le = re.search(r'le="([^"]+)"', line).group(1)
        buckets[le] = buckets.get(le, 0.0) + float(line.split()[-1])
print(count, total, ",".join(f"{k}:{v}" for k, v in buckets.items()))
EOF

# Phase summary from the files a phase left: prints one result line.
cat >"$OUT/summary.py" <<'EOF'
import sys, statistics
run, phase, d = sys.argv[1], sys.argv[2], sys.argv[3]
cpu_cores = float(sys.argv[4])
def lag(f):
    c, s, b = open(f).read().split()
    return float(c), float(s), {k: float(v) for k, v in (x.rsplit(":", 1) for x in b.split(","))}
c0, s0, b0 = lag(d + "/lag0"); c1, s1, b1 = lag(d + "/lag1")
dc, ds = c1 - c0, s1 - s0
edges = sorted(((float(k), b1[k] - b0.get(k, 0.0)) for k in b1), key=lambda x: x[0])
want, prev_le, prev_c, p99 = 0.99 * dc, 0.0, 0.0, float("nan")
for le, c in edges:
    if c >= want:
        p99 = le if le == float("inf") else prev_le + (le - prev_le) * ((want - prev_c) / (c - prev_c) if c > prev_c else 1)
        break
    prev_le, prev_c = le, c
t = sorted(float(x) for x in open(d + "/metrics_times").read().split())
q = lambda p: t[min(len(t) - 1, int(round(p * (len(t) - 1))))]
polls = [l.split() for l in open(d + "/browsers.log")] if phase != "ref" else []
kb = statistics.mean(int(p[1]) for p in polls) / 1024 if polls else 0.0
print(f"{run} {phase} lag_mean_ms={1000*ds/dc if dc else float('nan'):.3f} lag_p99_ms={1000*p99:.3f} "
      f"metrics_p50_ms={1000*q(0.5):.2f} metrics_p99_ms={1000*q(0.99):.2f} cpu_cores={cpu_cores:.3f} "
      f"polls={len(polls)} kb_per_poll={kb:.1f}")
EOF

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

RESULTS="$OUT/results.txt"
: >"$RESULTS"
for run in $(seq 1 "$RUNS"); do
    port=$(free_port)
    sport=$(free_port)
    base="http://127.0.0.1:$port"
    $PRIO taskset -c "$DAEMON_CPU" "$BIN" demo --listen "127.0.0.1:$port" --sim-listen "127.0.0.1:$sport" \
        --fake-gpus 8 --concurrency "$STREAMS" --status-interval "$INTERVAL" >"$OUT/demo.log" 2>&1 &
    pid=$!
    trap 'kill $pid 2>/dev/null || true; restore_autogroup' EXIT
    for _ in $(seq 1 600); do
        n=$(curl -sf "$base/api/v1/status?points=1" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["ring_samples"])' 2>/dev/null || echo 0)
        [[ $n -ge 360 ]] && break
        sleep 1
    done
    full=$(curl -sf "$base/api/v1/status" | wc -c)
    echo "run $run: ring full ($n samples), full response $full bytes" | tee -a "$RESULTS"
    for phase in ref new old; do
        d="$OUT/run$run-$phase"
        mkdir -p "$d"
        rm -f "$d/stop"
        : >"$d/browsers.log"
        bpid=
        if [[ $phase != ref ]]; then
            $PRIO taskset -c "$CLIENT_CPU" python3 "$OUT/browsers.py" "$base" "$N" "$POLL_S" "$phase" "$d/stop" >"$d/browsers.log" &
            bpid=$!
            sleep "$POLL_S" # every browser has made its first (full) request
        fi
        curl -sf "$base/metrics" >"$d/m0"
        python3 "$OUT/lag.py" "$d/m0" >"$d/lag0"
        t0=$(date +%s.%N)
        c0=$(cpu_ticks $pid)
        : >"$d/metrics_times"
        gap=$(python3 -c "print($PHASE_S / 50)")
        for _ in $(seq 1 50); do
            $PRIO taskset -c "$CLIENT_CPU" curl -sf -o /dev/null -w '%{time_total}\n' "$base/metrics" >>"$d/metrics_times"
            sleep "$gap"
        done
        c1=$(cpu_ticks $pid)
        t1=$(date +%s.%N)
        curl -sf "$base/metrics" >"$d/m1"
        python3 "$OUT/lag.py" "$d/m1" >"$d/lag1"
        if [[ -n $bpid ]]; then
            touch "$d/stop"
            wait "$bpid" || true
        fi
        cores=$(python3 -c "print(($c1 - $c0) / $TCK / ($t1 - $t0))")
        python3 "$OUT/summary.py" "$run" "$phase" "$d" "$cores" | tee -a "$RESULTS"
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    trap restore_autogroup EXIT
done

# Ratios against the same run's `ref`.
python3 - "$RESULTS" <<'EOF' | tee "$OUT/ratios.txt"
import sys, re
rows = {}
for line in open(sys.argv[1]):
    p = line.split()
    if len(p) < 3 or "=" not in p[2]: continue
    rows[(p[0], p[1])] = {k: float(v) for k, v in (x.split("=") for x in p[2:])}
for (run, phase), r in sorted(rows.items()):
    ref = rows.get((run, "ref"))
    if phase == "ref" or not ref: continue
    ratio = lambda k: r[k] / ref[k] if ref[k] else float("nan")
    print(f"run {run} {phase}/ref: lag mean x{ratio('lag_mean_ms'):.2f} p99 x{ratio('lag_p99_ms'):.2f}, "
          f"/metrics p50 x{ratio('metrics_p50_ms'):.2f} p99 x{ratio('metrics_p99_ms'):.2f}, "
          f"CPU x{ratio('cpu_cores'):.2f} (+{r['cpu_cores'] - ref['cpu_cores']:.3f} cores), {r['kb_per_poll']:.1f} KB/poll")
EOF
