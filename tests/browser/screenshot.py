#!/usr/bin/env python3
"""Loads a running daemon's status page in headless Chromium and saves a screenshot, after every
chart of the given targets has data. Used by the real-vLLM tier (the page against real vLLM).
Python standard library only; reuses status_page.py's DevTools client.

Usage: screenshot.py BASE_URL PATH [--target NAME] [--min-samples N]
(NAME: the target whose charts must all have data, default "vllm")
Exits non-zero (with the reason) if a chart stays empty, a script error is logged, or the page
requests anything outside BASE_URL.
"""
import base64
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import status_page as sp  # noqa: E402


def main():
    args = sys.argv[1:]
    if len(args) < 2:
        sp.fail("usage: screenshot.py BASE_URL PATH [--target NAME] [--min-samples N]")
    base, shot = args[0].rstrip("/"), args[1]
    min_samples = int(args[args.index("--min-samples") + 1]) if "--min-samples" in args else 2
    target = args[args.index("--target") + 1] if "--target" in args else "vllm"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sp.fail("chromium not found (scripts/test.sh installs it with apt-get)")
    profile = tempfile.mkdtemp(prefix="sentinel-shot-")
    browser, cdp = sp.launch_chromium(chromium, profile)
    try:
        cdp.call("Emulation.setDeviceMetricsOverride", width=1280, height=2400, deviceScaleFactor=1, mobile=False)
        cdp.call("Page.navigate", url=base + "/")

        # Every chart of a target has data (GPU and tap charts may be empty states on this host).
        r = sp.wait_for("every target chart to have data", lambda: sp.charts_ready(cdp, target + "/", min_samples))
        h = cdp.eval("Math.ceil(document.documentElement.scrollHeight)")
        cdp.call("Emulation.setDeviceMetricsOverride", width=1280, height=min(h, 4000), deviceScaleFactor=1, mobile=False)
        sp.wait_for("a render at the screenshot size", lambda: cdp.eval("document.body.dataset.rendered") and True)
        png = base64.b64decode(cdp.call("Page.captureScreenshot", format="png")["data"])
        with open(shot, "wb") as f:
            f.write(png)
        errors = [e for e in cdp.events if e.get("method") in ("Runtime.exceptionThrown",)
                  or (e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("level") == "error")]
        if errors:
            sp.fail(f"script errors on the page: {errors[:3]}")
        outside = [e["params"]["request"]["url"] for e in cdp.events if e.get("method") == "Network.requestWillBeSent"
                   and not e["params"]["request"]["url"].startswith(base + "/")]
        if outside:
            sp.fail(f"the page requested URLs outside {base}/: {outside[:5]}")
        print(f"ok: {r['n']} target charts with data; screenshot {shot} ({len(png)} bytes, 1280x{min(h, 4000)})")
    finally:
        browser.kill()
        browser.wait()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
