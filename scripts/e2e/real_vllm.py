#!/usr/bin/env python3
"""Checks of the real-vLLM tier (driven by scripts/e2e-real-vllm.sh). Python stdlib only.

Each check prints what it compared, with numbers. Every check runs and every failure is
reported (a section whose precondition fails stops there, the next section still runs); the
script exits non-zero if any check failed.

Every verdict is the same on every run, by construction:
- counters are compared only after quiescing: the load is reloaded away (a workload whose first
  arrival is hours away; the canary's one round is over) and both the daemon and vLLM show
  nothing in flight; then the daemon's counts equal vLLM's own counter deltas exactly;
- a figure taken from a sample is taken in a state that persists (a closed loop that keeps more
  streams than the KV cache holds), or in a quiescent state where it cannot change;
- the experiments decide from states they construct (see src/experiments/kvscale.rs).
Waits have deadlines only to turn a hang into a failure, never to decide a verdict.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

SAMPLE = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$')
LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def log(msg):
    print(f"  {msg}", flush=True)


RESULTS = {"passed": 0, "failed": []}


class SectionFailed(Exception):
    """A precondition of a section failed: its remaining checks cannot run."""


def fail(msg):
    """Records a failure and stops the current section."""
    RESULTS["failed"].append(msg)
    print(f"FAIL: {msg}", file=sys.stderr, flush=True)
    raise SectionFailed(msg)


def check(cond, msg):
    """Records one check; a failure is reported and the section goes on."""
    if cond:
        RESULTS["passed"] += 1
        log(f"ok: {msg}")
    else:
        RESULTS["failed"].append(msg)
        print(f"FAIL: {msg}", file=sys.stderr, flush=True)
    return cond


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

# One canary round, at start: after it, the canary sends nothing more during the run, so the
# counters can be compared exactly once the workloads are reloaded away.
[targets.canary]
interval = "10h"
{workloads}"""

STEADY = """
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
"""

BURST = """
[[targets.workloads]]
name = "burst"
concurrency = 24
prompt_tokens = 700
max_tokens = 256
"""

# The quiescent state: one open-loop workload whose first arrival is ten hours away.
IDLE = """
[[targets.workloads]]
name = "idle"
rate = 0.0001
arrival = "constant"
prompt_tokens = 8
max_tokens = 1
"""


def hist_mean(samples, base, **want):
    s = total(samples, base + "_sum", **want)
    c = total(samples, base + "_count", **want)
    return (s / c if c else float("nan")), s, c


def vllm_counters(args):
    raw = parse(http_get(args.vllm + "/metrics"))
    return {
        "gen": total(raw, "vllm:generation_tokens_total"),
        "prompt": total(raw, "vllm:prompt_tokens_total"),
        "success": total(raw, "vllm:request_success_total"),
        "running": total(raw, "vllm:num_requests_running"),
        "waiting": total(raw, "vllm:num_requests_waiting"),
    }


def quiesce(args, metrics_url, what):
    """Waits until the daemon has nothing in flight, its canary round is over, and vLLM has
    nothing running or waiting, twice in a row with vLLM's generation counter unchanged.
    Returns (daemon samples, vLLM counters) of that state."""
    state = {"prev": None}

    def quiet():
        s = parse(http_get(metrics_url))
        v = vllm_counters(args)
        inside = total(s, "vllm_sentinel_canary_probes_total", probe="inside")
        over = total(s, "vllm_sentinel_canary_probes_total", probe="over")
        idle = (total(s, "vllm_sentinel_probe_in_flight") == 0 and inside == over
                and v["running"] == 0 and v["waiting"] == 0)
        prev, state["prev"] = state["prev"], (v["gen"], v["success"]) if idle else None
        return (s, v) if idle and prev == (v["gen"], v["success"]) else None
    s, v = wait_until(f"quiescence ({what}): nothing in flight in the daemon or vLLM", 180, quiet)
    log(f"quiescent after {what}")
    return s, v


def reload(proc, cfg_path, write):
    """Writes a new config and reloads it with SIGHUP (which needs no lifecycle flag)."""
    write()
    proc.send_signal(signal.SIGHUP)


def compare_counters(args, s, v, v0, what):
    """Exact equalities between the daemon's counts and vLLM's counter deltas."""
    ours_tokens = total(s, "vllm_sentinel_probe_output_tokens_total")
    ours_prompt = total(s, "vllm_sentinel_probe_prompt_tokens_total")
    ours_ok = total(s, "vllm_sentinel_probe_requests_total", outcome="ok")
    # The canary's inside probe asks for one token of a max_model_len − 1 prompt.
    canary = total(s, "vllm_sentinel_canary_probes_total", probe="inside", result="served")
    gen, success, prompt = v["gen"] - v0["gen"], v["success"] - v0["success"], v["prompt"] - v0["prompt"]
    check(ours_tokens + canary == gen,
          f"{what}: output tokens: vLLM generated {gen:.0f}, the daemon counted {ours_tokens:.0f} + {canary:.0f} canary")
    check(ours_ok + canary == success,
          f"{what}: requests: vLLM finished {success:.0f}, the daemon counted {ours_ok:.0f} ok + {canary:.0f} canary")
    check(ours_prompt + canary * (args.max_model_len - 1) == prompt,
          f"{what}: prompt tokens: vLLM prefilled {prompt:.0f}, the daemon counted {ours_prompt:.0f} + "
          f"{canary:.0f} x {args.max_model_len - 1} canary")


class Daemon:
    """One `vllm-sentinel serve` of a section: its config file (rewritten by `write_config` with
    the given workload parts), its log, readiness on entry, and on leaving the `with` block a
    SIGTERM whose clean exit (status 0) is checked."""

    def __init__(self, args, out, name, fmt=lambda part: part):
        self.args, self.name, self.fmt = args, name, fmt
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.metrics_url = self.base + "/metrics"
        self.cfg_path = os.path.join(out, f"{name}.toml")
        self.log_path = os.path.join(out, f"{name}.log")
        self.proc = None

    def write_config(self, *parts):
        with open(self.cfg_path, "w") as f:
            f.write(CONFIG.format(port=self.port, vllm=self.args.vllm,
                                  workloads="".join(self.fmt(p) for p in parts)))

    def __enter__(self):
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([self.args.bin, "serve", "--config", self.cfg_path],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_until(f"the {self.name} daemon's /readyz", 120, lambda: http_get(self.base + "/readyz") and True)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = None
        self.log.close()
        check(rc == 0, f"the {self.name} daemon stopped cleanly on SIGTERM (exit {rc})")
        return False


def daemon_checks(args, out):
    too_long = args.max_model_len + 100
    d = Daemon(args, out, "daemon", fmt=lambda p: p.format(too_long=too_long))
    port, metrics_url, cfg_path, write_config = d.port, d.metrics_url, d.cfg_path, d.write_config
    write_config(STEADY)
    v0 = wait_until("vLLM idle before the daemon starts", 120,
                    lambda: (lambda v: v if v["running"] == 0 and v["waiting"] == 0 else None)(vllm_counters(args)))
    log(f"vLLM before the daemon: generation_tokens_total {v0['gen']:.0f}, request_success_total {v0['success']:.0f}")
    with d:
        proc = d.proc

        # --- 1. steady state -------------------------------------------------------------------
        def steady_enough():
            s = parse(http_get(metrics_url))
            return s if (total(s, "vllm_sentinel_probe_ttft_seconds_count", workload="steady") >= 20
                         and total(s, "vllm_sentinel_canary_probes_total", probe="over") >= 1
                         and total(s, "vllm_sentinel_probe_requests_total", workload="too-long", outcome="context_length") >= 2
                         and total(s, "vllm_sentinel_upstream_up") == 1) else None
        wait_until("steady-state probe results", 240, steady_enough)
        with open(os.path.join(out, "vllm-metrics-steady.txt"), "w") as f:
            f.write(http_get(args.vllm + "/metrics"))
        with open(os.path.join(out, "sentinel-metrics-steady.txt"), "w") as f:
            f.write(http_get(metrics_url))

        # Quiesce, then compare: nothing can change between the two reads.
        reload(proc, cfg_path, lambda: write_config(IDLE))
        s, v = quiesce(args, metrics_url, "the steady load")
        compare_counters(args, s, v, v0, "steady")
        for h in ("ttft", "itl", "tpot", "e2e", "ttfb"):
            mean, _, count = hist_mean(s, f"vllm_sentinel_probe_{h}_seconds", workload="steady")
            check(count > 0 and mean > 0, f"probe {h} histogram filled: {count:.0f} observations, mean {mean * 1000:.2f} ms")
        ttft1, _, _ = hist_mean(s, "vllm_sentinel_probe_ttft_seconds", workload="steady")
        # TPOT = (last − first output time) / (16 − 1) and the ITL gaps of a request add up to
        # last − first, so over the same requests sum(ITL) = 15 · sum(TPOT), whatever the gaps.
        _, itl_sum, _ = hist_mean(s, "vllm_sentinel_probe_itl_seconds", workload="steady")
        _, tpot_sum, tpot_n = hist_mean(s, "vllm_sentinel_probe_tpot_seconds", workload="steady")
        check(tpot_n > 0 and abs(itl_sum - 15 * tpot_sum) <= 1e-6 * itl_sum,
              f"sum of ITL gaps {itl_sum:.6f} s = 15 x sum of TPOT {15 * tpot_sum:.6f} s over {tpot_n:.0f} requests")
        ok = total(s, "vllm_sentinel_probe_requests_total", workload="steady", outcome="ok")
        check(ok == total(s, "vllm_sentinel_probe_ttft_seconds_count", workload="steady"),
              "every ok request is in the TTFT histogram, and nothing else")
        steady_other = sum(x for l, x in values(s, "vllm_sentinel_probe_requests_total", workload="steady") if l["outcome"] != "ok")
        check(steady_other == 0, f"no steady request failed ({steady_other:.0f} did)")
        per_req = total(s, "vllm_sentinel_probe_output_tokens_total", workload="steady") / max(1.0, ok)
        check(per_req == 16, f"every ok steady request produced exactly max_tokens=16 tokens (mean {per_req})")

        # Normalised gauges equal the raw values of the same scrape: once the daemon's
        # pass-through shows vLLM's current counter, vLLM is quiescent and nothing changes.
        s = wait_until("the daemon's scrape to catch up with quiescent vLLM", 60,
                       lambda: (lambda x: x if total(x, "vllm:generation_tokens_total", target="vllm") == v["gen"] else None)(parse(http_get(metrics_url))))
        for concept, raw_name in (("kv_cache_usage_ratio", "vllm:kv_cache_usage_perc"),
                                  ("requests_running", "vllm:num_requests_running"),
                                  ("requests_waiting", "vllm:num_requests_waiting"),
                                  ("generation_tokens_total", "vllm:generation_tokens_total"),
                                  ("prompt_tokens_total", "vllm:prompt_tokens_total"),
                                  ("preemptions_total", "vllm:num_preemptions_total")):
            norm = values(s, f"vllm_sentinel_server_{concept}", target="vllm")
            rawv = values(s, raw_name, target="vllm")
            check(norm and rawv and norm[0][1] == rawv[0][1],
                  f"normalised {concept} = raw {raw_name} from the same scrape ({norm[0][1] if norm else None} vs {rawv[0][1] if rawv else None})")
        cap = values(s, "vllm_sentinel_server_kv_cache_capacity_tokens", target="vllm")
        info = [l for n, l, x in parse(http_get(args.vllm + "/metrics")) if n == "vllm:cache_config_info"]
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
        other = sum(x for l, x in values(s, "vllm_sentinel_probe_requests_total", workload="too-long") if l["outcome"] != "context_length")
        check(rej >= 2 and other == 0, f"real over-long requests counted as context_length rejections: {rej:.0f} (other outcomes: {other:.0f})")

        # --- 2. burst: 24 closed-loop streams of 956 tokens where 7 fit ---------------------------
        # The states looked for persist while the burst runs (17 streams always wait; the cache
        # stays near full), so a sample finds them; the wait ends as soon as all are seen.
        before = parse(http_get(metrics_url))
        reload(proc, cfg_path, lambda: write_config(STEADY, BURST))
        peak = {"waiting": 0.0, "kv": 0.0}

        def burst_seen():
            x = parse(http_get(metrics_url))
            peak["waiting"] = max(peak["waiting"], total(x, "vllm_sentinel_server_requests_waiting", target="vllm"))
            peak["kv"] = max(peak["kv"], total(x, "vllm_sentinel_server_kv_cache_usage_ratio", target="vllm"))
            pre = total(x, "vllm_sentinel_server_preemptions_total", target="vllm") - total(before, "vllm_sentinel_server_preemptions_total", target="vllm")
            done = total(x, "vllm_sentinel_probe_requests_total", workload="burst", outcome="ok")
            steady_more = (total(x, "vllm_sentinel_probe_ttft_seconds_count", workload="steady")
                           - total(before, "vllm_sentinel_probe_ttft_seconds_count", workload="steady"))
            return x if peak["waiting"] > 0 and peak["kv"] >= 0.9 and pre > 0 and done >= 24 and steady_more >= 5 else None
        try:
            wait_until("the burst's waiting queue, full KV cache, preemptions and 24 finished streams", 300, burst_seen)
        except SectionFailed:
            pass
        with open(os.path.join(out, "sentinel-metrics-burst.txt"), "w") as f:
            f.write(http_get(metrics_url))
        # The live status page against real vLLM, in Chromium: every chart of the target has
        # data (the burst is still running), no script error, no request off the daemon.
        shot = os.path.join(out, "status-page-real-vllm.png")
        browser = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "browser", "screenshot.py")
        r = subprocess.run([sys.executable, browser, f"http://127.0.0.1:{port}", shot, "--target", "vllm"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=180)
        check(r.returncode == 0, f"status page against real vLLM in Chromium: {r.stdout.strip()[-500:]}")
        reload(proc, cfg_path, lambda: write_config(IDLE))
        after, v2 = quiesce(args, metrics_url, "the burst")
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
        compare_counters(args, after, v2, v0, "after the burst")


# Long streams, so that probes are certainly in flight when vLLM is killed (each takes seconds).
CHAOS = """
[[targets.workloads]]
name = "long"
concurrency = 3
prompt_tokens = 32
max_tokens = 600
"""


def vllm_pgid():
    """The process group of the running vLLM (serve.sh starts it with setsid)."""
    with open(os.environ["VLLM_PIDFILE"]) as f:
        return int(f.read().strip())


def restart_vllm():
    """Starts vLLM again on the same port (serve.sh, without its setup step)."""
    env = dict(os.environ, VLLM_CPU_SKIP_SETUP="1")
    here = os.path.dirname(os.path.abspath(__file__))
    serve = os.path.join(here, "..", "vllm-cpu", "serve.sh")
    r = subprocess.run([serve], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    check(r.returncode == 0, "vLLM restarted on the same port" + ("" if r.returncode == 0 else f":\n{r.stdout[-2000:]}"))
    if r.returncode != 0:
        fail("vLLM did not come back")


def chaos_checks(args, out):
    """kill -9 vLLM while probes stream, restart it on the same port: the daemon classifies the
    probes that were in flight, keeps serving /metrics, recovers on its own, and leaves no stale
    series of the killed instance."""
    d = Daemon(args, out, "chaos-daemon")
    metrics_url, cfg_path, write_config = d.metrics_url, d.cfg_path, d.write_config
    write_config(CHAOS)
    with d:
        proc = d.proc

        def failures(x):
            return sum(v for l, v in values(x, "vllm_sentinel_probe_requests_total", workload="long") if l["outcome"] != "ok")

        # Streams in flight on both sides, and at least one finished (the pipeline works).
        def streaming():
            x = parse(http_get(metrics_url))
            v = vllm_counters(args)
            return x if (total(x, "vllm_sentinel_probe_in_flight", workload="long") >= 1 and v["running"] >= 1
                         and total(x, "vllm_sentinel_probe_requests_total", workload="long", outcome="ok") >= 1) else None
        before = wait_until("long streams in flight", 300, streaming)
        in_flight = total(before, "vllm_sentinel_probe_in_flight", workload="long")
        ok_before = total(before, "vllm_sentinel_probe_requests_total", workload="long", outcome="ok")
        failed_before = failures(before)
        # Each stream lasts seconds, so the streams seen in flight are still in flight now.
        os.killpg(vllm_pgid(), signal.SIGKILL)
        log(f"killed vLLM (SIGKILL to its process group) with {in_flight:.0f} probes in flight")

        def gone():
            try:
                http_get(args.vllm + "/health", timeout=2)
                return None
            except (urllib.error.URLError, ConnectionError, OSError):
                return True
        # (wait_until treats a refused connection as "not yet", so poll the port directly)
        deadline = time.monotonic() + 60
        while not gone():
            if time.monotonic() > deadline:
                fail("vLLM still answers after SIGKILL")
            time.sleep(0.2)
        # The killed server cannot remove its pidfile, and where nothing reaps orphans its pid
        # stays a zombie that `kill -0` still finds: serve.sh would refuse to start.
        os.unlink(os.environ["VLLM_PIDFILE"])

        def classified():
            x = parse(http_get(metrics_url))
            return x if (total(x, "vllm_sentinel_probe_in_flight", workload="long") == 0
                         and failures(x) - failed_before >= in_flight
                         and total(x, "vllm_sentinel_upstream_up", target="vllm") == 0) else None
        down = wait_until("the in-flight probes classified and the target marked down", 120, classified)
        by = {l["outcome"]: v for l, v in values(down, "vllm_sentinel_probe_requests_total", workload="long")}
        by_before = {l["outcome"]: v for l, v in values(before, "vllm_sentinel_probe_requests_total", workload="long")}
        delta = {k: v - by_before.get(k, 0) for k, v in by.items() if v - by_before.get(k, 0) > 0 and k != "ok"}
        check(failures(down) - failed_before >= in_flight,
              f"the {in_flight:.0f} probes in flight at the kill were counted as failures: {delta}")
        check(set(delta) <= {"truncated", "connect", "timeout_first_token", "timeout_request", "server_error", "overloaded"},
              f"the kill is classified as a transport failure, never as ok or a client error: {sorted(delta)}")
        check(proc.poll() is None and http_get(metrics_url) is not None, "the daemon kept running and serving /metrics")

        restart_vllm()

        def recovered():
            x = parse(http_get(metrics_url))
            return x if (total(x, "vllm_sentinel_upstream_up", target="vllm") == 1
                         and total(x, "vllm_sentinel_probe_requests_total", workload="long", outcome="ok") >= ok_before + 3) else None
        wait_until("the daemon to recover on its own (3 more ok probes, upstream up)", 300, recovered)
        check(True, "the daemon recovered on its own: upstream up, probes ok again")

        # No stale series: once quiescent, every pass-through and normalised value of the target
        # is the new instance's (the killed instance's counters were larger: it had served).
        reload(proc, cfg_path, lambda: write_config(IDLE))
        s, v = quiesce(args, metrics_url, "the restart")
        s = wait_until("the daemon's scrape to show the new instance", 60,
                       lambda: (lambda x: x if total(x, "vllm:generation_tokens_total", target="vllm") == v["gen"] else None)(parse(http_get(metrics_url))))
        for name in ("vllm:generation_tokens_total", "vllm_sentinel_server_generation_tokens_total",
                     "vllm_sentinel_server_requests_running", "vllm_sentinel_server_info"):
            series = values(s, name, target="vllm")
            check(len(series) == 1, f"{name}: exactly one series for the target after the restart ({len(series)})")
        gen = values(s, "vllm_sentinel_server_generation_tokens_total", target="vllm")
        check(gen and gen[0][1] == v["gen"], f"normalised generation tokens are the new instance's {v['gen']:.0f} ({gen[0][1] if gen else None})")
        check(total(s, "vllm_sentinel_server_requests_running", target="vllm") == 0, "no request shown running after the restart")


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
    print("\n".join("    | " + x for x in r.stdout.splitlines()[-60:]), flush=True)
    log(f"{name} took {time.monotonic() - t0:.1f}s")
    with open(os.path.join(d, f"{name}.json")) as f:
        return json.load(f), d


def experiment_checks(args, out):
    info = [l for n, l, v in parse(http_get(args.vllm + "/metrics")) if n == "vllm:cache_config_info"][0]
    blocks, bs = int(info["num_gpu_blocks"]), int(info["block_size"])

    rep, d = run_cmd(args, out, "bench", ["--requests", "8", "--warmup", "2", "--prompt-tokens", "64", "--max-tokens", "32"])
    check(isinstance(rep.get("bench"), dict), "bench report has its bench section")
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
    check_kv_scale(kv, blocks, args.max_model_len)
    log(f"kv-scale artefacts: {sorted(os.listdir(d))}")


def check_kv_scale(kv, blocks, max_model_len, min_hold=64):
    """kv-scale's measurements against real vLLM. The verdict cannot depend on a race with the
    server, so what is checked is that every answer kv-scale gives is right, and that it
    answers where it always can:
    - a rung it measured matches cache_config_info's expectation within one block, and a stream
      it closed was aborted by vLLM and its blocks freed;
    - a rung it did not measure says why, and the reason is the one kv-scale can meet (the
      stream decoded its whole context before a /metrics body showed it running: on a loaded
      machine vLLM's /metrics can be slower than the tiny model's decode), never a wrong value;
    - at least one held rung is measured, so the measurement itself is exercised, unless every
      unmeasured stream reached the client in one burst at its end: then vLLM's API process was
      behind its engine for the whole decode and answered /metrics only after it (no client can
      see the request resident; kv-scale reads /metrics from the moment it sends);
    - a grid cell is decided as its computed capacity says, or is `undecided` (seen in no known
      state), never the wrong way; at least one cell is decided each way."""
    one_block = 1.0 / (blocks - 1)
    accepted = [r for r in kv["ladder"] if r["feasibility"] == "accepted"]
    held = [r for r in accepted if max_model_len - r["prompt_tokens_requested"] >= min_hold]
    check(len(held) >= 3, f"kv-scale: {len(held)} rungs with room to be held")
    for r in held:
        d, e = r["kv_usage_delta"], r["kv_usage_expected"]
        what = (f"({r['kv_tokens_at_sample']} tokens held, {r['resident_samples']} resident samples, "
                f"{r['attempts']} attempt(s))")
        if d is None and e is None:
            check(r["kv_note"] and "ended before" in r["kv_note"] and r["attempts"] >= 3,
                  f"kv-scale: prompt {r['prompt_tokens_requested']}: not measured, and says why: {r['kv_note']} {what}")
        else:
            check(d is not None and e is not None and r["kv_within_one_block"] is True and abs(d - e) <= one_block + 1e-9,
                  f"kv-scale: prompt {r['prompt_tokens_requested']}: measured KV usage {d} vs expected {e} {what}")
        if r["released_after_close"] is not None:
            check(r["released_after_close"] is True,
                  f"kv-scale: prompt {r['prompt_tokens_requested']}: vLLM aborted the closed stream and freed its blocks "
                  f"in {r['release_s']} s")
    measured = [r["prompt_tokens_requested"] for r in held if r["kv_usage_delta"] is not None]
    # A stream whose every token reached the client in one burst at its end (TTFT within 10 % of
    # its e2e): vLLM's API process was behind its engine for the whole decode, and its /metrics
    # answered only after the request had ended (seen on this 2-core machine beside CPU
    # burners). No client can see such a request resident; kv-scale must say so, not guess.
    burst = [r["prompt_tokens_requested"] for r in held if r["kv_usage_delta"] is None
             and r["ttft_s"] is not None and r["e2e_s"] and r["ttft_s"] >= 0.9 * r["e2e_s"]]
    unseen = [r["prompt_tokens_requested"] for r in held if r["kv_usage_delta"] is None]
    check(measured or sorted(burst) == sorted(unseen),
          f"kv-scale: held rungs measured while resident: {measured} of {[r['prompt_tokens_requested'] for r in held]}; "
          f"not measured, each stream delivered in one burst at its end: {burst}")
    for r in accepted:
        if r not in held:
            check(r["kv_usage_delta"] is None and r["kv_note"],
                  f"kv-scale: prompt {r['prompt_tokens_requested']}: too close to the limit to hold, reported as not measured: {r['kv_note']}")
    decided = {"fits": 0, "queues": 0}
    for g in kv["grid"]:
        cap = g["capacity_computed"]
        for c in g["cells"]:
            want = "fits" if c["concurrency"] <= cap else "queues"
            check(c["verdict"] in (want, "undecided"),
                  f"kv-scale grid: {c['concurrency']} x {g['context_tokens']} tokens (capacity {cap}): {c['verdict']} "
                  f"after {c['attempts']} run(s), running peak {c['running_peak']}, waiting peak {c['waiting_peak']}, preemptions {c['preemptions']}")
            if c["verdict"] == want:
                decided[want] += 1
    check(decided["fits"] > 0 and decided["queues"] > 0,
          f"kv-scale grid: cells decided each way: {decided}")
    grid = [g for g in kv["grid"] if g["max_fitting_observed"] is not None]
    check(all(g["max_fitting_observed"] <= g["capacity_computed"] for g in grid),
          f"kv-scale grid: no more sequences ran at once than the computed KV capacity allows "
          f"({len(grid)} length(s) with a sequence count seen fitting)")


def update_examples(src, dst):
    """Copies the run's /metrics snapshots (the daemon's and vLLM's, steady and during the burst)
    to docs/examples/metrics/, and the status page screenshot taken during the burst to
    docs/examples/status-page-real-vllm.png. The one-shot reports there are regenerated by the commands in
    docs/examples/README.md."""
    d = os.path.join(dst, "metrics")
    os.makedirs(d, exist_ok=True)
    for name in ("sentinel-metrics-steady.txt", "vllm-metrics-steady.txt", "sentinel-metrics-burst.txt"):
        shutil.copy(os.path.join(src, name), os.path.join(d, name))
    shot = os.path.join(src, "status-page-real-vllm.png")
    if os.path.exists(shot):
        shutil.copy(shot, os.path.join(dst, "status-page-real-vllm.png"))
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
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_parity
    import tap_checks as tap

    def tap_section(args, out):
        tap.tap_checks(args, os.path.join(out, "tap"), log, check, fail)
    tap_section.__name__ = "tap_checks"

    def parity_section(args, out):
        bench_parity.parity_checks(args, os.path.join(out, "parity"), log, check, fail)
    parity_section.__name__ = "parity_checks"
    sections = [("daemon against real vLLM", daemon_checks),
                ("the tap in front of real vLLM", tap_section),
                ("one-shot experiments against real vLLM", experiment_checks),
                ("sweep side by side with vllm bench serve", parity_section),
                ("kill -9 and restart of vLLM under load", chaos_checks)]
    # E2E_ONLY=daemon,chaos runs the sections whose function name contains any of the words.
    only = [w for w in os.environ.get("E2E_ONLY", "").split(",") if w]
    for title, fn in sections:
        if only and not any(w in fn.__name__ for w in only):
            continue
        print(f"-- {title}", flush=True)
        t = time.monotonic()
        try:
            fn(args, args.out)
        except SectionFailed:
            log(f"section stopped: {title}")
        except Exception as e:  # a bug or an unexpected answer: report it, go on
            RESULTS["failed"].append(f"{title}: {type(e).__name__}: {e}")
            print(f"FAIL: {title}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        log(f"{title}: {time.monotonic() - t:.0f}s")
    n_ok, failed = RESULTS["passed"], RESULTS["failed"]
    print(f"real-vLLM checks: {n_ok} passed, {len(failed)} failed, in {time.monotonic() - t0:.0f}s", flush=True)
    for f in failed:
        print(f"  FAILED: {f}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
