#!/usr/bin/env python3
"""Evaluates every dashboard query, dashboard variable and rule of the repo in a live Prometheus
(used by scripts/ops/e2e-prometheus.sh; needs PyYAML for the rule files).

    e2e_queries.py --list
        print every check that would run (no Prometheus needed)
    e2e_queries.py --selftest
        the verdict fails on a query error and on an unexplained empty result
    e2e_queries.py --prom URL --phase NAME --out FILE
        run every check once, write the results (JSON) to FILE
    e2e_queries.py --verdict FILE... [--allow FILE] [--mode daemon|demo]
        a check passes if it never errored and was non-empty in at least one phase, or matches an
        allowlist entry for the mode (each entry carries its reason); prints failures, exit 1
    e2e_queries.py --prom URL --wait-alerts A,B --deadline SECONDS
        wait until each named alert is pending or firing (/api/v1/alerts)
    e2e_queries.py --load URL --deadline SECONDS
        users' traffic through the tap at URL (streams, abandoned streams, a passthrough route)
    e2e_queries.py --prom URL --rules-healthy
        every loaded rule evaluates without error (/api/v1/rules)

Dashboard queries get $__rate_interval=15s (4 × the test's 1 s scrape interval, rounded up),
$__range=5m, and `.*` for every template variable (Grafana's "All").
Alert expressions are conditions that are empty while all is well, so for alerts each vector
selector they use is checked for data instead of the expression's result (the expression itself
must still evaluate without error).
"""

import argparse
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import opslib  # noqa: E402

SUBST = {"rate_interval": "15s", "range": "5m", "interval": "5s"}
_SELECTOR = re.compile(
    r"(?<![A-Za-z0-9_:])((?:vllm_sentinel[A-Za-z0-9_:]*|process_[A-Za-z0-9_]+|up|model:[A-Za-z0-9_:]+))(\{[^}]*\})?(?!\s*\()"
)


def selectors(expr):
    """Vector selectors (name + matchers) of the metrics an expression reads."""
    no_str = opslib._STRING.sub(lambda m: "\0" * len(m.group(0)), expr)
    out = []
    for m in _SELECTOR.finditer(no_str):
        # skip names inside by(...)/on(...) lists: those are label names, never metric names here
        sel = expr[m.start(): m.end()]
        if sel not in out:
            out.append(sel)
    return out


def checks():
    """[(id, kind, promql)]; kind: query (result must be non-empty), selector, labels, rule-expr."""
    out = []
    dashes = opslib.load_dashboards()
    for fn, title, ref, expr in opslib.dashboard_exprs(dashes):
        out.append((f"dashboard {fn} / {title} / {ref}", "query", opslib.substitute(expr, SUBST)))
    for fn, name, q in opslib.dashboard_variable_queries(dashes):
        sel, label = opslib.label_values_query(q)
        out.append((f"variable {fn} / {name}", "labels", json.dumps([opslib.substitute(sel or "", SUBST), label])))
    docs = opslib.rule_docs(yaml.safe_load)
    for fn, group, r in opslib.iter_rules(docs):
        if "record" in r:
            out.append((f"recording rule {r['record']}", "query", r["record"]))
            out.append((f"recording rule {r['record']} (expression)", "rule-expr", r["expr"]))
        else:
            out.append((f"alert {r['alert']} (expression)", "rule-expr", r["expr"]))
            for sel in selectors(r["expr"]):
                out.append((f"alert {r['alert']} reads {sel}", "selector", sel))
    return out


def api(prom, path, params=None):
    url = prom.rstrip("/") + path
    if params:
        url += "?" + urllib.parse.urlencode(params, doseq=True)
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        try:
            return json.load(e)
        except ValueError:
            return {"status": "error", "error": f"HTTP {e.code}"}
    except (urllib.error.URLError, OSError, ValueError) as e:
        return {"status": "error", "error": str(e)}


def run_checks(prom):
    results = {}
    for cid, kind, q in checks():
        if kind == "labels":
            sel, label = json.loads(q)
            params = {"match[]": [sel]} if sel else {}
            r = api(prom, f"/api/v1/label/{label}/values", params)
            n = len(r.get("data") or []) if r.get("status") == "success" else 0
        else:
            r = api(prom, "/api/v1/query", {"query": q})
            data = r.get("data") or {}
            n = len(data.get("result") or []) if r.get("status") == "success" else 0
        results[cid] = {
            "kind": kind,
            "query": q,
            "error": None if r.get("status") == "success" else r.get("error", "unknown error"),
            "series": n,
        }
    return results


def load_allow(path, mode):
    allow = []
    if not path:
        return allow
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.split("\t")
            if len(parts) != 3 or not parts[2].strip():
                raise SystemExit(f"{path}:{ln}: want MODE<TAB>REGEX<TAB>REASON")
            if parts[0] in (mode, "*"):
                allow.append((re.compile(parts[1]), parts[2]))
    return allow


def verdict(files, allow):
    merged = {}
    for fn in files:
        with open(fn, encoding="utf-8") as f:
            for cid, r in json.load(f).items():
                m = merged.setdefault(cid, {"query": r["query"], "kind": r["kind"], "errors": [], "series": 0})
                if r["error"]:
                    m["errors"].append(r["error"])
                m["series"] = max(m["series"], r["series"])
    bad, allowed = [], {}
    for cid, m in sorted(merged.items()):
        if m["errors"]:
            bad.append(f"{cid}: query error: {m['errors'][0]}\n    {m['query']}")
            continue
        if m["kind"] == "rule-expr" or m["series"] > 0:
            continue
        why = next((reason for rx, reason in allow if rx.search(cid) or rx.search(m["query"])), None)
        if why:
            allowed.setdefault(why, []).append(cid)
            continue
        bad.append(f"{cid}: empty in every phase\n    {m['query']}")
    for why, ids in allowed.items():
        print(f"allowed empty ({len(ids)}): {why}")
        for cid in ids:
            print(f"    {cid}")
    for b in bad:
        print(f"FAIL {b}")
    n_allowed = sum(len(v) for v in allowed.values())
    print(f"{len(merged)} checks, {len(bad)} failed, {n_allowed} allowed empty")
    return not bad


def selftest():
    """The verdict must fail on a query error and on an empty result, and pass an allowed empty."""
    import tempfile

    def run(results, allow):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(results, f)
        try:
            return verdict([f.name], allow)
        finally:
            os.unlink(f.name)

    ok = {"kind": "query", "query": "up", "error": None, "series": 1}
    cases = [
        ("query error", {"a": ok, "b": {"kind": "query", "query": "x(", "error": "parse error", "series": 0}}, [], False),
        ("empty result", {"a": ok, "b": {"kind": "query", "query": "vllm_sentinel_x", "error": None, "series": 0}}, [], False),
        ("allowed empty", {"a": ok, "b": {"kind": "query", "query": "vllm_sentinel_gpu_x", "error": None, "series": 0}},
         [(re.compile("vllm_sentinel_gpu_"), "no GPU")], True),
        ("all fine", {"a": ok}, [], True),
    ]
    good = True
    for name, results, allow, want in cases:
        if run(results, allow) != want:
            print(f"SELFTEST FAILED: {name}: verdict should be {'pass' if want else 'fail'}")
            good = False
    print(f"e2e verdict selftest: {'ok' if good else 'FAILED'}")
    return good


def wait_alerts(prom, names, deadline_s):
    end = time.monotonic() + deadline_s
    want = set(names)
    state = {}
    while True:
        r = api(prom, "/api/v1/alerts")
        state = {}
        for a in (r.get("data") or {}).get("alerts", []):
            n = a.get("labels", {}).get("alertname")
            if n in want and a.get("state") in ("pending", "firing"):
                state[n] = a.get("state")
        if want <= set(state):
            for n in sorted(want):
                print(f"alert {n}: {state[n]}")
            return True
        if time.monotonic() > end:
            print(f"FAIL: after {deadline_s}s alerts not pending/firing: {sorted(want - set(state))} (active: {state})")
            return False
        time.sleep(1)  # polling interval of a condition wait with a deadline, not synchronisation


def rules_healthy(prom):
    r = api(prom, "/api/v1/rules")
    groups = (r.get("data") or {}).get("groups", [])
    n, bad = 0, []
    for g in groups:
        for rule in g.get("rules", []):
            n += 1
            if rule.get("health") not in ("ok", "unknown") or rule.get("lastError"):
                bad.append(f"{g['name']}/{rule.get('name')}: {rule.get('health')} {rule.get('lastError')}")
    for b in bad:
        print(f"FAIL rule {b}")
    if n == 0:
        print("FAIL: Prometheus has no rules loaded")
        return False
    print(f"{n} rules loaded, {len(bad)} unhealthy")
    return not bad


def wait_http(url, deadline_s):
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return True
        except (urllib.error.URLError, OSError) as e:
            last = e
        time.sleep(0.2)  # poll interval of a deadline-bounded wait
    print(f"FAIL: {url} not answering 200 after {deadline_s}s ({last})")
    return False


def wait_query(prom, q, deadline_s):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        r = api(prom, "/api/v1/query", {"query": q})
        if r.get("status") == "success" and (r.get("data") or {}).get("result"):
            return True
        time.sleep(0.5)  # poll interval of a deadline-bounded wait
    print(f"FAIL: no result for {q!r} after {deadline_s}s")
    return False


def load(base, deadline_s):
    """Users' traffic through the tap until the deadline (or until killed): streamed chat and
    completions requests, every fourth one abandoned after its first bytes (client_disconnected),
    and a GET /v1/models now and then (a passthrough route). The prompt (~70 tokens) is over the
    context limit the e2e fault sets (16 tokens), so the tap sees real context-length rejections
    and their ratios then. Errors are expected (faults) and only counted."""
    import http.client

    host, _, port = base.split("//", 1)[-1].rstrip("/").rpartition(":")
    prompt = " ".join(["the quick brown fox jumps over the lazy dog"] * 8)
    bodies = [
        ("/v1/chat/completions", {"model": "", "stream": True, "max_tokens": 8, "messages": [{"role": "user", "content": prompt}]}),
        ("/v1/completions", {"model": "", "stream": True, "max_tokens": 8, "prompt": prompt}),
    ]
    models = api(base, "/v1/models")
    model = ((models.get("data") or [{}])[0] or {}).get("id", "") if isinstance(models, dict) else ""
    end = time.monotonic() + deadline_s
    n = errors = 0
    while time.monotonic() < end:
        path, body = bodies[n % 2]
        body = dict(body, model=model)
        try:
            c = http.client.HTTPConnection(host, int(port), timeout=30)
            if n % 7 == 6:
                c.request("GET", "/v1/models")
                c.getresponse().read()
            else:
                c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
                r = c.getresponse()
                if n % 4 == 3 and r.status == 200:
                    r.read(1)  # then hang up mid-stream: the tap counts client_disconnected
                else:
                    r.read()
            c.close()
        except (OSError, http.client.HTTPException):
            errors += 1
        n += 1
        time.sleep(0.1)  # pacing of the load, not synchronisation
    print(f"load: {n} requests, {errors} transport errors")
    return True


def post(url, body):
    req = urllib.request.Request(url, data=body.encode(), method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            print(f"POST {url} {body} -> {r.status}")
            return 200 <= r.status < 300
    except urllib.error.HTTPError as e:
        print(f"FAIL: POST {url} {body} -> HTTP {e.code}: {e.read()[:300]!r}")
    except (urllib.error.URLError, OSError) as e:
        print(f"FAIL: POST {url}: {e}")
    return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wait-http")
    ap.add_argument("--wait-query")
    ap.add_argument("--post")
    ap.add_argument("--load", help="send users' traffic to this base URL (the tap) until --deadline")
    ap.add_argument("--body", default="{}")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--selftest", action="store_true")
    ap.add_argument("--prom")
    ap.add_argument("--phase")
    ap.add_argument("--out")
    ap.add_argument("--verdict", nargs="+")
    ap.add_argument("--allow")
    ap.add_argument("--mode", default="daemon")
    ap.add_argument("--wait-alerts")
    ap.add_argument("--deadline", type=float, default=180)
    ap.add_argument("--rules-healthy", action="store_true")
    a = ap.parse_args()
    if a.selftest:
        return 0 if selftest() else 1
    if a.list:
        cs = checks()
        for cid, kind, q in cs:
            print(f"{kind}\t{cid}\t{q}")
        print(f"{len(cs)} checks", file=sys.stderr)
        return 0 if cs else 1
    if a.wait_http:
        return 0 if wait_http(a.wait_http, a.deadline) else 1
    if a.post:
        return 0 if post(a.post, a.body) else 1
    if a.load:
        return 0 if load(a.load, a.deadline) else 1
    if a.verdict:
        return 0 if verdict(a.verdict, load_allow(a.allow, a.mode)) else 1
    if not a.prom:
        ap.error("--prom is required")
    if a.wait_alerts:
        return 0 if wait_alerts(a.prom, [x for x in a.wait_alerts.split(",") if x], a.deadline) else 1
    if a.wait_query:
        return 0 if wait_query(a.prom, a.wait_query, a.deadline) else 1
    if a.rules_healthy:
        return 0 if rules_healthy(a.prom) else 1
    res = run_checks(a.prom)
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
    errs = sum(1 for r in res.values() if r["error"])
    empty = sum(1 for r in res.values() if not r["error"] and r["series"] == 0 and r["kind"] != "rule-expr")
    print(f"phase {a.phase}: {len(res)} checks, {errs} errors, {empty} empty")
    return 0


if __name__ == "__main__":
    sys.exit(main())
