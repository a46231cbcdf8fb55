#!/usr/bin/env python3
"""A stand-in for the vllm-sentinel daemon's /metrics, synthesised from docs/metrics.md.

Every family of the contract is exported (GPU ones included, with a fake GPU), with counters and
histograms that advance with time, so a real Prometheus can evaluate every dashboard query and
rule against it. It is the "fake-GPU path" of scripts/ops/e2e-prometheus.sh (--fake-exporter) and
lets the e2e machinery run before, or independently of, the real daemon.

It accepts the same fault call as the simulator, so the e2e script drives both the same way:
    POST /sim/faults  {"slow_first_token": "1500ms", "max_model_len": 16}
(the field names of src/sim/faults.rs). slow_first_token moves TTFT above the 1 s SLO bucket; max_model_len makes probe requests fail
as `context_length` (and the canary find the limit not honoured). POST /sim/faults {} clears.

Usage: fake_exporter.py --listen 127.0.0.1:PORT   (python3 stdlib only)
"""

import argparse
import json
import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import opslib  # noqa: E402

TTFT_B = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560]
ITL_B = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80]
LAT_B = [0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680]
LAG_B = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1]

OUTCOMES = ["ok", "context_length", "client_error", "rate_limited", "overloaded", "server_error", "connect",
            "timeout_connect", "timeout_first_token", "timeout_request", "stream_error", "truncated", "malformed", "empty", "cancelled"]

# default labels by section heading of docs/metrics.md
SECTION_LABELS = {
    "Build and process": [],
    "Prober (client side, what users feel)": ["target", "model", "workload", "endpoint"],
    "Context-length canary (labels `target, model`)": ["target", "model"],
    "Prober self-health": [],
    "Upstream scrape (server side)": ["target"],
    "GPU (NVML)": ["gpu", "uuid", "name"],
}
VALUES = {
    "target": ["sim:8000"], "model": ["fake-model"], "workload": ["default"], "endpoint": ["completions"],
    "engine_index": ["0"], "gpu": ["0"], "uuid": ["GPU-fake-0"], "name": ["Fake H200"], "outcome": OUTCOMES,
    "kind": ["bad_line"], "xid": ["79"], "pid": ["4242"], "process": ["vllm"], "version": ["0.0.0-fake"],
    "revision": ["fake"], "engine": ["vllm"], "driver_version": ["570.00"], "cuda_version": ["12.8"],
    "pci_bus_id": ["00000000:00:00.0"], "serial": ["0"], "mig_mode": ["disabled"],
}

# label values the contract leaves to the code (NVML clock-event reasons: src/gpu/sampler.rs)
FAMILY_VALUES = {
    "vllm_sentinel_gpu_clock_event_active": {
        "reason": ["gpu_idle", "sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"]
    },
    "vllm_sentinel_server_requests_waiting_by_reason": {"reason": ["capacity", "deferred"]},
    "vllm_sentinel_server_requests_finished_total": {"reason": ["stop", "length", "abort", "error"]},
}


def parse_families():
    """[(name, type, labels, {label: values})] from the contract tables, with section defaults."""
    path = os.path.join(opslib.ROOT, "docs", "metrics.md")
    types = opslib.parse_contract(path)
    out = []
    section = None
    server_series = False
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                section = line.lstrip("#").strip()
                server_series = False
                continue
            if line.startswith("Normalised server series"):
                server_series = True
            if line.startswith("The server's HTTP request counter"):
                server_series = False  # its own labels (target, endpoint, status_class), listed in full
            if not line.startswith("|") or line.startswith("|---"):
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            names = re.findall(r"`([A-Za-z_:][A-Za-z0-9_:]*)`", cells[0])
            if not names or cells[0] == "family" or len(cells) < 3:
                continue
            labels_cell = cells[2]
            base = list(SECTION_LABELS.get(section, []))
            if server_series:
                base = ["target", "model", "engine_index"]
            if "(none)" in labels_cell:
                base = []
            extra, values = [], {}
            for m in re.finditer(r"([a-z_]+)(?:\s*\(([^)]*)\))?", labels_cell):
                lab = m.group(1)
                if lab in ("none",):
                    continue
                extra.append(lab)
                vals = re.findall(r"`([^`]+)`", m.group(2) or "")
                if vals:
                    values[lab] = vals
            if cells[0].startswith("`vllm_sentinel_server_info`") or cells[0].startswith("`vllm_sentinel_probe_schedule_lag") \
                    or cells[0].startswith("`vllm_sentinel_probe_dropped"):
                base = []
            labels = list(dict.fromkeys(base + extra))
            expanded = [n for n in types if any(n == x or n.endswith(x) for x in names)]
            for n in expanded:
                if n.startswith("process_") and labels:
                    continue
                out.append((n, types[n], labels, dict(values, **FAMILY_VALUES.get(n, {}))))
    seen, uniq = set(), []
    for fam in out:
        if fam[0] not in seen:
            seen.add(fam[0])
            uniq.append(fam)
    return uniq


def label_sets(labels, values):
    sets = [{}]
    for lab in labels:
        vals = values.get(lab) or VALUES.get(lab) or ["x"]
        sets = [dict(s, **{lab: v}) for s in sets for v in vals]
    return sets


def fmt_labels(d):
    if not d:
        return ""
    return "{" + ",".join(f'{k}="{v}"' for k, v in d.items()) + "}"


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.faults = {}
        self.last = time.time()
        self.start = self.last
        self.acc = {}  # accumulated counter/bucket values

    def add(self, key, v):
        self.acc[key] = self.acc.get(key, 0.0) + v
        return self.acc[key]


STATE = State()
FAMILIES = []


def gauge_value(name, ls, faults):
    now = time.time()
    if name.endswith("_info") or name.endswith("_up"):
        return 1
    if name.endswith("limit_honoured"):
        return 0 if faults.get("max_model_len") else 1
    if name.endswith("saturated"):
        return 0
    if "timestamp_seconds" in name:
        return now - 1 if "xid" not in name else 0
    if name.endswith("max_model_len_tokens"):
        return faults.get("max_model_len") or 32768
    if name.endswith("max_prompt_served_tokens"):
        return 32000
    if name == "vllm_sentinel_gpu_memory_total_bytes":
        return 141e9
    if name == "vllm_sentinel_gpu_memory_used_bytes":
        return 127e9
    if name == "vllm_sentinel_gpu_memory_free_bytes":
        return 14e9
    if name == "vllm_sentinel_gpu_memory_reserved_bytes":
        return 0.5e9
    if name.endswith("_ratio"):
        return 0.6
    if name.endswith("limit_watts"):
        return 700
    if name.endswith("_watts"):
        return 420
    if name.endswith("_celsius"):
        return 55
    if name.endswith("_hertz"):
        return 1.98e9
    if name.endswith("clock_event_active"):
        return 1 if ls.get("reason") == "sw_power_cap" else 0
    if name.endswith("_tokens"):
        return 100000
    if name.endswith("_window_mean_ttft_seconds"):
        return 0.05 + faults.get("slow_first_token_s", 0.0)
    if name.endswith("_seconds"):
        return 0.01
    if name.endswith("_bytes"):
        return 50e6
    return 2


def render():
    out = []
    with STATE.lock:
        now = time.time()
        dt = max(now - STATE.last, 0.0)
        STATE.last = now
        faults = dict(STATE.faults)
        delay = faults.get("slow_first_token_s", 0.0)
        for name, typ, labels, values in FAMILIES:
            out.append(f"# TYPE {name} {typ}")
            for ls in label_sets(labels, values):
                key = name + fmt_labels(ls)
                if typ == "gauge":
                    out.append(f"{name}{fmt_labels(ls)} {gauge_value(name, ls, faults)}")
                elif typ == "counter":
                    rate = 1.0
                    if name == "vllm_sentinel_probe_requests_total":
                        o = ls.get("outcome")
                        rate = 4.0 if o == "ok" else 0.01
                        if o == "context_length":
                            rate = 3.0 if (faults.get("max_model_len") and ls.get("workload") != "canary") else 0.0
                    if "xid" in name or "ecc" in name:
                        rate = 0.0
                    if name.startswith("process_cpu"):
                        rate = 0.01
                    out.append(f"{name}{fmt_labels(ls)} {STATE.add(key, rate * dt):.6f}")
                else:  # histogram
                    bounds = TTFT_B if "ttft" in name else ITL_B if ("itl" in name or "tpot" in name) else LAG_B if "lag" in name else LAT_B
                    base = 0.2 if "ttft" in name else 0.03 if ("itl" in name or "tpot" in name) else 0.002 if "lag" in name else 2.0
                    if "ttft" in name or "e2e" in name:
                        base += delay
                    n = 4.0 * dt
                    for b in bounds:
                        frac = 1.0 if b >= base * 1.5 else 0.5 if b >= base else 0.0
                        v = STATE.add(key + f"le={b}", n * frac)
                        out.append(f'{name}_bucket{fmt_labels(dict(ls, le=repr(float(b))))} {v:.6f}')
                    v = STATE.add(key + "le=+Inf", n)
                    out.append(f'{name}_bucket{fmt_labels(dict(ls, le="+Inf"))} {v:.6f}')
                    out.append(f"{name}_sum{fmt_labels(ls)} {STATE.add(key + 'sum', n * base):.6f}")
                    out.append(f"{name}_count{fmt_labels(ls)} {v:.6f}")
    return "\n".join(out) + "\n"


def parse_duration(s):
    """`1500ms`, `1.5s`, `2s` -> seconds (the humantime forms the e2e test uses)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*(ms|s)\s*", str(s))
    if not m:
        raise ValueError(f"duration {s!r}: want e.g. 1500ms or 1.5s")
    return float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def _send(self, code, body, ctype="text/plain; version=0.0.4; charset=utf-8"):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.startswith("/metrics"):
            self._send(200, render())
        elif self.path in ("/healthz", "/readyz"):
            self._send(200, "ok\n")
        else:
            self._send(404, "not found\n")

    def do_POST(self):
        if self.path != "/sim/faults":
            self._send(404, "not found\n")
            return
        n = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(n) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("not an object")
            if "slow_first_token" in body:
                body["slow_first_token_s"] = parse_duration(body["slow_first_token"])
        except ValueError as e:
            self._send(400, f"bad fault body: {e}\n")
            return
        with STATE.lock:
            STATE.faults = body
        self._send(200, json.dumps(body) + "\n", "application/json")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--print", action="store_true", help="print one exposition and exit")
    a = ap.parse_args()
    FAMILIES.extend(parse_families())
    if a.print:
        sys.stdout.write(render())
        return 0
    host, _, port = a.listen.rpartition(":")
    srv = ThreadingHTTPServer((host, int(port)), Handler)
    srv.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
