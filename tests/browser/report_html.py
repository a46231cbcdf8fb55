#!/usr/bin/env python3
"""The `--html` reports of `bench`, `sweep` and `kv-scale` in a real browser (Debian's Chromium,
headless, driven over the DevTools protocol; Python standard library only; reuses
status_page.py's client).

Against `vllm-sentinel simulate` on loopback, each experiment runs with `--json` and `--html`;
each HTML file is loaded from disk and must show: no script error or console error, no network
request at all (everything is inline), every plot rendered as an SVG with a non-zero size (sweep
and kv-scale have plots; bench has none), the
run's settings table, and an embedded JSON report equal to the `--json` file of the same run.

Usage: report_html.py BINARY
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import status_page as sp  # noqa: E402

RUNS = {
    "bench": ["bench", "--requests", "3", "--warmup", "0", "--max-tokens", "8"],
    "sweep": ["sweep", "--concurrency", "1,2", "--duration", "1s", "--warmup", "200ms",
              "--max-tokens", "8", "--prompt-tokens", "16"],
    "kv-scale": ["kv-scale", "--max-tokens", "16", "--sample-interval", "4ms"],
}


def main():
    if len(sys.argv) < 2:
        sp.fail("usage: report_html.py BINARY")
    binary = sys.argv[1]
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sp.fail("chromium not found (scripts/test.sh installs it with apt-get)")
    work = tempfile.mkdtemp(prefix="sentinel-html-")
    procs = []
    try:
        port = sp.free_port()
        sim = subprocess.Popen(
            [binary, "simulate", "--listen", f"127.0.0.1:{port}", "--model", "tiny",
             "--max-model-len", "256", "--block-size", "16", "--num-gpu-blocks", "33",
             "--step-base", "2ms", "--prefill-per-token", "0s", "--decode-per-seq", "0s",
             "--eos-probability", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(sim)
        url = f"http://127.0.0.1:{port}"
        sp.wait_for("the simulator", lambda: sp.get(url + "/v1/models") and True)
        for name, argv in RUNS.items():
            j, h = os.path.join(work, f"{name}.json"), os.path.join(work, f"{name}.html")
            r = subprocess.run([binary] + argv + ["--target", url, "--no-progress", "--json", j, "--html", h],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
            if r.returncode != 0:
                sp.fail(f"{name} failed ({r.returncode}):\n{r.stdout[-3000:]}")

        profile = os.path.join(work, "profile")
        browser, cdp = sp.launch_chromium(chromium, profile, height=2000)
        procs.append(browser)
        for name in RUNS:
            h = os.path.join(work, f"{name}.html")
            page = "file://" + h
            cdp.events.clear()
            cdp.call("Page.navigate", url=page)
            sp.wait_for(f"{name}.html to load", lambda: cdp.eval("document.readyState") == "complete" and True)
            state = cdp.eval("""(() => ({
                title: document.title,
                lang: document.documentElement.lang,
                params: document.querySelectorAll('#parameters tbody tr').length,
                summary_rows: document.querySelectorAll('#summary table tbody tr').length,
                summary_pre: document.querySelectorAll('#summary pre').length,
                svgs: [...document.querySelectorAll('svg')].map(s => { const r = s.getBoundingClientRect(); return [r.width, r.height]; }),
                report: document.getElementById('report') ? document.getElementById('report').textContent : null,
            }))()""")
            if not state["title"] or state["lang"] != "en":
                sp.fail(f"{name}.html: title {state['title']!r}, lang {state['lang']!r}")
            if state["summary_rows"] < 1 or state["summary_pre"]:
                sp.fail(f"{name}.html: the summary is not a table ({state['summary_rows']} rows, "
                        f"{state['summary_pre']} <pre>)")
            if state["params"] < 3:
                sp.fail(f"{name}.html: the settings table has {state['params']} rows")
            # bench draws no plot; sweep and kv-scale draw several.
            if (name != "bench" and not state["svgs"]) or any(w <= 0 or hh <= 0 for w, hh in state["svgs"]):
                sp.fail(f"{name}.html: plots not rendered: {state['svgs']}")
            if state["report"] is None:
                sp.fail(f"{name}.html: no embedded JSON report")
            embedded = json.loads(state["report"])
            with open(os.path.join(work, f"{name}.json")) as f:
                written = json.load(f)
            if embedded != written:
                sp.fail(f"{name}.html: the embedded report differs from --json")
            errors = [e for e in cdp.events if e.get("method") == "Runtime.exceptionThrown"
                      or (e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("level") == "error")
                      or (e.get("method") == "Runtime.consoleAPICalled" and e["params"].get("type") == "error")]
            if errors:
                sp.fail(f"{name}.html: errors in the browser: {errors[:3]}")
            requests = [e["params"]["request"]["url"] for e in cdp.events
                        if e.get("method") == "Network.requestWillBeSent" and e["params"]["request"]["url"] != page]
            if requests:
                sp.fail(f"{name}.html requested {requests[:5]}")
            print(f"ok: {name}.html: {len(state['svgs'])} plots rendered, {state['params']} settings, "
                  f"{state['summary_rows']} summary rows, embedded report = --json, no error, no request")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
