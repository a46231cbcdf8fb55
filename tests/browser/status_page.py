#!/usr/bin/env python3
"""The live status page in a real browser (Chromium, headless), against `vllm-sentinel demo`.

Starts the demo (simulator + daemon, 2 simulated GPUs, one sample a second) on free loopback
ports and a small path-prefix reverse proxy in front of it, opens the page through the proxy
(`/sentinel/`, so every URL the page uses must be relative) in Chromium driven over the
DevTools protocol, and asserts:

* every chart has data (`data-points` > 0), the tap section says "tap off";
* every number shown (`[data-key]`, with the sample's timestamp in `#updated[data-sample-ts]`)
  equals the value of `/api/v1/status` for that sample;
* `/api/v1/status` agrees with `/metrics` at the same moment: counters of a sample taken between
  two reads of `/metrics` lie between them, constant gauges are equal;
* keyboard: Tab reaches a chart, ← moves its cursor to an older sample;
* empty states, against `serve` with an unreachable target and no NVML: the page says the
  target is not reachable since when, "no GPU: NVML not found", "tap off", and draws no chart
  for the missing data;
* no JavaScript exception, no console error (CSP violations included), no request off-host.

Usage: status_page.py BINARY [--screenshot PATH [--min-samples N]]: with --min-samples the
screenshot waits until the history holds N samples (one a second; docs/status-page.png: 90). Python standard library only; the DevTools
websocket client is the minimal one below (text frames, no extensions).
"""

import base64
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEADLINE_S = 40
PREFIX = "/sentinel"


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    raise SystemExit(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def wait_for(what, cond, deadline_s=DEADLINE_S, every=0.2):
    """Polls cond() until it returns a truthy value; fails after the deadline."""
    end = time.monotonic() + deadline_s
    last_err = None
    while time.monotonic() < end:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - reported if the deadline passes
            last_err = e
        time.sleep(every)
    fail(f"timed out waiting for {what}" + (f" (last error: {last_err})" if last_err else ""))


# ---------------------------------------------------------------- minimal websocket client
class WebSocket:
    def __init__(self, url):
        m = re.match(r"ws://([^/:]+):(\d+)(/.*)", url)
        if not m:
            fail(f"unexpected DevTools URL {url}")
        self.sock = socket.create_connection((m.group(1), int(m.group(2))), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (f"GET {m.group(3)} HTTP/1.1\r\nHost: {m.group(1)}:{m.group(2)}\r\n"
             f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
             "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                fail("DevTools closed the websocket handshake")
            head += chunk
        head, self.buf = head.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            fail(f"websocket handshake refused: {head[:200]!r}")

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("websocket closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, text):
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        if n < 126:
            hdr = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 65536:
            hdr = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            hdr = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(hdr + mask + masked)

    def recv(self):
        msg = b""
        while True:
            b0, b1 = self._read(2)
            op, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if op == 0x8:
                raise ConnectionError("websocket closed by the browser")
            if op == 0x9:  # ping: answer with pong
                self.sock.sendall(struct.pack("!BB", 0x8A, 0x80) + b"\0\0\0\0")
                continue
            msg += payload
            if b0 & 0x80:
                return msg.decode()


class DevTools:
    def __init__(self, ws_url):
        self.ws = WebSocket(ws_url)
        self.next_id = 0
        self.events = []

    def call(self, method, **params):
        self.next_id += 1
        my = self.next_id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            m = json.loads(self.ws.recv())
            if m.get("id") == my:
                if "error" in m:
                    fail(f"{method}: {m['error']}")
                return m.get("result", {})
            if "method" in m:
                self.events.append(m)

    def eval(self, expr):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            # Raised, not fatal: wait_for retries while the page is still loading.
            raise RuntimeError(f"evaluating {expr[:60]!r}: {r['exceptionDetails'].get('exception', {}).get('description')}")
        return r["result"].get("value")


def launch_chromium(chromium, profile, height=2400):
    """Starts headless Chromium with its DevTools endpoint on a free loopback port and returns
    (process, DevTools client of its page, with Runtime, Log, Network and Page enabled). Shared by
    the browser tests (status page, --html reports, the tier's screenshot)."""
    browser = subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
         f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0", f"--window-size=1280,{height}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = os.path.join(profile, "DevToolsActivePort")
        dt_port = wait_for("Chromium's DevToolsActivePort",
                           lambda: os.path.exists(port_file) and open(port_file).read().split("\n")[0].strip())
        pages = wait_for("a page target", lambda: [t for t in json.loads(get(
            f"http://127.0.0.1:{dt_port}/json/list")) if t.get("type") == "page"])
        cdp = DevTools(pages[0]["webSocketDebuggerUrl"])
        for m in ("Runtime.enable", "Log.enable", "Network.enable", "Page.enable"):
            cdp.call(m)
    except BaseException:
        browser.kill()
        browser.wait()
        raise
    return browser, cdp


# ---------------------------------------------------------------- path-prefix proxy
def start_prefix_proxy(upstream_port):
    class H(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if not self.path.startswith(PREFIX + "/"):
                self.send_error(404, "outside the proxied prefix")
                return
            url = f"http://127.0.0.1:{upstream_port}{self.path[len(PREFIX):]}"
            try:
                with urllib.request.urlopen(url, timeout=10) as r:
                    body, status, headers = r.read(), r.status, r.headers
            except urllib.error.HTTPError as e:
                body, status, headers = e.read(), e.code, e.headers
            self.send_response(status)
            for k in ("Content-Type", "Content-Security-Policy", "Cache-Control"):
                if headers.get(k):
                    self.send_header(k, headers[k])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


# ---------------------------------------------------------------- /metrics helpers
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def charts_ready(cdp, prefix="", min_points=1):
    """The page's chart state once it has rendered twice and every chart whose id starts with
    `prefix` has at least `min_points` points (None before): rendered (count of renders), n (such
    charts), empty (their ids still short of points). Shared by the browser scripts."""
    r = cdp.eval("""(() => { const f = [...document.querySelectorAll('figure[data-chart]')]
                    .filter(e => (e.dataset.chart || '').startsWith(%s));
        return {rendered: +(document.body.dataset.rendered || 0), n: f.length,
                empty: f.filter(e => !(+e.dataset.points >= %d)).map(e => e.dataset.chart)}; })()"""
                 % (json.dumps(prefix), min_points))
    return r if r["rendered"] >= 2 and r["n"] > 0 and not r["empty"] else None


def metric_sum(text, name, **labels):
    """Sum of the samples of `name` whose labels include `labels`; None when there is none."""
    total, found = 0.0, False
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if not m or m.group(1) != name:
            continue
        lab = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(lab.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
            found = True
    return total if found else None


def api_value(doc, key):
    """The `latest` value of a DOM data-key (`target:NAME:k`, `gpu:ID:k`, `prober:k`)."""
    kind, rest = key.split(":", 1)
    if kind == "prober":
        return doc["prober"]["latest"].get(rest)
    name, k = rest.rsplit(":", 1) if kind == "gpu" else rest.split(":", 1)
    items = doc["targets"] if kind == "target" else doc["gpu"]["devices"]
    field = "name" if kind == "target" else "gpu"
    for it in items:
        if it[field] == name:
            return it["latest"].get(k)
    fail(f"{key}: no {kind} {name} in /api/v1/status")


def main():
    args = sys.argv[1:]
    if not args:
        fail("usage: status_page.py BINARY [--screenshot PATH]")
    binary, shot = args[0], None
    if "--screenshot" in args:
        shot = args[args.index("--screenshot") + 1]
    min_samples = int(args[args.index("--min-samples") + 1]) if "--min-samples" in args else 0
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        fail("chromium not found (scripts/test.sh installs it with apt-get)")

    port, sim_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    procs = []
    profile = tempfile.mkdtemp(prefix="sentinel-chromium-")
    try:
        demo = subprocess.Popen(
            [binary, "demo", "--listen", f"127.0.0.1:{port}", "--sim-listen", f"127.0.0.1:{sim_port}",
             "--fake-gpus", "2", "--status-interval", "1s", "--duration", "600s"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(demo)
        wait_for("the daemon's /healthz", lambda: get(base + "/healthz") == "ok\n")
        proxy = start_prefix_proxy(port)
        page_url = f"http://127.0.0.1:{proxy.server_address[1]}{PREFIX}/"
        allowed = (f"http://127.0.0.1:{proxy.server_address[1]}{PREFIX}/",)

        browser, cdp = launch_chromium(chromium, profile)
        procs.append(browser)
        cdp.call("Emulation.setDeviceMetricsOverride", width=1280, height=2400, deviceScaleFactor=1, mobile=False)
        cdp.call("Page.navigate", url=page_url)

        # 1. Every chart has data; the empty states say what is missing.
        ready = wait_for("every chart to have data", lambda: charts_ready(cdp))
        expected = 7 + 2 * 4 + 3  # per target, per GPU, prober
        if ready["n"] != expected:
            fail(f"{ready['n']} charts on the page, expected {expected}")
        text = cdp.eval("document.body.innerText")
        for must in ("tap off", "max_model_len", "context_length", "GPU 1", "Prober self-health",
                     "/metrics", "/healthz", "/readyz"):
            if must not in text:
                fail(f"page text lacks {must!r}")
        print(f"ok: {ready['n']} charts with data after {ready['rendered']} updates")

        # 2. The numbers shown equal /api/v1/status for the sample the page shows.
        def dom_matches_api():
            shown = cdp.eval("""(() => ({ts: document.getElementById('updated').dataset.sampleTs,
                values: [...document.querySelectorAll('[data-key]')].map(e => [e.dataset.key, e.dataset.value])}))()""")
            doc = json.loads(get(base + "/api/v1/status"))
            if shown["ts"] != repr(doc["sample_timestamp"]) and float(shown["ts"] or 0) != doc["sample_timestamp"]:
                return None  # the page shows an older or newer sample: try again
            return shown, doc
        shown, doc = wait_for("the page and /api/v1/status on the same sample", dom_matches_api, every=0.1)
        if len(shown["values"]) < 20:
            fail(f"only {len(shown['values'])} numbers on the page")
        for key, v in shown["values"]:
            want = api_value(doc, key)
            if key.endswith("requests_total.context_length") and want is None:
                want = 0.0  # shown as 0 before the counter exists
            got = None if v == "" else float(v)
            if got != want:
                fail(f"{key}: page shows {got}, /api/v1/status says {want} (sample {shown['ts']})")
        print(f"ok: {len(shown['values'])} numbers on the page equal /api/v1/status at sample {shown['ts']}")

        # 3. /api/v1/status agrees with /metrics at the same moment.
        m1 = get(base + "/metrics")
        t1 = time.time()
        doc = wait_for("a sample taken after the first /metrics read",
                       lambda: (d := json.loads(get(base + "/api/v1/status")))["sample_timestamp"] > t1 and d,
                       every=0.1)
        m2 = get(base + "/metrics")
        t = next(x for x in doc["targets"] if x["name"] == "simulator")["latest"]
        checks = 0
        for name, api_key, labels in (
            ("vllm_sentinel_probe_requests_total", "requests_total.ok", {"target": "simulator", "outcome": "ok"}),
            ("process_cpu_seconds_total", None, {}),
        ):
            lo, hi = metric_sum(m1, name, **labels), metric_sum(m2, name, **labels)
            a = t[api_key] if api_key else doc["prober"]["latest"]["cpu_seconds_total"]
            if lo is None or not lo <= a <= hi:
                fail(f"{name}: /api/v1/status {a} is not between /metrics before ({lo}) and after ({hi})")
            checks += 1
        for name, a, labels in (
            ("vllm_sentinel_canary_max_model_len_tokens", t["max_model_len_tokens"], {"target": "simulator"}),
            ("vllm_sentinel_probe_target_concurrency", t["target_concurrency"], {"target": "simulator"}),
            ("vllm_sentinel_gpu_memory_total_bytes", doc["gpu"]["devices"][1]["latest"]["memory_total_bytes"], {"gpu": "1"}),
            ("vllm_sentinel_gpu_power_watts", doc["gpu"]["devices"][0]["latest"]["power_watts"], {"gpu": "0"}),
        ):
            before, after = metric_sum(m1, name, **labels), metric_sum(m2, name, **labels)
            if not before == a == after:
                fail(f"{name}: /metrics {before} and {after}, /api/v1/status {a}")
            checks += 1
        print(f"ok: /api/v1/status agrees with /metrics read around its sample ({checks} series)")

        # 4. Keyboard: Tab reaches a chart; ← moves the cursor to an older sample.
        def press(key, code, vk):
            for typ in ("rawKeyDown", "keyUp"):
                cdp.call("Input.dispatchKeyEvent", type=typ, key=key, code=code, windowsVirtualKeyCode=vk)
        for _ in range(60):
            press("Tab", "Tab", 9)
            if cdp.eval("document.activeElement.tagName") == "FIGURE":
                break
        else:
            fail("Tab never reached a chart")
        press("ArrowLeft", "ArrowLeft", 37)
        press("ArrowLeft", "ArrowLeft", 37)
        readout = cdp.eval("document.activeElement.querySelector('.readout').textContent")
        if not readout.startswith("at "):
            fail(f"← on a focused chart did not move its cursor: readout {readout!r}")
        label = cdp.eval("document.activeElement.getAttribute('aria-label')")
        print(f"ok: keyboard: {label[:90]}…")

        if shot:
            wait_for(f"{min_samples} samples", lambda: json.loads(get(base + "/api/v1/status"))["seq"] >= min_samples,
                     deadline_s=min_samples * 2 + DEADLINE_S, every=0.5)
            press("End", "End", 35)
            cdp.eval("document.activeElement.blur(), window.scrollTo(0, 0), 1")
            h = cdp.eval("Math.ceil(document.documentElement.scrollHeight)")
            cdp.call("Emulation.setDeviceMetricsOverride", width=1280, height=min(h, 4000), deviceScaleFactor=1, mobile=False)
            wait_for("a render at the screenshot size", lambda: cdp.eval("document.body.dataset.rendered") and True)
            png = base64.b64decode(cdp.call("Page.captureScreenshot", format="png")["data"])
            with open(shot, "wb") as f:
                f.write(png)
            print(f"ok: screenshot {shot} ({len(png)} bytes, 1280x{min(h, 4000)})")

        # 5. Empty states: `serve` with a target nobody listens on and no NVML library.
        port2, dead = free_port(), free_port()
        base2 = f"http://127.0.0.1:{port2}"
        cfg = os.path.join(profile, "empty.toml")
        with open(cfg, "w") as f:
            f.write(f'[server]\nlisten = "127.0.0.1:{port2}"\nstatus_interval = "500ms"\nshutdown_linger = "0s"\n'
                    f'[gpu]\nnvml_library = "{profile}/no-such-libnvidia-ml.so.1"\n'
                    f'[[targets]]\nurl = "http://127.0.0.1:{dead}"\nname = "nobody"\n')
        serve = subprocess.Popen([binary, "serve", "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(serve)
        wait_for("the second daemon's /healthz", lambda: get(base2 + "/healthz") == "ok\n")
        allowed = allowed + (base2 + "/",)
        cdp.call("Page.navigate", url=base2 + "/")

        def empty_states():
            t = cdp.eval("document.getElementById('updated').dataset.sampleTs && document.body.innerText")
            want = ("Target not reachable since", "no GPU: NVML not found", "tap off", "no probe has finished")
            return t if t and all(w in t for w in want) else None
        text = wait_for("the empty states", empty_states)
        drawn = cdp.eval("[...document.querySelectorAll('figure[data-chart^=\"nobody/\"]')].map(f => +f.dataset.points)")
        if not drawn or any(drawn):
            fail(f"charts of an unreachable target drew points: {drawn}")
        line = next(x for x in text.splitlines() if "not reachable since" in x)
        print(f"ok: empty states: {line[:100]!r}, 'no GPU: NVML not found', 'tap off'; {len(drawn)} charts empty")

        # 6. No JavaScript error, no console error, no request off-host.
        cdp.eval("1")  # flush pending events
        errors, offhost = [], []
        for e in cdp.events:
            m, p = e["method"], e.get("params", {})
            if m == "Runtime.exceptionThrown":
                errors.append(p["exceptionDetails"].get("exception", {}).get("description") or p["exceptionDetails"].get("text"))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
                errors.append(f"console.{p['type']}: {p.get('args')}")
            elif m == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                errors.append(f"log {p['entry']['level']}: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif m == "Network.requestWillBeSent":
                url = p["request"]["url"]
                if not url.startswith(allowed) and not url.startswith("data:"):
                    offhost.append(url)
        requests = sum(1 for e in cdp.events if e["method"] == "Network.requestWillBeSent")
        if errors:
            fail("errors in the page: " + "; ".join(map(str, errors)))
        if offhost:
            fail("requests outside the pages' prefixes: " + ", ".join(offhost))
        if requests < 4:
            fail(f"only {requests} requests seen: the network log is not working")
        print(f"ok: no JavaScript or console error; all {requests} requests went to {' or '.join(allowed)}")
        polls = [e["params"]["request"]["url"] for e in cdp.events if e["method"] == "Network.requestWillBeSent"
                 and "api/v1/status" in e["params"]["request"]["url"]]
        incremental = [u for u in polls if "?since=" in u]
        if not incremental:
            fail(f"the page never polled incrementally (api/v1/status?since=): {polls[:5]}")
        print(f"ok: {len(incremental)} of {len(polls)} polls were incremental (?since=)")
        proxy.shutdown()
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
