#!/usr/bin/env python3
"""The tap (`serve --tap-listen`) against a real vLLM. Python stdlib only.

Entry point for the real-vLLM tier: `tap_checks(args, out, log, check, fail)` with
args.bin (the vllm-sentinel binary), args.vllm (vLLM's base URL), args.max_model_len (its limit);
`out` a directory for the config and the daemon's log; `log(msg)`, `check(cond, msg)`,
`fail(msg)` the tier's reporting functions. Standalone:

    VLLM_PIDFILE=/path/to/vllm.pid python3 scripts/e2e/tap_checks.py --bin target/debug/vllm-sentinel \
        --vllm http://127.0.0.1:18123 --max-model-len 1024 --out /tmp/tap-e2e

What it checks, each with the numbers it compared:
1. Counts: requests sent through the tap (completions and chat, streamed with usage and not,
   temperature 0, fixed seed) are counted by the tap exactly as vLLM counts them:
   vllm:request_success_total, vllm:generation_tokens_total and vllm:prompt_tokens_total deltas
   equal the tap's ok requests, output tokens (usage) and prompt tokens, once both are quiet
   (vllm:num_requests_running == 0 and the tap's in-flight gauge 0).
2. Over-long prompts (token-id prompts of max_model_len + 1 and 2 × max_model_len, streamed and
   not) are each counted as context_length, with the exact ratio in the ratio histogram.
3. A stream without stream_options: its output tokens are counted from events (source="events"),
   an estimate: at least one, never more than vLLM's own count (vLLM may merge tokens into one
   event when the client reads slowly).
4. Deterministic responses through the tap equal direct ones: the non-streamed JSON with id and
   created removed, the streamed bytes with id and created blanked.
5. An aborted stream is freed: with vLLM's engine stopped (SIGSTOP) so that nothing races, a
   long stream is started through the tap and the client leaves after the headers; once vLLM's
   API has finished the request the engine is continued. The tap counts client_disconnected,
   vLLM's num_requests_running returns to 0, generation_tokens_total stops growing well before
   max_tokens, and vLLM counts no success.
"""
import argparse
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

SAMPLE = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$')
LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')

CONFIG = """\
[server]
listen = "127.0.0.1:{port}"

[gpu]
enabled = false

# One open-loop workload whose first arrival is ~2.8 h away, and no canary: no synthetic traffic
# reaches vLLM during the checks, so its counters move by the tap's requests only.
[[targets]]
name = "vllm"
url = "{vllm}"
[[targets.workloads]]
name = "idle"
rate = 0.0001
arrival = "constant"
max_tokens = 1
[targets.canary]
enabled = false

[tap]
models_refresh = "1s"
"""


def _parse(body):
    out = []
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if not m:
            continue
        try:
            v = float(m.group(4))
        except ValueError:
            continue
        out.append((m.group(1), dict(LABEL.findall(m.group(3) or "")), v))
    return out


def _total(samples, name, **want):
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == w for k, w in want.items()))


def _engine_pids():
    """vLLM's engine processes (EngineCore, Worker): the `VLLM::*` processes in the process group
    serve.sh started with setsid, whose leader's pid is in $VLLM_PIDFILE."""
    with open(os.environ["VLLM_PIDFILE"]) as f:
        pgid = int(f.read().strip())
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and comm.startswith("VLLM::"):
            pids.append(int(d))
    return sorted(pids)


def _get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def _post(url, body, timeout=120):
    """(status, body bytes) of a JSON POST; error statuses are returned, not raised."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def _wait(what, deadline_s, fn, fail, every=0.25):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            v = fn()
            if v:
                return v
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(every)
    fail(f"tap: timed out after {deadline_s}s waiting for {what}")
    return None


def _strip_ids(b):
    """Blanks the per-request fields of a response (ids, creation time)."""
    s = b.decode()
    s = re.sub(r'"id":"[^"]*"', '"id":""', s)
    s = re.sub(r'"created":\d+', '"created":0', s)
    return s


def _json_without_ids(b):
    v = json.loads(b)
    v.pop("id", None)
    v.pop("created", None)
    return v


def tap_checks(args, out, log, check, fail):
    os.makedirs(out, exist_ok=True)
    port, tap_port = _free_port(), _free_port()
    cfg_path = os.path.join(out, "tap-e2e.toml")
    with open(cfg_path, "w") as f:
        f.write(CONFIG.format(port=port, vllm=args.vllm))
    mml = int(args.max_model_len)
    sentinel = f"http://127.0.0.1:{port}"
    tap = f"http://127.0.0.1:{tap_port}"
    vllm = args.vllm.rstrip("/")
    daemon_log = open(os.path.join(out, "tap-daemon.log"), "w")
    proc = subprocess.Popen([args.bin, "serve", "--config", cfg_path, "--tap-listen", f"127.0.0.1:{tap_port}"],
                            stdout=daemon_log, stderr=subprocess.STDOUT)
    try:
        _wait("the tap's model list", 60,
              lambda: _total(_parse(_get(sentinel + "/metrics")), "vllm_sentinel_traffic_models_known") >= 1, fail)
        log(f"tap on {tap} in front of {vllm}; exporter {sentinel}")

        def snap():
            v = _parse(_get(vllm + "/metrics"))
            t = _parse(_get(sentinel + "/metrics"))
            return {
                "v_ok": _total(v, "vllm:request_success_total"),
                "v_gen": _total(v, "vllm:generation_tokens_total"),
                "v_prompt": _total(v, "vllm:prompt_tokens_total"),
                "v_running": _total(v, "vllm:num_requests_running"),
                "v_http": _total(v, "http_requests_total", handler="/v1/completions"),
                "t_ok": _total(t, "vllm_sentinel_traffic_requests_total", outcome="ok"),
                "t_ctx": _total(t, "vllm_sentinel_traffic_requests_total", outcome="context_length"),
                "t_disc": _total(t, "vllm_sentinel_traffic_requests_total", outcome="client_disconnected"),
                "t_out_usage": _total(t, "vllm_sentinel_traffic_output_tokens_total", source="usage"),
                "t_out_events": _total(t, "vllm_sentinel_traffic_output_tokens_total", source="events"),
                "t_prompt": _total(t, "vllm_sentinel_traffic_prompt_tokens_total"),
                "t_ratio_n": _total(t, "vllm_sentinel_traffic_context_length_ratio_count"),
                "t_ratio_sum": _total(t, "vllm_sentinel_traffic_context_length_ratio_sum"),
                "t_inflight": _total(t, "vllm_sentinel_traffic_in_flight"),
                "probes": _total(t, "vllm_sentinel_probe_requests_total"),
            }

        def quiet(expect_ok=None):
            """Both sides idle and vLLM's success counter caught up (it is updated per step)."""
            def q():
                s = snap()
                if s["v_running"] != 0 or s["t_inflight"] != 0:
                    return None
                if expect_ok is not None and s["v_ok"] < expect_ok:
                    return None
                return s
            return _wait("nothing in flight on vLLM and the tap", 60, q, fail)

        base = quiet()
        sent_ok = 0
        # 1. Counts: every kind of successful request through the tap.
        reqs = [
            ("/v1/completions", {"model": "tiny", "prompt": "The license says", "max_tokens": 16,
                                 "temperature": 0, "seed": 7}),
            ("/v1/completions", {"model": "tiny", "prompt": "The license says", "max_tokens": 24,
                                 "temperature": 0, "seed": 7, "stream": True,
                                 "stream_options": {"include_usage": True}}),
            ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                      "max_tokens": 12, "temperature": 0, "seed": 7}),
            ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                      "max_tokens": 20, "temperature": 0, "seed": 7, "stream": True,
                                      "stream_options": {"include_usage": True}}),
            ("/v1/completions", {"model": "tiny", "prompt": [5] * 200, "max_tokens": 8, "ignore_eos": True,
                                 "stream": True, "stream_options": {"include_usage": True}}),
        ]
        for path, body in reqs:
            st, _ = _post(tap + path, body)
            check(st == 200, f"tap: {path} stream={body.get('stream', False)} -> {st}")
            sent_ok += 1
        # 2. Over-long prompts (token ids: exact lengths), streamed and not.
        over = [mml + 1, 2 * mml]
        for n in over:
            for stream in (False, True):
                st, b = _post(tap + "/v1/completions", {"model": "tiny", "prompt": [5] * n, "max_tokens": 4,
                                                       "stream": stream})
                check(st == 400 and b"maximum context length" in b,
                      f"tap: {n}-token prompt (stream={stream}) rejected by vLLM with its 400")
        s = quiet(expect_ok=base["v_ok"] + sent_ok)
        d = {k: s[k] - base[k] for k in s}
        check(s["probes"] == 0, "no synthetic probe reached vLLM during the checks")
        check(d["v_ok"] == d["t_ok"] == sent_ok,
              f"successful requests: vLLM request_success_total +{d['v_ok']:.0f}, tap ok +{d['t_ok']:.0f}, sent {sent_ok}")
        check(d["v_gen"] == d["t_out_usage"] and d["t_out_events"] == 0,
              f"output tokens: vLLM generation_tokens_total +{d['v_gen']:.0f}, tap (usage) +{d['t_out_usage']:.0f}")
        check(d["v_prompt"] == d["t_prompt"],
              f"prompt tokens: vLLM prompt_tokens_total +{d['v_prompt']:.0f}, tap +{d['t_prompt']:.0f}")
        n_over = 2 * len(over)
        want_sum = 2 * sum(n / mml for n in over)
        check(d["t_ctx"] == n_over and d["t_ratio_n"] == n_over,
              f"context_length: {d['t_ctx']:.0f} counted, {d['t_ratio_n']:.0f} ratios, {n_over} sent")
        check(abs(d["t_ratio_sum"] - want_sum) < 1e-6,
              f"context-length ratios sum {d['t_ratio_sum']:.6f} = {want_sum:.6f} (requested / {mml})")

        # 3. A stream without usage: counted from events, an estimate.
        base = s
        st, _ = _post(tap + "/v1/completions", {"model": "tiny", "prompt": "Once", "max_tokens": 64,
                                               "ignore_eos": True, "stream": True, "temperature": 0})
        check(st == 200, "tap: a stream without stream_options")
        s = quiet(expect_ok=base["v_ok"] + 1)
        gen, est = s["v_gen"] - base["v_gen"], s["t_out_events"] - base["t_out_events"]
        # vLLM may merge several tokens into one event when the client reads slowly, so the
        # estimate is a lower bound: never more than vLLM's count, never none.
        check(1 <= est <= gen,
              f"stream without usage: {est:.0f} tokens estimated from events, vLLM generated {gen:.0f}")

        # 4. Deterministic responses: through the tap = direct.
        for path, body in [reqs[0], reqs[2]]:
            a = _post(vllm + path, body)
            b = _post(tap + path, body)
            check(a[0] == b[0] == 200 and _json_without_ids(a[1]) == _json_without_ids(b[1]),
                  f"{path} non-streamed: the tap's JSON equals the direct one (id/created removed)")
        for path, body in [reqs[1], reqs[3]]:
            a = _post(vllm + path, body)
            b = _post(tap + path, body)
            check(a[0] == b[0] == 200 and _strip_ids(a[1]) == _strip_ids(b[1]),
                  f"{path} streamed: the tap's bytes equal the direct ones (id/created blanked), {len(b[1])} bytes")

        # 5. An aborted stream is freed. vLLM's engine (EngineCore and Worker, in the process
        # group serve.sh started) is stopped with SIGSTOP while the request goes in and the
        # client goes away, and continued only once vLLM's API process has finished the request
        # (its http_requests_total counts a stream when its handler returns, after AsyncLLM has
        # sent the engine the abort). Nothing is raced: on a loaded machine vLLM's API process
        # holds a stream and delivers it in one burst after the whole generation (measured with
        # stress-ng --cpu 2: 2.0-2.3 s, all 1,008 tokens), so an engine left running finishes
        # before any client can abort. If the tap did not close the upstream connection, vLLM
        # would never see the disconnect: its handler would not return, and after the engine
        # is continued it would generate all max_tokens and count a success.
        base = quiet()
        max_tokens = mml - 16
        engine = _engine_pids()
        check(len(engine) >= 1, f"vLLM's engine processes found: {engine}")
        u = urllib.parse.urlparse(tap)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        for pid in engine:
            os.kill(pid, signal.SIGSTOP)
        try:
            conn.request("POST", "/v1/completions", body=json.dumps({
                "model": "tiny", "prompt": "Once", "max_tokens": max_tokens, "ignore_eos": True, "stream": True}),
                headers={"content-type": "application/json"})
            r = conn.getresponse()
            check(r.status == 200, "tap: a long stream started (200 and its headers came through the tap)")
            conn.sock.shutdown(socket.SHUT_RDWR)
            conn.close()
            _wait("the tap to count the disconnect and vLLM's API to finish the request", 60,
                  lambda: (lambda x: x if x["t_disc"] > base["t_disc"] and x["v_http"] > base["v_http"]
                           else None)(snap()), fail)
        finally:
            for pid in engine:
                os.kill(pid, signal.SIGCONT)
        s = _wait("the aborted request to leave vLLM", 60,
                  lambda: (lambda x: x if x["v_running"] == 0 and x["t_inflight"] == 0 else None)(snap()), fail)
        # Nothing runs any more, so a second read must show the same generation counter.
        s2 = snap()
        gen = s2["v_gen"] - base["v_gen"]
        check(s2["v_gen"] == s["v_gen"], f"generation_tokens_total stopped growing ({s['v_gen']:.0f} then {s2['v_gen']:.0f})")
        check(gen < max_tokens, f"the aborted stream generated {gen:.0f} of {max_tokens} tokens")
        check(s2["t_disc"] - base["t_disc"] == 1, "the tap counted one client_disconnected")
        check(s2["v_ok"] == base["v_ok"], "vLLM counted no success for the aborted request")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        daemon_log.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--vllm", required=True)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--out", default="/tmp/vllm-sentinel-tap-e2e")
    args = ap.parse_args()

    def log(msg):
        print(f"  {msg}", flush=True)

    def fail(msg):
        print(f"FAIL: {msg}", file=sys.stderr, flush=True)
        sys.exit(1)

    def check(cond, msg):
        if not cond:
            fail(msg)
        log(f"ok: {msg}")

    t0 = time.monotonic()
    tap_checks(args, args.out, log, check, fail)
    print(f"all tap checks passed in {time.monotonic() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
