#!/usr/bin/env python3
"""Generates the Grafana dashboards in dashboards/ (python3 stdlib only).

The JSON files are committed; this script is their source. Edit here, then run
    python3 scripts/ops/gen-dashboards.py            # rewrite dashboards/*.json
    python3 scripts/ops/gen-dashboards.py --check    # fail if the committed JSON differs
scripts/ops/test-static.sh runs the --check form, so the two cannot drift apart.

Conventions every panel follows (checked by scripts/ops/check_dashboards.py):
datasource `${datasource}`; a description; a unit; rates over `$__rate_interval` (or `$__range`
for totals over the visible range); selectors filtered by the template variables
(`$instance`, `$target`, `$model`, `$gpu`, with `.*` as the "All" value).
Metric names are those of docs/metrics.md; `vllm_sentinel:` names are recording rules from
alerts/vllm-sentinel-rules.yml.
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "dashboards")

DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"
# Label filters by family group.
P = 'instance=~"$instance", target=~"$target", model=~"$model"'  # prober and server series
R = 'target=~"$target", model=~"$model"'  # recording rules (no instance)
U = 'instance=~"$instance", target=~"$target"'  # upstream scrape health
G = 'instance=~"$instance", gpu=~"$gpu"'  # GPU series
I = 'instance=~"$instance"'  # sidecar self-health
# process_* series also exist for other jobs (Prometheus itself): keep the sidecars' only.
SIDECAR = "and on (instance, job) vllm_sentinel_build_info"

SLO_TTFT_S = 1.0  # the `le` bucket used by alerts/vllm-sentinel-rules.yml
SLO_TPOT_S = 0.1
SLO_E2E_S = 10.0


def tgt(expr, legend="", ref="A", instant=False):
    t = {
        "datasource": DS,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "refId": ref,
        "range": not instant,
        "instant": instant,
    }
    return t


def thresholds(steps):
    return {
        "mode": "absolute",
        "steps": [{"color": c, "value": v} for v, c in steps],
    }


class Board:
    def __init__(self, uid, title, description, variables):
        self.uid = uid
        self.title = title
        self.description = description
        self.variables = variables
        self.panels = []
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def _place(self, w, h):
        if self.x + w > 24:
            self.x = 0
            self.y += self.row_h
            self.row_h = 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def row(self, title):
        if self.x:
            self.x = 0
            self.y += self.row_h
            self.row_h = 0
        self.panels.append(
            {
                "id": self._id(),
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1},
                "panels": [],
            }
        )
        self.y += 1

    def _id(self):
        i = self.next_id
        self.next_id += 1
        return i

    def timeseries(self, title, desc, unit, targets, w=12, h=8, stack=False, extra_defaults=None, min0=True):
        custom = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 20 if stack else 0,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        }
        defaults = {"unit": unit, "custom": custom}
        if min0:
            defaults["min"] = 0
        if extra_defaults:
            defaults.update(extra_defaults)
        self._add(
            "timeseries",
            title,
            desc,
            targets,
            w,
            h,
            defaults,
            {
                "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max", "lastNotNull"], "showLegend": True},
                "tooltip": {"mode": "multi", "sort": "desc"},
            },
        )

    def stat(self, title, desc, unit, targets, steps, w=4, h=5, mappings=None, decimals=None):
        defaults = {"unit": unit, "thresholds": thresholds(steps), "color": {"mode": "thresholds"}}
        if mappings:
            defaults["mappings"] = mappings
        if decimals is not None:
            defaults["decimals"] = decimals
        self._add(
            "stat",
            title,
            desc,
            targets,
            w,
            h,
            defaults,
            {
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "colorMode": "background",
                "graphMode": "area",
                "textMode": "auto",
                "justifyMode": "auto",
                "orientation": "auto",
            },
        )

    def _add(self, typ, title, desc, targets, w, h, defaults, options):
        refs = "ABCDEFGHIJ"
        for i, t in enumerate(targets):
            t["refId"] = refs[i]
        self.panels.append(
            {
                "id": self._id(),
                "type": typ,
                "title": title,
                "description": desc,
                "datasource": DS,
                "gridPos": self._place(w, h),
                "fieldConfig": {"defaults": defaults, "overrides": []},
                "options": options,
                "targets": targets,
            }
        )

    def json(self):
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["vllm", "vllm-sentinel"],
            "schemaVersion": 39,
            "version": 1,
            "editable": True,
            "graphTooltip": 1,
            "refresh": "30s",
            "time": {"from": "now-3h", "to": "now"},
            "timepicker": {},
            "timezone": "browser",
            "fiscalYearStartMonth": 0,
            "liveNow": False,
            "weekStart": "",
            "annotations": {
                "list": [
                    {
                        "builtIn": 1,
                        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                        "enable": True,
                        "hide": True,
                        "iconColor": "rgba(0, 211, 255, 1)",
                        "name": "Annotations & Alerts",
                        "type": "dashboard",
                    }
                ]
            },
            "links": [
                {
                    "asDropdown": False,
                    "icon": "external link",
                    "includeVars": True,
                    "keepTime": True,
                    "tags": ["vllm-sentinel"],
                    "targetBlank": False,
                    "title": "vllm-sentinel",
                    "type": "dashboards",
                }
            ],
            "templating": {"list": self.variables},
            "panels": self.panels,
        }


def ds_var():
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "refresh": 1,
        "regex": "",
        "options": [],
    }


def query_var(name, label, query):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "hide": 0,
        "regex": "",
        "sort": 1,
        "options": [],
    }


INSTANCE = query_var("instance", "Sidecar", "label_values(vllm_sentinel_build_info, instance)")
TARGET = query_var(
    "target",
    "Target",
    'label_values({__name__=~"vllm_sentinel_(upstream_up|probe_in_flight)", instance=~"$instance"}, target)',
)
MODEL = query_var(
    "model",
    "Model",
    'label_values({__name__=~"vllm_sentinel_(probe_in_flight|server_requests_running)", instance=~"$instance", target=~"$target"}, model)',
)
GPU = query_var("gpu", "GPU", 'label_values(vllm_sentinel_gpu_memory_total_bytes{instance=~"$instance"}, gpu)')


def q(quantile, hist, sel, by="target"):
    return f"histogram_quantile({quantile}, sum by ({by}, le) (rate({hist}_bucket{{{sel}}}[{RI}])))"


def latency_pair(b, title, what, client, server, note=""):
    targets = []
    for qv, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        targets.append(tgt(q(qv, client, P), f"client {name} {{{{target}}}}"))
    if server:
        for qv, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
            targets.append(tgt(q(qv, server, P), f"server {name} {{{{target}}}}"))
    desc = (
        f"{what} Client side (`{client}`, what the probes felt) and, beside it, the server's own "
        f"figure (`{server}`, scraped from the server's /metrics). A widening gap between the two is "
        "time spent outside the engine: network, proxy, API front end, tokenization." + note
    )
    b.timeseries(title, desc, "s", targets)


def real_traffic(b):
    """The "Real traffic" row: the tap's vllm_sentinel_traffic_* families (users' requests through
    `serve --tap-listen`) beside the probes, and the server's own HTTP counter as the fallback."""
    tr = "vllm_sentinel_traffic_requests_total"
    http = "vllm_sentinel_server_http_requests_total"
    gen = 'endpoint=~"completions|chat"'
    b.row("Real traffic")
    b.timeseries(
        "Probe against real TTFT p95",
        "95th percentile time to first token of the synthetic probes (`vllm_sentinel_probe_ttft_seconds`) and of users' streamed "
        "requests through the tap (`vllm_sentinel_traffic_ttft_seconds`) on one axis. Real above probe: users' requests differ "
        f"from the probe workloads (longer prompts, bursts). The TTFT SLO threshold of both is {SLO_TTFT_S:g} s.",
        "s",
        [
            tgt(q(0.95, "vllm_sentinel_probe_ttft_seconds", P), "probe p95 {{target}}"),
            tgt(q(0.95, "vllm_sentinel_traffic_ttft_seconds", P), "real p95 {{target}}"),
        ],
    )
    b.timeseries(
        "Real requests by outcome",
        "Users' POST /v1/completions and /v1/chat/completions through the tap per second, by outcome (the prober's classes plus "
        "client_disconnected, upstream_unreachable, upstream_timeout). Without the tap, the server's own count by endpoint and status "
        "class (`vllm_sentinel_server_http_requests_total`, every client of the server, probes included) is the fallback.",
        "reqps",
        [
            tgt(f"sum by (target, outcome) (rate({tr}{{{P}}}[{RI}]))", "tap {{outcome}} {{target}}"),
            tgt(f"sum by (target, endpoint, status_class) (rate({http}{{{U}}}[{RI}]))", "server {{endpoint}} {{status_class}} {{target}}"),
        ],
        stack=False,
    )
    for name, hist, what in (
        ("Real time to first token", "vllm_sentinel_traffic_ttft_seconds", "Arrival at the tap to the first content-bearing event of users' streamed requests."),
        ("Real inter-token latency", "vllm_sentinel_traffic_itl_seconds", "Every gap between consecutive content-bearing events of users' streams."),
    ):
        b.timeseries(
            name,
            f"{what} p50, p95, p99 per target, from the tap's histogram (`{hist}`).",
            "s",
            [tgt(q(qv, hist, P), f"{n} {{{{target}}}}") for qv, n in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99"))],
            w=8,
        )
    b.timeseries(
        "Context-length rejection ratio",
        "Share of users' generation requests rejected as longer than the model's context. `tap`: the tap's exact count "
        "(outcome context_length). `server 4xx`: the share of 4xx among the server's /v1/completions and /v1/chat/completions "
        "answers, the fallback without the tap - an UPPER BOUND (every other 4xx counts too, and the prober's requests, the "
        "canary's deliberate over-limit probe included). Alert VllmSentinelRealContextLengthRejections above 5 %.",
        "percentunit",
        [
            tgt(
                f'sum by (target) (rate({tr}{{{P}, outcome="context_length"}}[{RI}])) / sum by (target) (rate({tr}{{{P}}}[{RI}]))',
                "tap (exact) {{target}}",
            ),
            tgt(
                f'sum by (target) (rate({http}{{{U}, {gen}, status_class="4xx"}}[{RI}])) / sum by (target) (rate({http}{{{U}, {gen}}}[{RI}]))',
                "server 4xx, upper bound {{target}}",
            ),
        ],
        w=8,
    )
    b.timeseries(
        "Rejected requests' length over the limit",
        "For each context-length rejection the tap saw, requested tokens / the model's limit (`vllm_sentinel_traffic_context_length_ratio`, "
        "buckets 1 to 10): p50, p90, p99. Just above 1: prompts that used to fit (the limit fell); far above 1: clients sending what never fitted.",
        "suffix:×",
        [tgt(q(qv, "vllm_sentinel_traffic_context_length_ratio", P), f"{n} {{{{target}}}}") for qv, n in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99"))],
        w=8,
        min0=False,
    )
    b.timeseries(
        "Client disconnects",
        "Share of users' generation requests abandoned by the client before the end of the response (the tap drops the upstream "
        "connection at once, so vLLM aborts them). The rate is under *Real requests by outcome* (client_disconnected). A rising "
        "share: clients give up (time out) before the answer.",
        "percentunit",
        [
            tgt(
                f'sum by (target) (rate({tr}{{{P}, outcome="client_disconnected"}}[{RI}])) / sum by (target) (rate({tr}{{{P}}}[{RI}]))',
                "disconnected share {{target}}",
            ),
        ],
        w=8,
    )


def overview():
    b = Board(
        "vllm-sentinel-overview",
        "vllm-sentinel / Overview",
        "What users of the vLLM server feel (synthetic probes) against what the server reports about itself.",
        [ds_var(), INSTANCE, TARGET, MODEL],
    )
    b.row("Service level")
    b.stat(
        "TTFT p95 (5m)",
        f"95th percentile time to first token of the probe requests over 5 minutes (recording rule). Red above the {SLO_TTFT_S:g} s SLO threshold used by the burn-rate alerts.",
        "s",
        [tgt(f"max(vllm_sentinel:probe_ttft_seconds:p95_5m{{{R}}})", "TTFT p95")],
        [(None, "green"), (SLO_TTFT_S * 0.75, "orange"), (SLO_TTFT_S, "red")],
    )
    b.stat(
        "TPOT p95 (5m)",
        f"95th percentile time per output token of the probe requests over 5 minutes. Red above {SLO_TPOT_S:g} s (10 tokens/s per stream).",
        "s",
        [tgt(f"max(vllm_sentinel:probe_tpot_seconds:p95_5m{{{R}}})", "TPOT p95")],
        [(None, "green"), (SLO_TPOT_S * 0.75, "orange"), (SLO_TPOT_S, "red")],
    )
    b.stat(
        "E2E p95 (5m)",
        f"95th percentile end-to-end latency of the probe requests over 5 minutes. Red above {SLO_E2E_S:g} s.",
        "s",
        [tgt(f"max(vllm_sentinel:probe_e2e_seconds:p95_5m{{{R}}})", "e2e p95")],
        [(None, "green"), (SLO_E2E_S * 0.75, "orange"), (SLO_E2E_S, "red")],
    )
    b.stat(
        "Success ratio (5m)",
        "Share of probe requests that finished with outcome `ok` over 5 minutes (requests cancelled by the sidecar's own shutdown excluded). The lowest target is shown.",
        "percentunit",
        [tgt(f"min(vllm_sentinel:probe_success_ratio:rate5m{{{R}}})", "success")],
        [(None, "red"), (0.95, "orange"), (0.99, "green")],
        decimals=2,
    )
    b.stat(
        "TTFT budget burn (1h)",
        f"How fast the TTFT error budget (1 % of requests over {SLO_TTFT_S:g} s) is being spent over the last hour: 1 = exactly on budget, 6 and 14.4 are the slow and fast burn alert thresholds.",
        "suffix:×",
        [tgt(f"max(vllm_sentinel:probe_ttft_slo_bad_ratio:rate1h{{{R}}}) / 0.01", "burn rate")],
        [(None, "green"), (1, "yellow"), (6, "orange"), (14.4, "red")],
        decimals=1,
    )
    b.stat(
        "Context limit honoured",
        "The context-length canary: 1 (YES) when a prompt inside the advertised max_model_len is served and one over it is rejected as a context-length error.",
        "bool_yes_no",
        [tgt(f"min(vllm_sentinel_canary_limit_honoured{{{P}}})", "honoured")],
        [(None, "red"), (1, "green")],
    )

    b.row("Latency: client against server")
    latency_pair(b, "Time to first token", "Time to the first generated token.", "vllm_sentinel_probe_ttft_seconds", "vllm_sentinel_server_ttft_seconds")
    latency_pair(b, "Time per output token", "Per-request mean time per output token after the first.", "vllm_sentinel_probe_tpot_seconds", "vllm_sentinel_server_tpot_seconds")
    latency_pair(b, "Inter-token latency", "Gap between consecutive streamed events.", "vllm_sentinel_probe_itl_seconds", "vllm_sentinel_server_itl_seconds")
    latency_pair(b, "End-to-end latency", "Request sent to the end of the stream.", "vllm_sentinel_probe_e2e_seconds", "vllm_sentinel_server_e2e_seconds")

    real_traffic(b)

    client_mean = (
        f"sum by (target) (rate(vllm_sentinel_probe_ttft_seconds_sum{{{P}}}[{RI}]))"
        f" / sum by (target) (rate(vllm_sentinel_probe_ttft_seconds_count{{{P}}}[{RI}]))"
    )
    srv = lambda fam: f"avg by (target) (vllm_sentinel_server_window_mean_{fam}_seconds{{{P}}})"  # noqa: E731
    b.row("Where the wait goes")
    b.timeseries(
        "Split of the wait for the first token (means)",
        "Mean client TTFT decomposed: network/front end = client TTFT mean − the server's TTFT mean over the same scrape window; "
        "queue and prefill = the server's own window means; server other = server TTFT − queue − prefill (tokenization, scheduling). "
        "Stacked, so the top edge is the client's mean TTFT. Window means come from vllm_sentinel_server_window_mean_*.",
        "s",
        [
            tgt(f"clamp_min(({client_mean}) - on (target) {srv('ttft')}, 0)", "network / front end {{target}}"),
            tgt(srv("queue"), "queue {{target}}"),
            tgt(srv("prefill"), "prefill {{target}}"),
            tgt(f"clamp_min({srv('ttft')} - on (target) {srv('queue')} - on (target) {srv('prefill')}, 0)", "server other {{target}}"),
        ],
        stack=True,
    )
    b.timeseries(
        "Client TTFT mean against server TTFT mean",
        "The two lines the split is computed from: the probes' mean TTFT over the rate interval and the server's mean TTFT over its last scrape window.",
        "s",
        [
            tgt(client_mean, "client mean {{target}}"),
            tgt(srv("ttft"), "server mean {{target}}"),
        ],
    )

    b.row("Throughput")
    b.timeseries(
        "Requests per second",
        "Probe requests finished per second (all outcomes) and requests the server finished per second by finish reason (all traffic, not only probes).",
        "reqps",
        [
            tgt(f"sum by (target) (rate(vllm_sentinel_probe_requests_total{{{P}}}[{RI}]))", "probes {{target}}"),
            tgt(f"sum by (target, reason) (rate(vllm_sentinel_server_requests_finished_total{{{P}}}[{RI}]))", "server {{reason}} {{target}}"),
        ],
    )
    b.timeseries(
        "Tokens per second",
        "Server-side prompt and generation token throughput (all traffic) and the probes' own output tokens.",
        "suffix:tok/s",
        [
            tgt(f"sum by (target) (rate(vllm_sentinel_server_generation_tokens_total{{{P}}}[{RI}]))", "server generated {{target}}"),
            tgt(f"sum by (target) (rate(vllm_sentinel_server_prompt_tokens_total{{{P}}}[{RI}]))", "server prompt {{target}}"),
            tgt(f"sum by (target) (rate(vllm_sentinel_probe_output_tokens_total{{{P}}}[{RI}]))", "probe output {{target}}"),
            tgt(f"sum by (target) (rate(vllm_sentinel_probe_prompt_tokens_total{{{P}}}[{RI}]))", "probe prompt {{target}}"),
        ],
    )

    b.row("Errors and context length")
    b.timeseries(
        "Probe errors by class",
        "Failed probe requests per second by outcome (error class): context_length, client_error, rate_limited, overloaded, server_error, connect, timeouts, stream_error, truncated, malformed, empty. Empty while everything succeeds.",
        "reqps",
        [tgt(f'sum by (target, outcome) (rate(vllm_sentinel_probe_requests_total{{{P}, outcome!="ok"}}[{RI}]))', "{{outcome}} {{target}}")],
        stack=True,
    )
    b.timeseries(
        "Probe failure ratio",
        "Share of probe requests that failed (cancelled excluded), per target. The VllmSentinelProbeFailures alert fires above 5 % for 5 minutes.",
        "percentunit",
        [
            tgt(
                f'sum by (target) (rate(vllm_sentinel_probe_requests_total{{{P}, outcome!~"ok|cancelled"}}[{RI}]))'
                f' / sum by (target) (rate(vllm_sentinel_probe_requests_total{{{P}, outcome!="cancelled"}}[{RI}]))',
                "failure ratio {{target}}",
            )
        ],
    )
    b.timeseries(
        "Context-length canary",
        "The limit the server advertises in /v1/models (max_model_len) and the largest prompt the canary saw served. They should meet: a served prompt far below the limit, or none, means the advertised limit is not real.",
        "short",
        [
            tgt(f"max by (target, model) (vllm_sentinel_canary_max_model_len_tokens{{{P}}})", "advertised limit {{model}}"),
            tgt(f"max by (target, model) (vllm_sentinel_canary_max_prompt_served_tokens{{{P}}})", "largest prompt served {{model}}"),
        ],
    )
    b.timeseries(
        "Context-length rejections",
        "Probe requests rejected as over the context length (any is a user-visible failure), and the canary's probes by result: the `over` probe should be `rejected`, the `inside` probe `served`.",
        "reqps",
        [
            tgt(f'sum by (target, workload) (rate(vllm_sentinel_probe_requests_total{{{P}, outcome="context_length"}}[{RI}]))', "rejected {{workload}} {{target}}"),
            tgt(f"sum by (target, probe, result) (rate(vllm_sentinel_canary_probes_total{{{P}}}[{RI}]))", "canary {{probe}} {{result}} {{target}}"),
        ],
    )

    b.row("Server state")
    b.timeseries(
        "KV-cache usage",
        "Fraction of the KV-cache blocks in use per engine. Sustained values near 100 % mean queuing and preemptions (alert above 95 % for 10 minutes).",
        "percentunit",
        [tgt(f"max by (target, engine_index) (vllm_sentinel_server_kv_cache_usage_ratio{{{P}}})", "{{target}} engine {{engine_index}}")],
        extra_defaults={"max": 1},
    )
    b.timeseries(
        "KV-cache headroom",
        "Tokens the KV cache can still hold (capacity × (1 − usage)) against its capacity (num_gpu_blocks × block_size).",
        "short",
        [
            tgt(f"sum by (target) (vllm_sentinel_server_kv_cache_headroom_tokens{{{P}}})", "headroom {{target}}"),
            tgt(f"sum by (target) (vllm_sentinel_server_kv_cache_capacity_tokens{{{P}}})", "capacity {{target}}"),
        ],
    )
    b.timeseries(
        "Running and waiting requests",
        "Requests in the running batch and waiting in the scheduler queue (all traffic). A queue that does not drain means the server is over capacity.",
        "short",
        [
            tgt(f"sum by (target) (vllm_sentinel_server_requests_running{{{P}}})", "running {{target}}"),
            tgt(f"sum by (target) (vllm_sentinel_server_requests_waiting{{{P}}})", "waiting {{target}}"),
        ],
    )
    b.timeseries(
        "Preemptions",
        "Running requests preempted per second (their KV cache evicted and recomputed later) — a sign the KV cache is too small for the load.",
        "ops",
        [tgt(f"sum by (target) (rate(vllm_sentinel_server_preemptions_total{{{P}}}[{RI}]))", "preemptions {{target}}")],
    )
    return b


def gpu():
    b = Board(
        "vllm-sentinel-gpu",
        "vllm-sentinel / GPU",
        "GPU state sampled through NVML by the sidecar.",
        [ds_var(), INSTANCE, GPU],
    )
    b.row("Memory and utilization")
    b.timeseries(
        "Memory used against total",
        "Device memory used, reserved by the driver, and total. A serving engine reserves ~90 % of the memory at start (--gpu-memory-utilization) by design: high use is not by itself a problem.",
        "bytes",
        [
            tgt(f"vllm_sentinel_gpu_memory_used_bytes{{{G}}}", "used GPU {{gpu}}"),
            tgt(f"vllm_sentinel_gpu_memory_reserved_bytes{{{G}}}", "reserved GPU {{gpu}}"),
            tgt(f"vllm_sentinel_gpu_memory_total_bytes{{{G}}}", "total GPU {{gpu}}"),
        ],
    )
    b.timeseries(
        "Residency against utilization",
        "Memory residency (used / total) and how busy the GPU really is (SM busy fraction, memory-controller busy fraction) on one time axis: memory full while utilization is low means an idle engine holding its reservation.",
        "percentunit",
        [
            tgt(f"vllm_sentinel_gpu_memory_used_bytes{{{G}}} / vllm_sentinel_gpu_memory_total_bytes{{{G}}}", "memory resident GPU {{gpu}}"),
            tgt(f"vllm_sentinel_gpu_utilization_ratio{{{G}}}", "SM busy GPU {{gpu}}"),
            tgt(f"vllm_sentinel_gpu_memory_utilization_ratio{{{G}}}", "memory controller busy GPU {{gpu}}"),
        ],
        extra_defaults={"max": 1},
    )
    b.row("Power and temperature")
    b.timeseries(
        "Power draw against limit",
        "Power draw and the enforced power limit; the mean draw from the energy counter is plotted too (more exact than the instantaneous reading).",
        "watt",
        [
            tgt(f"vllm_sentinel_gpu_power_watts{{{G}}}", "draw GPU {{gpu}}"),
            tgt(f"vllm_sentinel_gpu_power_limit_watts{{{G}}}", "limit GPU {{gpu}}"),
            tgt(f"rate(vllm_sentinel_gpu_energy_joules_total{{{G}}}[{RI}])", "mean draw from energy GPU {{gpu}}"),
        ],
    )
    b.stat(
        "Energy over the range",
        "Energy the selected GPUs consumed over the dashboard's time range, from the NVML energy counter.",
        "joule",
        [tgt(f"sum(increase(vllm_sentinel_gpu_energy_joules_total{{{G}}}[$__range]))", "energy", instant=True)],
        [(None, "blue")],
        w=6,
        h=8,
    )
    b.timeseries(
        "Temperature",
        "GPU core temperature.",
        "celsius",
        [tgt(f"vllm_sentinel_gpu_temperature_celsius{{{G}}}", "GPU {{gpu}}")],
        w=6,
    )
    b.row("Clocks and throttling")
    b.timeseries(
        "Clocks",
        "SM and memory clocks against their maxima. Clocks below the maximum under load mean a clock event (throttle) is active.",
        "hertz",
        [
            tgt(f"vllm_sentinel_gpu_sm_clock_hertz{{{G}}}", "SM GPU {{gpu}}"),
            tgt(f"vllm_sentinel_gpu_sm_clock_max_hertz{{{G}}}", "SM max GPU {{gpu}}"),
            tgt(f"vllm_sentinel_gpu_memory_clock_hertz{{{G}}}", "memory GPU {{gpu}}"),
            tgt(f"vllm_sentinel_gpu_memory_clock_max_hertz{{{G}}}", "memory max GPU {{gpu}}"),
        ],
    )
    b.timeseries(
        "Throttle reasons (clock events)",
        "1 while a clock-event reason is active. Thermal reasons and the hardware power brake are alerts; sw_power_cap under full load is normal; gpu_idle is normal when idle.",
        "bool_on_off",
        [tgt(f"max by (gpu, reason) (vllm_sentinel_gpu_clock_event_active{{{G}}})", "GPU {{gpu}} {{reason}}")],
        stack=False,
        extra_defaults={"max": 1},
    )
    b.timeseries(
        "Performance state",
        "NVML P-state (0 is the fastest). A busy GPU outside P0 is being held back.",
        "none",
        [tgt(f"vllm_sentinel_gpu_performance_state{{{G}}}", "GPU {{gpu}}")],
        w=8,
    )
    b.timeseries(
        "PCIe link",
        "Current PCIe link generation and width; a link trained below its capability (e.g. x8 instead of x16) slows host transfers.",
        "none",
        [
            tgt(f"vllm_sentinel_gpu_pcie_link_generation{{{G}}}", "gen GPU {{gpu}}"),
            tgt(f"vllm_sentinel_gpu_pcie_link_width{{{G}}}", "width GPU {{gpu}}"),
        ],
        w=8,
    )
    b.row("Errors")
    b.timeseries(
        "Xid errors",
        "Xid errors reported by the driver per rate interval, by code. Codes 48, 62, 64, 74, 79, 92, 94, 95, 119, 120 usually need the GPU drained (alert VllmSentinelGpuXidCritical).",
        "short",
        [tgt(f"sum by (gpu, xid) (increase(vllm_sentinel_gpu_xid_errors_total{{{G}}}[{RI}]))", "GPU {{gpu}} Xid {{xid}}")],
        w=8,
    )
    b.timeseries(
        "ECC errors and remapped rows",
        "Volatile ECC errors per rate interval (uncorrected ones corrupt results) and remapped memory rows by cause.",
        "short",
        [
            tgt(f"sum by (gpu, error_type) (increase(vllm_sentinel_gpu_ecc_errors_total{{{G}}}[{RI}]))", "GPU {{gpu}} ECC {{error_type}}"),
            tgt(f"max by (gpu, cause) (vllm_sentinel_gpu_remapped_rows{{{G}}})", "GPU {{gpu}} remapped {{cause}}"),
        ],
        w=8,
    )
    b.timeseries(
        "Per-process memory",
        "Device memory held by each process on the GPU. Anything besides the serving engine here eats into memory the engine reserved.",
        "bytes",
        [tgt(f"vllm_sentinel_gpu_process_memory_used_bytes{{{G}}}", "GPU {{gpu}} {{process}} ({{pid}})")],
        w=8,
    )
    return b


def prober():
    b = Board(
        "vllm-sentinel-prober",
        "vllm-sentinel / Prober health",
        "Is the sidecar itself trustworthy: prober load and lag, scrape health, NVML health, process cost.",
        [ds_var(), INSTANCE, TARGET, MODEL],
    )
    b.row("Prober")
    b.stat(
        "Saturated",
        "1 (YES) when the prober cannot keep up with its schedule; its latency numbers are not trustworthy then (alert VllmSentinelProberSaturated).",
        "bool_yes_no",
        [tgt(f"max(vllm_sentinel_prober_saturated{{{I}}})", "saturated")],
        [(None, "green"), (1, "red")],
        w=4,
        h=8,
    )
    b.timeseries(
        "In flight against target concurrency",
        "Probe requests in flight per workload against the configured closed-loop concurrency (0 for open-loop workloads).",
        "short",
        [
            tgt(f"sum by (target, workload) (vllm_sentinel_probe_in_flight{{{P}}})", "in flight {{workload}} {{target}}"),
            tgt(f"sum by (target, workload) (vllm_sentinel_probe_target_concurrency{{{P}}})", "target concurrency {{workload}} {{target}}"),
        ],
        w=10,
    )
    b.timeseries(
        "Open-loop rate: target against achieved",
        "Configured open-loop arrival rate (0 in closed loop) against probe requests actually finished per second.",
        "reqps",
        [
            tgt(f"sum by (target, workload) (vllm_sentinel_probe_target_rate{{{P}}})", "target {{workload}} {{target}}"),
            tgt(f"sum by (target, workload) (rate(vllm_sentinel_probe_requests_total{{{P}}}[{RI}]))", "achieved {{workload}} {{target}}"),
        ],
        w=10,
    )
    b.timeseries(
        "Schedule lag",
        "Open loop: how late probes are sent after their intended time (p50, p99). Lag inflates nothing (latency is measured from the intended time) but growing lag means the prober is falling behind.",
        "s",
        [
            tgt(q(0.5, "vllm_sentinel_probe_schedule_lag_seconds", f"{I}, target=~\"$target\"", "target, workload"), "p50 {{workload}} {{target}}"),
            tgt(q(0.99, "vllm_sentinel_probe_schedule_lag_seconds", f"{I}, target=~\"$target\"", "target, workload"), "p99 {{workload}} {{target}}"),
        ],
        w=8,
    )
    b.timeseries(
        "Dropped arrivals",
        "Open-loop arrivals not sent because the in-flight cap was reached, per second. Any drop means the offered load was not the configured one.",
        "ops",
        [tgt(f'sum by (target, workload) (rate(vllm_sentinel_probe_dropped_arrivals_total{{{I}, target=~"$target"}}[{RI}]))', "dropped {{workload}} {{target}}")],
        w=8,
    )
    b.timeseries(
        "Runtime lag",
        "How late a 10 ms timer fires in the sidecar's async runtime (p50, p99): a busy or starved sidecar delays timestamps and so inflates measured latencies.",
        "s",
        [
            tgt(q(0.5, "vllm_sentinel_prober_runtime_lag_seconds", I, "instance"), "p50 {{instance}}"),
            tgt(q(0.99, "vllm_sentinel_prober_runtime_lag_seconds", I, "instance"), "p99 {{instance}}"),
        ],
        w=8,
    )
    b.row("Upstream scrape")
    b.timeseries(
        "Upstream up",
        "1 when the sidecar's last scrape of the server's own /metrics worked and parsed.",
        "bool_on_off",
        [tgt(f"max by (target) (vllm_sentinel_upstream_up{{{U}}})", "{{target}}")],
        w=6,
        extra_defaults={"max": 1},
    )
    b.timeseries(
        "Scrape duration",
        "Duration of the last scrape of the server's /metrics, and the age of the last good scrape.",
        "s",
        [
            tgt(f"max by (target) (vllm_sentinel_upstream_scrape_duration_seconds{{{U}}})", "duration {{target}}"),
            tgt(f"time() - max by (target) (vllm_sentinel_upstream_last_success_timestamp_seconds{{{U}}})", "since last success {{target}}"),
        ],
        w=6,
    )
    b.timeseries(
        "Scrape results and parse errors",
        "Scrapes per second by result, and parse errors per second by kind (lines of the server's exposition the sidecar could not read).",
        "ops",
        [
            tgt(f"sum by (target, result) (rate(vllm_sentinel_upstream_scrapes_total{{{U}}}[{RI}]))", "scrapes {{result}} {{target}}"),
            tgt(f"sum by (target, kind) (rate(vllm_sentinel_upstream_parse_errors_total{{{U}}}[{RI}]))", "parse errors {{kind}} {{target}}"),
        ],
        w=6,
    )
    b.timeseries(
        "Samples per scrape",
        "Samples in the last body scraped from the server; a sudden change means the server's metrics changed (version upgrade, engine restart).",
        "short",
        [tgt(f"max by (target) (vllm_sentinel_upstream_samples{{{U}}})", "{{target}}")],
        w=6,
    )
    b.row("NVML")
    b.timeseries(
        "NVML up",
        "1 when NVML is initialised and the last GPU sample completed (absent when GPU sampling is disabled).",
        "bool_on_off",
        [tgt(f"max by (instance) (vllm_sentinel_gpu_up{{{I}}})", "{{instance}}")],
        w=8,
        extra_defaults={"max": 1},
    )
    b.timeseries(
        "GPU sample duration and age",
        "Cost of the last NVML sampling tick, and the age of the last complete sample (should stay near the sampling interval).",
        "s",
        [
            tgt(f"max by (instance) (vllm_sentinel_gpu_sample_duration_seconds{{{I}}})", "duration {{instance}}"),
            tgt(f"time() - max by (instance) (vllm_sentinel_gpu_last_sample_timestamp_seconds{{{I}}})", "age {{instance}}"),
        ],
        w=16,
    )
    b.row("Process")
    b.timeseries(
        "Sidecar CPU",
        "CPU time the sidecar uses, in cores (1 = one full core).",
        "percentunit",
        [tgt(f"rate(process_cpu_seconds_total{{{I}}}[{RI}]) {SIDECAR}", "{{instance}}")],
    )
    b.timeseries(
        "Sidecar memory",
        "Resident memory (RSS) of the sidecar.",
        "bytes",
        [tgt(f"process_resident_memory_bytes{{{I}}} {SIDECAR}", "{{instance}}")],
    )
    return b


def render():
    out = {}
    for name, board in (
        ("vllm-sentinel-overview.json", overview()),
        ("vllm-sentinel-gpu.json", gpu()),
        ("vllm-sentinel-prober.json", prober()),
    ):
        out[name] = json.dumps(board.json(), indent=2, sort_keys=False) + "\n"
    return out


def main():
    check = "--check" in sys.argv[1:]
    os.makedirs(OUT, exist_ok=True)
    bad = []
    for name, text in render().items():
        path = os.path.join(OUT, name)
        if check:
            try:
                with open(path, encoding="utf-8") as f:
                    if f.read() != text:
                        bad.append(name)
            except FileNotFoundError:
                bad.append(name)
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    if bad:
        print(f"dashboards out of date with scripts/ops/gen-dashboards.py: {', '.join(bad)}; run it", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
