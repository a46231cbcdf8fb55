#!/usr/bin/env python3
"""Checks of the real-vLLM tier (driven by scripts/e2e-real-vllm.sh). Python stdlib only.

Each check prints what it compared, with numbers; any failure exits non-zero with the reason.
"""
import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

SAMPLE = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$')
LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def log(msg):
    print(f"  {msg}", flush=True)


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)
    log(f"ok: {msg}")


def http_get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def http_post(url, timeout=10):
    req = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read().decode()


def parse(body):
    """[(name, {labels}, value)] of every sample line."""
    out = []
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if not m:
            continue
        labels = dict(LABEL.findall(m.group(3) or ""))
        try:
            v = float(m.group(4))
        except ValueError:
            continue
        out.append((m.group(1), labels, v))
    return out


def total(samples, name, **want):
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == w for k, w in want.items()))


def values(samples, name, **want):
    return [(l, v) for n, l, v in samples if n == name and all(l.get(k) == w for k, w in want.items())]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_until(what, deadline_s, fn, every=0.5):
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        try:
            last = fn()
            if last:
                return last
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(every)
    fail(f"timed out after {deadline_s}s waiting for {what}")


CONFIG = """\
[server]
listen = "127.0.0.1:{port}"
shutdown_grace = "5s"

[scrape]
interval = "1s"
passthrough = true

[gpu]
enabled = false

[[targets]]
name = "vllm"
url = "{vllm}"

[targets.canary]
interval = "5s"

[[targets.workloads]]
name = "steady"
concurrency = 2
prompt_tokens = 64
max_tokens = 16

[[targets.workloads]]
name = "too-long"
rate = 0.5
arrival = "constant"
prompt_tokens = {too_long}
max_tokens = 1
{burst}"""

BURST = """
[[targets.workloads]]
name = "burst"
concurrency = 24
prompt_tokens = 700
max_tokens = 256
"""


def hist_mean(samples, base, **want):
    s = total(samples, base + "_sum", **want)
    c = total(samples, base + "_count", **want)
    return (s / c if c else float("nan")), s, c


def daemon_checks(args, out):
    port = free_port()
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    cfg_path = os.path.join(out, "sentinel.toml")
    too_long = args.max_model_len + 100

    def write_config(burst):
        with open(cfg_path, "w") as f:
            f.write(CONFIG.format(port=port, vllm=args.vllm, too_long=too_long, burst=BURST if burst else ""))

    write_config(False)
    gen0 = total(parse(http_get(args.vllm + "/metrics")), "vllm:generation_tokens_total")
    log(f"vLLM generation_tokens_total before the daemon: {gen0:.0f}")
    daemon_log = open(os.path.join(out, "daemon.log"), "w")
    proc = subprocess.Popen([args.bin, "serve", "--config", cfg_path], stdout=daemon_log, stderr=subprocess.STDOUT)
    try:
        wait_until("the daemon's /readyz", 120, lambda: http_get(f"http://127.0.0.1:{port}/readyz") and True)

        # --- 1. steady state -------------------------------------------------------------------
        def steady_enough():
            s = parse(http_get(metrics_url))
            return s if (total(s, "vllm_sentinel_probe_ttft_seconds_count", workload="steady") >= 20
                         and total(s, "vllm_sentinel_canary_probes_total", probe="over") >= 1
                         and total(s, "vllm_sentinel_probe_requests_total", workload="too-long", outcome="context_length") >= 2
                         and total(s, "vllm_sentinel_upstream_up") == 1) else None
        s = wait_until("steady-state probe results", 240, steady_enough)
        for h in ("ttft", "itl", "tpot", "e2e", "ttfb"):
            mean, _, count = hist_mean(s, f"vllm_sentinel_probe_{h}_seconds", workload="steady")
            check(count > 0 and mean > 0, f"probe {h} histogram filled: {count:.0f} observations, mean {mean * 1000:.2f} ms")
        ttft1, _, _ = hist_mean(s, "vllm_sentinel_probe_ttft_seconds", workload="steady")
        itl1, _, _ = hist_mean(s, "vllm_sentinel_probe_itl_seconds", workload="steady")
        tpot1, _, _ = hist_mean(s, "vllm_sentinel_probe_tpot_seconds", workload="steady")
        check(tpot1 > 0 and abs(tpot1 - itl1) / itl1 < 0.5, f"TPOT {tpot1 * 1000:.2f} ms consistent with mean ITL {itl1 * 1000:.2f} ms")
        check(total(s, "vllm_sentinel_probe_requests_total", workload="steady", outcome="ok")
              == total(s, "vllm_sentinel_probe_ttft_seconds_count", workload="steady"),
              "every ok request is in the TTFT histogram, and nothing else")

        # Output tokens against vLLM's own counter. Ours counts finished requests; vLLM counts
        # every generated token, so the difference is the canary's inside probes (1 token each)
        # plus what is still in flight (at most 2 streams x 16 tokens + 1 canary token).
        s = parse(http_get(metrics_url))
        raw = parse(http_get(args.vllm + "/metrics"))
        ours = total(s, "vllm_sentinel_probe_output_tokens_total")
        canary = total(s, "vllm_sentinel_canary_probes_total", probe="inside", result="served")
        delta = total(raw, "vllm:generation_tokens_total") - gen0
        diff = delta - ours - canary
        check(0 <= diff <= 2 * 16 + 1,
              f"output tokens: vLLM generated {delta:.0f}, the daemon counted {ours:.0f} + {canary:.0f} canary; "
              f"in flight {diff:.0f} (0..33 allowed)")
        per_req = ours / max(1.0, total(s, "vllm_sentinel_probe_requests_total", outcome="ok", workload="steady"))
        check(per_req == 16, f"every ok steady request produced exactly max_tokens=16 tokens (mean {per_req})")

        # Normalised gauges equal the raw values of the same scrape (pass-through is on, so the
        # raw families come from the very body the normalised ones were computed from).
        for concept, raw_name in (("kv_cache_usage_ratio", "vllm:kv_cache_usage_perc"),
                                  ("requests_running", "vllm:num_requests_running"),
                                  ("requests_waiting", "vllm:num_requests_waiting"),
                                  ("generation_tokens_total", "vllm:generation_tokens_total"),
                                  ("prompt_tokens_total", "vllm:prompt_tokens_total"),
                                  ("preemptions_total", "vllm:num_preemptions_total")):
            ok = False
            for _ in range(5):
                s = parse(http_get(metrics_url))
                norm = values(s, f"vllm_sentinel_server_{concept}", target="vllm")
                rawv = values(s, raw_name, target="vllm")
                if norm and rawv and norm[0][1] == rawv[0][1]:
                    ok = True
                    break
            check(ok, f"normalised {concept} = raw {raw_name} from the same scrape ({norm[0][1] if norm else None} vs {rawv[0][1] if rawv else None})")
        s = parse(http_get(metrics_url))
        cap = values(s, "vllm_sentinel_server_kv_cache_capacity_tokens", target="vllm")
        info = [l for n, l, v in parse(http_get(args.vllm + "/metrics")) if n == "vllm:cache_config_info"]
        expect_cap = int(info[0]["num_gpu_blocks"]) * int(info[0]["block_size"])
        check(cap and cap[0][1] == expect_cap, f"KV capacity {cap[0][1] if cap else None} tokens = num_gpu_blocks x block_size = {expect_cap}")
        srv = values(s, "vllm_sentinel_server_info", target="vllm")
        check(srv and srv[0][0].get("engine") == "vllm" and srv[0][0].get("version") == "0.32.0",
              f"server_info detects the engine and version: {srv[0][0] if srv else None}")

        # The context-length canary and real rejections.
        mml = values(s, "vllm_sentinel_canary_max_model_len_tokens", target="vllm")
        check(mml and mml[0][1] == args.max_model_len, f"canary reads the advertised max_model_len {args.max_model_len}")
        check(total(s, "vllm_sentinel_canary_limit_honoured", target="vllm") == 1, "canary: limit honoured (inside served, over rejected)")
        check(total(s, "vllm_sentinel_canary_probes_total", probe="over", result="rejected") >= 1, "canary: the over-limit prompt was rejected")
        served = total(s, "vllm_sentinel_canary_max_prompt_served_tokens", target="vllm")
        check(served == args.max_model_len - 1, f"canary: largest prompt served {served:.0f} = max_model_len - 1")
        rej = total(s, "vllm_sentinel_probe_requests_total", workload="too-long", outcome="context_length")
        other = sum(v for l, v in values(s, "vllm_sentinel_probe_requests_total", workload="too-long") if l["outcome"] != "context_length")
        check(rej >= 2 and other == 0, f"real over-long requests counted as context_length rejections: {rej:.0f} (other outcomes: {other:.0f})")
        with open(os.path.join(out, "sentinel-metrics-steady.txt"), "w") as f:
            f.write(http_get(metrics_url))
        with open(os.path.join(out, "vllm-metrics-steady.txt"), "w") as f:
            f.write(http_get(args.vllm + "/metrics"))

        # --- 2. burst through a config reload --------------------------------------------------
        before = parse(http_get(metrics_url))
        write_config(True)
        status, body = http_post(f"http://127.0.0.1:{port}/-/reload")
        check(status == 200, f"POST /-/reload accepted the burst workload: {body.strip()}")
        peak = {"waiting": 0.0, "kv": 0.0}
        t_end = time.monotonic() + 90
        while time.monotonic() < t_end:
            s = parse(http_get(metrics_url))
            peak["waiting"] = max(peak["waiting"], total(s, "vllm_sentinel_server_requests_waiting", target="vllm"))
            peak["kv"] = max(peak["kv"], total(s, "vllm_sentinel_server_kv_cache_usage_ratio", target="vllm"))
            pre = total(s, "vllm_sentinel_server_preemptions_total", target="vllm") - total(before, "vllm_sentinel_server_preemptions_total", target="vllm")
            burst_done = total(s, "vllm_sentinel_probe_requests_total", workload="burst", outcome="ok")
            if peak["waiting"] > 0 and peak["kv"] >= 0.9 and pre > 0 and burst_done >= 24:
                break
            time.sleep(0.5)
        after = parse(http_get(metrics_url))
        with open(os.path.join(out, "sentinel-metrics-burst.txt"), "w") as f:
            f.write(http_get(metrics_url))
        pre = total(after, "vllm_sentinel_server_preemptions_total", target="vllm") - total(before, "vllm_sentinel_server_preemptions_total", target="vllm")
        check(peak["waiting"] > 0, f"burst: requests waiting peaked at {peak['waiting']:.0f}")
        check(peak["kv"] >= 0.9, f"burst: KV-cache usage peaked at {peak['kv']:.3f}")
        check(pre > 0, f"burst: preemptions rose by {pre:.0f}")
        s1, c1 = (total(before, "vllm_sentinel_probe_ttft_seconds_sum", workload="steady"),
                  total(before, "vllm_sentinel_probe_ttft_seconds_count", workload="steady"))
        s2, c2 = (total(after, "vllm_sentinel_probe_ttft_seconds_sum", workload="steady"),
                  total(after, "vllm_sentinel_probe_ttft_seconds_count", workload="steady"))
        ttft_burst = (s2 - s1) / (c2 - c1) if c2 > c1 else float("nan")
        check(c2 > c1 and ttft_burst > ttft1,
              f"burst: steady workload's mean TTFT rose from {ttft1 * 1000:.1f} ms to {ttft_burst * 1000:.1f} ms")
        check(total(after, "vllm_sentinel_probe_requests_total", workload="steady", outcome="ok")
              >= total(before, "vllm_sentinel_probe_requests_total", workload="steady", outcome="ok"),
              "reload kept the counters (no reset)")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            fail("the daemon did not stop within 30 s of SIGTERM")
        daemon_log.close()
    check(rc == 0, f"daemon stopped cleanly on SIGTERM (exit {rc})")


def run_cmd(args, out, name, argv):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    cmd = [args.bin, name, "--target", args.vllm, "--no-progress", "--out-dir", d] + argv
    log("$ " + " ".join(cmd))
    t0 = time.monotonic()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    with open(os.path.join(d, "stdout.txt"), "w") as f:
        f.write(r.stdout)
    if r.returncode != 0:
        print(r.stdout[-4000:])
        fail(f"`{name}` exited {r.returncode}")
    log(f"{name} took {time.monotonic() - t0:.1f}s")
    with open(os.path.join(d, f"{name}.json")) as f:
        return json.load(f), d


def experiment_checks(args, out):
    info = [l for n, l, v in parse(http_get(args.vllm + "/metrics")) if n == "vllm:cache_config_info"][0]
    blocks, bs = int(info["num_gpu_blocks"]), int(info["block_size"])

    rep, d = run_cmd(args, out, "bench", ["--requests", "8", "--warmup", "2", "--prompt-tokens", "64", "--max-tokens", "32"])
    b = rep["bench"]
    modes = b["modes"] if isinstance(b, dict) and "modes" in b else b
    check(not rep.get("partial", False), "bench report is complete")
    text = json.dumps(rep)
    check('"ttft_s"' in text and '"tpot_s"' in text, "bench report has TTFT and TPOT summaries")
    log(f"bench artefacts: {sorted(os.listdir(d))}")

    rep, d = run_cmd(args, out, "sweep", ["--concurrency", "1,4,16", "--duration", "8s", "--warmup", "2s",
                                           "--prompt-tokens", "128", "--max-tokens", "64", "--no-early-stop"])
    levels = rep["sweep"]["levels"]
    check(len(levels) == 3, "sweep ran 3 levels")
    thr = [lv["request_throughput_rps"] for lv in levels]
    check(all(t > 0 for t in thr) and thr[-1] >= thr[0], f"sweep: throughput grows with load: {thr} req/s")
    log(f"sweep levels: {json.dumps([{k: lv[k] for k in lv if not isinstance(lv[k], (dict, list))} for lv in levels])[:800]}")
    check(all(lv["failed"] == 0 and lv["ok"] > 0 for lv in levels), "sweep: every level served requests, none failed")
    log(f"sweep artefacts: {sorted(os.listdir(d))}")

    rep, d = run_cmd(args, out, "kv-scale", ["--max-tokens", "64", "--grid-max-concurrency", "48"])
    kv = rep["kv_scale"]
    check(kv["max_model_len"] == args.max_model_len, f"kv-scale reads max_model_len {kv['max_model_len']}")
    bnd = kv["boundary"]
    check(bnd["max_accepted_prompt_tokens"] == args.max_model_len - 1 and bnd["min_rejected_prompt_tokens"] == args.max_model_len,
          f"kv-scale boundary: largest accepted prompt {bnd['max_accepted_prompt_tokens']}, smallest rejected {bnd['min_rejected_prompt_tokens']} (max_model_len {args.max_model_len})")
    check(kv["cache"]["capacity_tokens"] == blocks * bs,
          f"kv-scale KV capacity {kv['cache']['capacity_tokens']} = cache_config_info {blocks} x {bs}")
    rejected = [r for r in kv["ladder"] if r["feasibility"] == "rejected"]
    check(rejected and all((r["kv_usage_delta"] or 0) == 0 for r in rejected),
          f"kv-scale: {len(rejected)} rejected rung(s), none changed KV usage (rejected before any GPU work)")
    # One request's KV usage against the expectation from cache_config_info. vLLM publishes the
    # gauge between engine steps, so a short request can finish between two samples and show 0:
    # most rungs, not all, must match to within one block.
    one_block = 1.0 / (blocks - 1)
    rungs = [r for r in kv["ladder"] if r["feasibility"] in ("accepted", "clamped") and r["kv_usage_expected"]]
    matched = [r for r in rungs if r["kv_usage_peak"] is not None and abs(r["kv_usage_peak"] - r["kv_usage_expected"]) <= one_block + 1e-9]
    check(len(rungs) >= 3 and len(matched) >= 0.6 * len(rungs),
          f"kv-scale: one request's measured KV usage matches the expected blocks on {len(matched)}/{len(rungs)} rungs: "
          + ", ".join(f"{r['prompt_tokens']}: {r['kv_usage_peak']:.3f}/{r['kv_usage_expected']:.3f}" for r in rungs))
    grid = [g for g in kv["grid"] if g["max_fitting_observed"] is not None]
    log("kv-scale grid (context: computed/observed): " + ", ".join(f"{g['context_tokens']}: {g['capacity_computed']}/{g['max_fitting_observed']}" for g in kv["grid"]))
    check(grid and all(g["max_fitting_observed"] <= g["capacity_computed"] for g in grid),
          "kv-scale grid: no more sequences ran at once than the computed KV capacity allows")
    log(f"kv-scale artefacts: {sorted(os.listdir(d))}")


def update_examples(src, dst):
    """Copies the run's /metrics snapshots (the daemon's and vLLM's, steady and during the burst)
    to docs/examples/metrics/. The one-shot reports there are regenerated by the commands in
    docs/examples/README.md."""
    d = os.path.join(dst, "metrics")
    os.makedirs(d, exist_ok=True)
    for name in ("sentinel-metrics-steady.txt", "vllm-metrics-steady.txt", "sentinel-metrics-burst.txt"):
        shutil.copy(os.path.join(src, name), os.path.join(d, name))
    print(f"examples updated in {d}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin")
    ap.add_argument("--vllm")
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--out")
    ap.add_argument("--update-examples")
    ap.add_argument("--examples")
    args = ap.parse_args()
    if args.update_examples:
        update_examples(args.update_examples, args.examples)
        return
    t0 = time.monotonic()
    print("-- daemon against real vLLM", flush=True)
    daemon_checks(args, args.out)
    print("-- one-shot experiments against real vLLM", flush=True)
    experiment_checks(args, args.out)
    print(f"all real-vLLM checks passed in {time.monotonic() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
