#!/usr/bin/env bash
# Soak: does the daemon stay flat over an hour of load and upstream restarts? (issue 14; method
# and results: BENCHMARKS.md, "Soak"). Not in CI: the lead runs the full hour.
#
#   bench/soak.sh [DURATION] [STREAMS] [RESTARTS]     # defaults: 60m 1000 100
#
# DURATION is seconds or a number with s/m/h (90s, 4m, 1h). One run:
# * the built-in simulator (`vllm-sentinel simulate --fixed-timing TIMING`: first token after
#   20 ms, then one every 5 ms, no engine model) on a free loopback port;
# * `vllm-sentinel serve --no-gpu` with a config of one target, one closed-loop workload of
#   STREAMS concurrent streams (PROMPT_TOKENS-token prompts, MAX_TOKENS output tokens), the
#   scrape every 5 s and the canary every 60 s;
# * RESTARTS upstream restarts spread evenly over the run (restart i at i·DURATION/(RESTARTS+1)):
#   the simulator is sent SIGTERM (SIGKILL after 5 s), then started again on the same port;
# * every SAMPLE_S seconds (and once at the start), one CSV row: the daemon's RSS
#   (/proc/PID/status VmRSS), open fds (/proc/PID/fd), threads (/proc/PID/status Threads), the
#   latency of GET /metrics (curl %{time_total}, median of 3 tries) and its body size, the
#   restarts done so far, the 1-minute load average; and two columns that tell the daemon's own
#   cost from the machine's load: the CPU time one /metrics encoding took over the last interval
#   (the daemon's `vllm_sentinel_exporter_render_cpu_seconds_total` over `…renders_total`, read
#   from the encoding thread's CPU clock, so other processes do not inflate it) and, as a
#   reference measured at the same moment, the latency of GET /healthz on the same server (no
#   work: what it shows is scheduling delay).
# At the end: per column the first- and last-quarter means, the slope per hour (least squares
# over the samples after the first quarter, the warm-up) and the maximum; then the verdict.
#
# Flat rule (reported, never asserted): after the first quarter (warm-up: 1,000 streams and the
# first scrapes fill the pools and the status history), the last-quarter mean of RSS, fds,
# threads and /metrics bytes is at most FLAT_PCT % (default 10) above the second-quarter mean,
# and the render CPU per scrape at most FLAT_PCT % above it. The /metrics latency is printed with
# the same comparison, against LAT_PCT % (default 50) or LAT_SLACK_MS (default 5 ms), whichever
# is larger, beside its /healthz reference. On a quiet host it is part of the verdict; where the
# /healthz reference moved too (REF_MOVED_MS, default 1 ms, between the quarters' means: the
# machine's load changed the scheduling delay of a handler that does nothing), latency is shown
# but the verdict rests on the render CPU, which the load does not move. A daemon that exited
# early is "NOT FLAT".
#
# Variables: BIN [target/release/vllm-sentinel], OUT [target/bench-soak], SAMPLE_S [60],
# TIMING [20ms,5ms], PROMPT_TOKENS [16], MAX_TOKENS [32] (with the timing, a request takes
# ~175 ms: STREAMS/0.175 requests/s), FLAT_PCT [10], LAT_PCT [50], LAT_SLACK_MS [5], REF_MOVED_MS [1],
# NICE [10] (the whole script and its children run at `nice -n NICE`; empty: no nice).
set -euo pipefail
cd "$(dirname "$0")/.."

NICE=${NICE-10}
if [[ -n $NICE && -z ${SOAK_NICED:-} ]]; then
    SOAK_NICED=1 exec nice -n "$NICE" "$0" "$@"
fi

to_secs() {
    local v=$1
    case $v in
    *h) echo $((${v%h} * 3600)) ;;
    *m) echo $((${v%m} * 60)) ;;
    *s) echo "${v%s}" ;;
    *) echo "$v" ;;
    esac
}

DURATION_ARG=${1:-60m}
STREAMS=${2:-1000}
RESTARTS=${3:-100}
[[ $DURATION_ARG =~ ^[0-9]+[smh]?$ ]] || { echo "DURATION: seconds or N[smh], got '$DURATION_ARG'" >&2; exit 2; }
[[ $STREAMS =~ ^[1-9][0-9]*$ ]] || { echo "STREAMS: a positive integer, got '$STREAMS'" >&2; exit 2; }
[[ $RESTARTS =~ ^[0-9]+$ ]] || { echo "RESTARTS: a non-negative integer, got '$RESTARTS'" >&2; exit 2; }
DURATION=$(to_secs "$DURATION_ARG")
((DURATION >= 4)) || { echo "DURATION: at least 4s" >&2; exit 2; }
BIN=${BIN:-target/release/vllm-sentinel}
OUT=${OUT:-target/bench-soak}
SAMPLE_S=${SAMPLE_S:-60}
TIMING=${TIMING:-20ms,5ms}
PROMPT_TOKENS=${PROMPT_TOKENS:-16}
MAX_TOKENS=${MAX_TOKENS:-32}
FLAT_PCT=${FLAT_PCT:-10}
LAT_PCT=${LAT_PCT:-50}
LAT_SLACK_MS=${LAT_SLACK_MS:-5}
REF_MOVED_MS=${REF_MOVED_MS:-1}
[[ -x $BIN ]] || { echo "$BIN missing: cargo build --release --bin vllm-sentinel (or set BIN)" >&2; exit 2; }
command -v curl >/dev/null || { echo "curl is needed" >&2; exit 2; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
SIM_PORT=$(free_port)
PORT=$(free_port)
while [[ $PORT == "$SIM_PORT" ]]; do PORT=$(free_port); done
SIM_URL=http://127.0.0.1:$SIM_PORT
URL=http://127.0.0.1:$PORT

SIM_PID=
DAEMON_PID=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for pid in $DAEMON_PID $SIM_PID; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in $DAEMON_PID $SIM_PID; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Polls URL until it answers 200 or DEADLINE seconds pass (a start-up wait, not a measurement).
wait_http() {
    local url=$1 deadline=$((SECONDS + $2))
    while ((SECONDS < deadline)); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true) == 200 ]] && return 0
        sleep 0.2
    done
    return 1
}

start_sim() {
    "$BIN" simulate --listen "127.0.0.1:$SIM_PORT" --fixed-timing "$TIMING" \
        --log-level warn >>"$OUT/sim.log" 2>&1 &
    SIM_PID=$!
    wait_http "$SIM_URL/v1/models" 30
}

stop_sim() {
    kill -TERM "$SIM_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SIM_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SIM_PID" 2>/dev/null || true
    wait "$SIM_PID" 2>/dev/null || true
    SIM_PID=
}

cat >"$OUT/soak.toml" <<EOF
[server]
listen = "127.0.0.1:$PORT"
shutdown_grace = "1s"
shutdown_linger = "0s"

[scrape]
interval = "5s"

[[targets]]
name = "sim"
url = "$SIM_URL"

[[targets.workloads]]
concurrency = $STREAMS
prompt_tokens = $PROMPT_TOKENS
max_tokens = $MAX_TOKENS

[targets.canary]
interval = "60s"
EOF

echo "soak: ${DURATION}s, $STREAMS streams, $RESTARTS restarts, a sample every ${SAMPLE_S}s; out $OUT"
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), nice ${NICE:-0}"
: >"$OUT/sim.log"
start_sim || { echo "the simulator did not start (see $OUT/sim.log)" >&2; exit 1; }
"$BIN" serve --config "$OUT/soak.toml" --no-gpu --log-level warn >"$OUT/daemon.log" 2>&1 &
DAEMON_PID=$!
wait_http "$URL/readyz" 60 || { echo "the daemon did not get ready (see $OUT/daemon.log)" >&2; exit 1; }

CSV=$OUT/soak.csv
echo "elapsed_s,rss_kib,fds,threads,metrics_s,metrics_bytes,render_cpu_s,healthz_s,restarts,load1" >"$CSV"
status_field() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$DAEMON_PID/status"; }
# The daemon's render counters in a /metrics body: "renders cpu_seconds".
render_counters() {
    awk '$1 == "vllm_sentinel_exporter_renders_total" { r = $2 }
        $1 == "vllm_sentinel_exporter_render_cpu_seconds_total" { c = $2 }
        END { print (r == "" ? "nan" : r), (c == "" ? "nan" : c) }' "$1"
}
PREV_RENDERS=
PREV_CPU=
sample() {
    local t=$1 rss fds thr lat bytes ref render=nan tries=() refs=() renders cpu
    rss=$(status_field VmRSS)
    thr=$(status_field Threads)
    fds=$(find "/proc/$DAEMON_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    for _ in 1 2 3; do
        refs+=("$(curl -s -o /dev/null --max-time 30 -w '%{time_total}' "$URL/healthz" || echo nan)")
        tries+=("$(curl -s -o "$OUT/last.metrics" --max-time 30 -w '%{time_total} %{size_download}' "$URL/metrics" || echo "nan 0")")
    done
    lat=$(printf '%s\n' "${tries[@]}" | cut -d' ' -f1 | sort -g | sed -n 2p)
    bytes=$(printf '%s\n' "${tries[@]}" | cut -d' ' -f2 | sort -n | sed -n 2p)
    ref=$(printf '%s\n' "${refs[@]}" | sort -g | sed -n 2p)
    read -r renders cpu < <(render_counters "$OUT/last.metrics")
    # CPU per encoding since the previous sample (the counters are read from the last body, so
    # they cover the encodings before it).
    if [[ -n $PREV_RENDERS && $renders != nan && $PREV_RENDERS != nan ]]; then
        render=$(awk -v r="$renders" -v c="$cpu" -v pr="$PREV_RENDERS" -v pc="$PREV_CPU" \
            'BEGIN { print (r > pr) ? (c - pc) / (r - pr) : "nan" }')
    fi
    PREV_RENDERS=$renders
    PREV_CPU=$cpu
    echo "$t,$rss,$fds,$thr,$lat,$bytes,$render,$ref,$DONE,$(cut -d' ' -f1 /proc/loadavg)" >>"$CSV"
}

DONE=0
FAILED_RESTARTS=0
T0=$SECONDS
NEXT_SAMPLE=0
EARLY_EXIT=
while :; do
    now=$((SECONDS - T0))
    if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
        EARLY_EXIT="the daemon exited after ${now}s (see $OUT/daemon.log)"
        break
    fi
    if ((now >= NEXT_SAMPLE)); then
        sample "$now"
        NEXT_SAMPLE=$((NEXT_SAMPLE + SAMPLE_S))
    fi
    ((now >= DURATION)) && break
    # Restart i (1-based) is due at i·DURATION/(RESTARTS+1).
    if ((DONE < RESTARTS && now * (RESTARTS + 1) >= (DONE + 1) * DURATION)); then
        stop_sim
        start_sim || FAILED_RESTARTS=$((FAILED_RESTARTS + 1))
        DONE=$((DONE + 1))
        continue
    fi
    sleep 1
done
# The last row at the end of the run, if the loop did not just write one.
now=$((SECONDS - T0))
if [[ -z $EARLY_EXIT ]] && (($(tail -n1 "$CSV" | cut -d, -f1) < DURATION)); then sample "$now"; fi

FINAL=$(curl -s --max-time 30 "$URL/metrics" || true)
echo
echo "restarts: $DONE done, $FAILED_RESTARTS of them not answering within 30 s"
echo "probe requests by outcome:"
printf '%s\n' "$FINAL" | awk '/^vllm_sentinel_probe_requests_total\{/ {
    match($0, /outcome="[^"]*"/); o = substr($0, RSTART + 9, RLENGTH - 10); n[o] += $NF }
    END { for (o in n) printf "  %-16s %d\n", o, n[o] }' | sort
printf '%s\n' "$FINAL" | awk '/^vllm_sentinel_upstream_scrapes_total\{/ {
    match($0, /result="[^"]*"/); r = substr($0, RSTART + 8, RLENGTH - 9); n[r] += $NF }
    END { for (r in n) printf "upstream scrapes %s: %d\n", r, n[r] }' | sort
echo "machine load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

# Summary: quarters by elapsed time; slope over the samples after the first quarter.
awk -F, -v D="$DURATION" -v fp="$FLAT_PCT" -v lp="$LAT_PCT" -v ls="$LAT_SLACK_MS" -v rm="$REF_MOVED_MS" -v early="$EARLY_EXIT" '
NR == 1 { for (i = 1; i <= NF; i++) { name[i] = $i; col[$i] = i }; next }
{
    q = int(4 * $1 / D); if (q > 3) q = 3
    for (i = 2; i <= 8; i++) {
        if ($i == "nan" || $i == "") continue
        s[i, q] += $i; c[i, q]++
        if (!(i in mx) || $i > mx[i]) mx[i] = $i
        if (q >= 1) { n[i]++; sx[i] += $1; sy[i] += $i; sxx[i] += $1 * $1; sxy[i] += $1 * $i }
    }
}
function mean(i, q) { return c[i, q] ? s[i, q] / c[i, q] : "nan" }
END {
    printf "%-14s %14s %14s %14s %14s %14s  %s\n", "column", "Q1 mean", "Q2 mean", "Q4 mean", "slope/hour", "max", "Q4 vs Q2"
    flat = (early == "")
    h = col["healthz_s"]
    ref_moved = (c[h, 1] && c[h, 3]) ? ((mean(h, 3) - mean(h, 1)) * 1000 > rm || (mean(h, 1) - mean(h, 3)) * 1000 > rm) : 1
    for (i = 2; i <= 8; i++) {
        m1 = mean(i, 0); m2 = mean(i, 1); m4 = mean(i, 3)
        den = n[i] * sxx[i] - sx[i] * sx[i]
        slope = (n[i] >= 2 && den != 0) ? (n[i] * sxy[i] - sx[i] * sy[i]) / den * 3600 : "nan"
        counts = 1
        if (name[i] == "healthz_s") {
            counts = 0
            verdict = sprintf("reference: %+.2f ms (%s)", (m4 - m2) * 1000, ref_moved ? "the scheduling delay moved: the load changed" : "steady")
        } else if (c[i, 1] && c[i, 3] && m2 > 0) {
            pct = (m4 / m2 - 1) * 100
            if (name[i] == "metrics_s") {
                ok = (pct <= lp) || (m4 - m2) * 1000 <= ls
                counts = !ref_moved
                verdict = sprintf("%+.1f %% / %+.2f ms (limit +%s %% or +%s ms) %s%s", pct, (m4 - m2) * 1000, lp, ls, ok ? "flat" : "GROWS",
                    ref_moved ? "; not in the verdict: the /healthz reference moved, see render_cpu_s" : "")
            } else {
                ok = (pct <= fp)
                verdict = sprintf("%+.1f %% (limit +%s %%) %s", pct, fp, ok ? "flat" : "GROWS")
            }
        } else { ok = 0; verdict = "too few samples" }
        if (counts && !ok) flat = 0
        printf "%-14s %14.6g %14.6g %14.6g %14.6g %14.6g  %s\n", name[i], m1, m2, m4, slope, mx[i], verdict
    }
    if (early != "") print early
    print (flat ? "verdict: FLAT" : "verdict: NOT FLAT") " (rule: Q4 mean within the limit of the Q2 mean, every column but the reference)"
}' "$CSV" | tee "$OUT/summary.txt"
echo "CSV: $CSV"
