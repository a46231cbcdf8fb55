#!/usr/bin/env python3
"""Static checks of dashboards/, alerts/, the compose stack, the Dockerfile and deploy/.

Run by scripts/ops/test-static.sh in the ops venv (needs PyYAML). Prints every problem found and
exits 1 if there is any. `--selftest` first feeds the checks deliberately broken inputs and fails
unless each one is caught, so a check that silently passes everything cannot go unnoticed.
"""

import copy
import os
import re
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import opslib  # noqa: E402

ROOT = opslib.ROOT
DS_UID = "${datasource}"
SEVERITIES = {"page", "warning", "info"}
ALLOWED_RANGES = {"$__rate_interval", "$__range"}
RUNBOOK_PREFIX = "https://github.com/vllm-sentinel/vllm-sentinel/blob/main/"


def check_dashboards(dashboards, families, recorded):
    errs = []
    uids = set()
    for fn, d in dashboards.items():
        where = f"dashboards/{fn}"
        if d.get("schemaVersion") != 39:
            errs.append(f"{where}: schemaVersion {d.get('schemaVersion')} (want 39, Grafana 10+)")
        if d.get("uid") in uids:
            errs.append(f"{where}: duplicate uid {d.get('uid')}")
        uids.add(d.get("uid"))
        vars_ = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
        dsv = vars_.get("datasource")
        if not dsv or dsv.get("type") != "datasource" or dsv.get("query") != "prometheus":
            errs.append(f"{where}: no `datasource` variable of type datasource/prometheus")
        wanted = {"instance"} | ({"gpu"} if "gpu" in fn else {"target", "model"})
        for name in sorted(wanted):
            v = vars_.get(name)
            if not v:
                errs.append(f"{where}: no `{name}` variable")
                continue
            qv = v.get("query")
            qs = qv.get("query") if isinstance(qv, dict) else qv
            try:
                sel, _label = opslib.label_values_query(qs or "")
            except ValueError as e:
                errs.append(f"{where}: variable {name}: {e}")
                continue
            if v.get("datasource", {}).get("uid") != DS_UID:
                errs.append(f"{where}: variable {name} does not use ${{datasource}}")
            for n in opslib.metric_names(sel or ""):
                why = opslib.contract_check(n, families, recorded)
                if why:
                    errs.append(f"{where}: variable {name}: {why}")
        ids = set()
        for p in opslib.iter_panels(d):
            title = p.get("title", "?")
            pw = f"{where}: panel {title!r}"
            if p.get("id") in ids:
                errs.append(f"{pw}: duplicate id {p.get('id')}")
            ids.add(p.get("id"))
            if "gridPos" not in p:
                errs.append(f"{pw}: no gridPos")
            if p.get("type") == "row":
                continue  # rows only group panels: no query, unit or description of their own
            if not (p.get("description") or "").strip():
                errs.append(f"{pw}: no description")
            if not (p.get("fieldConfig", {}).get("defaults", {}).get("unit") or "").strip():
                errs.append(f"{pw}: no unit")
            if p.get("datasource", {}).get("uid") != DS_UID:
                errs.append(f"{pw}: datasource is not ${{datasource}}")
            targets = p.get("targets") or []
            if not targets:
                errs.append(f"{pw}: no queries")
            for t in targets:
                if t.get("datasource", {}).get("uid") != DS_UID:
                    errs.append(f"{pw} {t.get('refId')}: datasource is not ${{datasource}}")
                expr = t.get("expr") or ""
                if not expr:
                    errs.append(f"{pw} {t.get('refId')}: empty expr")
                for rng in re.findall(r"\[([^\]]*)\]", opslib._STRING.sub('""', expr)):
                    if rng not in ALLOWED_RANGES:
                        errs.append(f"{pw} {t.get('refId')}: fixed range [{rng}]; use [$__rate_interval] (or [$__range])")
                for n in sorted(opslib.metric_names(expr)):
                    why = opslib.contract_check(n, families, recorded)
                    if why:
                        errs.append(f"{pw} {t.get('refId')}: {why}")
                for var in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", expr):
                    if not var.startswith("__") and var not in vars_:
                        errs.append(f"{pw} {t.get('refId')}: undefined variable ${var}")
    return errs


def alert_tests(tests_dir):
    """{alertname: (fires, quiet)} from the promtool unit tests."""
    seen = {}
    for fn in sorted(os.listdir(tests_dir)):
        if not fn.endswith((".yml", ".yaml")):
            continue
        with open(os.path.join(tests_dir, fn), encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        for t in doc.get("tests", []):
            for a in t.get("alert_rule_test", []) or []:
                fires, quiet = seen.get(a["alertname"], (False, False))
                if a.get("exp_alerts"):
                    fires = True
                else:
                    quiet = True
                seen[a["alertname"]] = (fires, quiet)
    return seen


def runbook_anchors(path):
    anchors = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"#{1,6}\s+(.*)", line)
            if m:
                anchors.add(opslib.github_anchor(m.group(1)))
    return anchors


def check_rules(docs, families, tests, anchors_by_file):
    errs = []
    recorded = set()
    alerts = set()
    for fn, group, r in opslib.iter_rules(docs):
        where = f"alerts/{fn}: group {group}"
        if "record" in r:
            if r["record"] in recorded:
                errs.append(f"{where}: recording rule {r['record']} defined twice")
            recorded.add(r["record"])
    for fn, group, r in opslib.iter_rules(docs):
        where = f"alerts/{fn}: group {group}"
        for n in sorted(opslib.metric_names(r.get("expr", ""))):
            why = opslib.contract_check(n, families, recorded)
            if why:
                errs.append(f"{where}: {r.get('alert') or r.get('record')}: {why}")
        if "alert" not in r:
            continue
        name = r["alert"]
        where = f"{where}: alert {name}"
        if name in alerts:
            errs.append(f"{where}: defined twice")
        alerts.add(name)
        sev = (r.get("labels") or {}).get("severity")
        if sev not in SEVERITIES:
            errs.append(f"{where}: labels.severity {sev!r} not one of {sorted(SEVERITIES)}")
        ann = r.get("annotations") or {}
        for k in ("summary", "description", "runbook_url"):
            if not (ann.get(k) or "").strip():
                errs.append(f"{where}: no annotations.{k}")
        url = ann.get("runbook_url") or ""
        if url:
            if not url.startswith(RUNBOOK_PREFIX):
                errs.append(f"{where}: runbook_url does not start with {RUNBOOK_PREFIX}")
            else:
                path, _, anchor = url[len(RUNBOOK_PREFIX):].partition("#")
                if path not in anchors_by_file:
                    errs.append(f"{where}: runbook {path} does not exist")
                elif anchor and anchor not in anchors_by_file[path]:
                    errs.append(f"{where}: runbook {path} has no section #{anchor}")
        fires, quiet = tests.get(name, (False, False))
        if not fires:
            errs.append(f"{where}: no promtool unit test makes it fire (alerts/tests/)")
        if not quiet:
            errs.append(f"{where}: no promtool unit test checks it stays quiet (alerts/tests/)")
        if "for" not in r:
            errs.append(f"{where}: no explicit `for:` (write `for: 0m` to fire at once)")
    for name in tests:
        if name not in alerts:
            errs.append(f"alerts/tests: tests alert {name}, which is not defined")
    return errs, recorded


def compose_bind_sources(compose):
    for sname, svc in (compose.get("services") or {}).items():
        for v in svc.get("volumes", []) or []:
            src = v.split(":", 1)[0] if isinstance(v, str) else v.get("source")
            if isinstance(src, str) and src.startswith((".", "/")):
                yield sname, src


def check_compose(compose, prom_cfg, grafana_ds, dockerfile_text, dockerignore):
    errs = []
    services = compose.get("services") or {}
    for s in ("vllm", "sim", "sentinel", "sentinel-sim", "prometheus", "grafana"):
        if s not in services:
            errs.append(f"docker-compose.yml: no service {s}")
    if errs:
        return errs
    # names every service answers to on the compose network
    names = {}
    for sname, svc in services.items():
        names.setdefault(sname, sname)
        nets = svc.get("networks") or {}
        if isinstance(nets, dict):
            for net in nets.values():
                for alias in (net or {}).get("aliases", []) or []:
                    names.setdefault(alias, sname)
    # profiles: vllm+sentinel (gpu) and sim+sentinel-sim (sim) replace each other
    prof = {s: set(services[s].get("profiles") or []) for s in services}
    if prof["vllm"] != {"gpu"} or prof["sentinel"] != {"gpu"}:
        errs.append("docker-compose.yml: vllm and sentinel must be in profile gpu only")
    if prof["sim"] != {"sim"} or prof["sentinel-sim"] != {"sim"}:
        errs.append("docker-compose.yml: sim and sentinel-sim must be in profile sim only")
    if prof["prometheus"] or prof["grafana"]:
        errs.append("docker-compose.yml: prometheus and grafana must run under every profile")
    for a, b in (("vllm", "sim"), ("sentinel", "sentinel-sim")):
        aa = set(((services[a].get("networks") or {}).get("default") or {}).get("aliases", []) or [])
        bb = set(((services[b].get("networks") or {}).get("default") or {}).get("aliases", []) or [])
        if not aa or aa != bb:
            errs.append(f"docker-compose.yml: {a} and {b} must share a network alias (got {sorted(aa)} / {sorted(bb)})")
    vllm = services["vllm"]
    img = vllm.get("image", "")
    if not img.startswith("vllm/vllm-openai"):
        errs.append(f"docker-compose.yml: vllm image {img!r} is not vllm/vllm-openai")
    cmd = " ".join(vllm.get("command") or []) if isinstance(vllm.get("command"), list) else str(vllm.get("command"))
    for want in ("Mistral-7B-Instruct-v0.3", "float16", "--max-model-len", "--dtype"):
        if want not in cmd:
            errs.append(f"docker-compose.yml: vllm command lacks {want}")

    def gpu_caps(svc):
        devs = (((svc.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
        caps = set()
        for d in devs:
            for c in d.get("capabilities") or []:
                caps.add(c)
        return caps

    if not {"gpu"} <= gpu_caps(vllm):
        errs.append("docker-compose.yml: vllm has no GPU reservation")
    if not {"gpu", "utility"} <= gpu_caps(services["sentinel"]):
        errs.append("docker-compose.yml: sentinel needs a GPU reservation with capabilities [gpu, utility] for NVML")
    if gpu_caps(services["sentinel-sim"]) or gpu_caps(services["sim"]):
        errs.append("docker-compose.yml: the sim profile must not reserve GPUs (it runs on a laptop)")
    for s in ("sentinel", "sentinel-sim", "sim"):
        b = services[s].get("build")
        if not b:
            errs.append(f"docker-compose.yml: {s} is not built from the repo's Dockerfile")
            continue
        ctx = b.get("context", ".") if isinstance(b, dict) else b
        df = b.get("dockerfile", "Dockerfile") if isinstance(b, dict) else "Dockerfile"
        if not os.path.exists(os.path.join(ROOT, ctx, df)):
            errs.append(f"docker-compose.yml: {s}: {ctx}/{df} does not exist")
    for sname, src in compose_bind_sources(compose):
        if not os.path.exists(os.path.join(ROOT, src)):
            errs.append(f"docker-compose.yml: {sname} mounts {src}, which does not exist")
    # sentinel's target is the vllm alias on the model port
    for s in ("sentinel", "sentinel-sim"):
        env = services[s].get("environment") or {}
        target = env.get("VLLM_SENTINEL_TARGET", "") if isinstance(env, dict) else ""
        m = re.match(r"http://([^:/]+):(\d+)", target)
        if not m or m.group(1) not in names or names[m.group(1)] not in ("vllm", "sim"):
            errs.append(f"docker-compose.yml: {s}: VLLM_SENTINEL_TARGET {target!r} does not name the vllm/sim service")
        elif m.group(2) != "8000":
            errs.append(f"docker-compose.yml: {s}: target port {m.group(2)} is not the model port 8000")
        listen = env.get("VLLM_SENTINEL_LISTEN", "0.0.0.0:9471") if isinstance(env, dict) else ""
        if not listen.endswith(":9471"):
            errs.append(f"docker-compose.yml: {s}: listens on {listen}, Prometheus scrapes 9471")
        # clients go through the tap on 9472 (docs/deploy.md); the model port stays the bypass
        tap = env.get("VLLM_SENTINEL_TAP_LISTEN", "") if isinstance(env, dict) else ""
        if not tap.endswith(":9472"):
            errs.append(f"docker-compose.yml: {s}: the tap must listen on :9472 (VLLM_SENTINEL_TAP_LISTEN), got {tap!r}")
        if not any(str(p).split(":")[-1] == "9472" for p in services[s].get("ports") or []):
            errs.append(f"docker-compose.yml: {s}: the tap's port 9472 is not published")
    # the simulator listens where the sentinel looks for it
    senv = services["sim"].get("environment") or {}
    scmd = services["sim"].get("command") or []
    if "0.0.0.0:8000" not in " ".join(scmd if isinstance(scmd, list) else [str(scmd)]) + str(senv):
        errs.append("docker-compose.yml: sim must listen on 0.0.0.0:8000")
    # Prometheus scrapes services that exist, on the ports they listen on
    ports_of = {"sentinel": "9471", "sentinel-sim": "9471", "vllm": "8000", "sim": "8000", "prometheus": "9090", "grafana": "3000"}
    jobs = {j.get("job_name"): j for j in prom_cfg.get("scrape_configs", [])}
    if "vllm-sentinel" not in jobs:
        errs.append("prometheus/prometheus.yml: no job vllm-sentinel")
    for jn, j in jobs.items():
        for sc in j.get("static_configs", []) or []:
            for t in sc.get("targets", []) or []:
                host, _, port = t.partition(":")
                if host == "localhost":
                    continue  # Prometheus scraping itself
                if host not in names:
                    errs.append(f"prometheus/prometheus.yml: job {jn} scrapes {t}: no service or alias {host}")
                elif ports_of.get(names[host]) != port:
                    errs.append(f"prometheus/prometheus.yml: job {jn} scrapes {t}: {names[host]} listens on {ports_of.get(names[host])}")
    for rf in prom_cfg.get("rule_files", []) or []:
        base = os.path.basename(rf.replace("*", ""))
        if "*" not in rf and not os.path.exists(os.path.join(ROOT, "alerts", base)):
            errs.append(f"prometheus/prometheus.yml: rule file {rf} is not in alerts/")
    pvols = " ".join(v for v in services["prometheus"].get("volumes", []) if isinstance(v, str))
    if "./alerts:" not in pvols or "./prometheus/prometheus.yml:" not in pvols:
        errs.append("docker-compose.yml: prometheus must mount ./alerts and ./prometheus/prometheus.yml")
    gvols = " ".join(v for v in services["grafana"].get("volumes", []) if isinstance(v, str))
    if "./dashboards:" not in gvols or "./grafana/provisioning:" not in gvols:
        errs.append("docker-compose.yml: grafana must mount ./dashboards and ./grafana/provisioning")
    for ds in grafana_ds.get("datasources", []):
        m = re.match(r"http://([^:/]+):(\d+)", ds.get("url", ""))
        if not m or names.get(m.group(1)) != "prometheus" or m.group(2) != "9090":
            errs.append(f"grafana datasource {ds.get('name')}: url {ds.get('url')} is not the prometheus service")
    # Dockerfile: multi-stage, COPY sources exist and are not excluded by .dockerignore
    stages = re.findall(r"(?im)^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", dockerfile_text)
    if len(stages) < 2:
        errs.append("Dockerfile: not multi-stage")
    elif not stages[0][0].startswith("rust:"):
        errs.append(f"Dockerfile: builder stage {stages[0][0]} is not a rust image")
    # cargo needs every target the manifest names explicitly, and build.rs, inside the image
    try:
        manifest = read("Cargo.toml")
    except OSError:
        manifest = ""
    copied = " ".join(m.group(1) for m in re.finditer(r"(?im)^COPY\s+(?!--from)(.*)$", dockerfile_text))
    needs = []
    if re.search(r"(?m)^\[\[(bench|example|test)\]\]", manifest):
        needs += [d for d in ("benches", "examples", "tests") if re.search(rf"(?m)^\[\[{d[:-1] if d != 'benches' else 'bench'}\]\]", manifest)]
    if os.path.exists(os.path.join(ROOT, "build.rs")):
        needs.append("build.rs")
    for n in needs:
        if n not in copied:
            errs.append(f"Dockerfile: Cargo.toml needs {n}, which the builder stage does not COPY")
    ignored = [ln.strip() for ln in dockerignore.splitlines() if ln.strip() and not ln.startswith("#")]
    for m in re.finditer(r"(?im)^COPY\s+(.*)$", dockerfile_text):
        parts = [p for p in m.group(1).split() if not p.startswith("--")]
        if "--from=" in m.group(1):
            continue
        for src in parts[:-1]:
            if not os.path.exists(os.path.join(ROOT, src)):
                errs.append(f"Dockerfile: COPY source {src} does not exist")
            top = src.strip("./").split("/")[0]
            for pat in ignored:
                if not pat.startswith("!") and pat.strip("/") in (top, src.strip("./")):
                    errs.append(f"Dockerfile: COPY source {src} is excluded by .dockerignore ({pat})")
    return errs


def check_k8s(deploy_docs, rules_docs):
    errs = []
    kinds = {}
    for d in deploy_docs:
        if d:
            kinds.setdefault(d.get("kind"), []).append(d)
    for k in ("Deployment", "Service", "ServiceMonitor", "PrometheusRule"):
        if k not in kinds:
            errs.append(f"deploy/kubernetes: no {k}")
    if errs:
        return errs
    dep = kinds["Deployment"][0]
    cs = {c["name"]: c for c in dep["spec"]["template"]["spec"]["containers"]}
    if set(cs) != {"vllm", "vllm-sentinel"}:
        errs.append(f"deploy/kubernetes: the pod must hold vllm and vllm-sentinel (got {sorted(cs)})")
        return errs
    args = " ".join(cs["vllm-sentinel"].get("args") or [])
    env = {e["name"]: e.get("value") for e in cs["vllm-sentinel"].get("env") or []}
    if "http://127.0.0.1:8000" not in args and env.get("VLLM_SENTINEL_TARGET") != "http://127.0.0.1:8000":
        errs.append("deploy/kubernetes: the sidecar must target http://127.0.0.1:8000")
    sports = {p.get("name"): p.get("containerPort") for p in cs["vllm-sentinel"].get("ports") or []}
    if sports.get("metrics") != 9471:
        errs.append("deploy/kubernetes: vllm-sentinel must expose containerPort 9471 named metrics")
    # The tap: the sidecar listens for clients on 9472 (port `tap`), and a Service sends its client
    # port there while keeping a bypass port to vLLM's own `http` port.
    if "--tap-listen" not in args and not env.get("VLLM_SENTINEL_TAP_LISTEN", "") or (
        env.get("VLLM_SENTINEL_TAP_LISTEN") and not str(env["VLLM_SENTINEL_TAP_LISTEN"]).endswith(":9472")
    ):
        errs.append("deploy/kubernetes: the sidecar must run the tap on :9472 (VLLM_SENTINEL_TAP_LISTEN or --tap-listen)")
    if sports.get("tap") != 9472:
        errs.append("deploy/kubernetes: vllm-sentinel must expose containerPort 9472 named tap")
    client_ports = [p for sv in kinds["Service"] for p in sv["spec"].get("ports") or []]
    if not any(p.get("targetPort") in ("tap", 9472) for p in client_ports):
        errs.append("deploy/kubernetes: no Service port targets the tap (clients would bypass it)")
    if not any(p.get("targetPort") in ("http", 8000) for p in client_ports):
        errs.append("deploy/kubernetes: no Service port targets vLLM directly (the bypass)")
    svc = kinds["Service"][0]
    sel = svc["spec"].get("selector") or {}
    labels = dep["spec"]["template"]["metadata"].get("labels") or {}
    if not sel or any(labels.get(k) != v for k, v in sel.items()):
        errs.append("deploy/kubernetes: the Service selector does not match the pod labels")
    sp = {p.get("name"): p for p in svc["spec"].get("ports") or []}
    if "metrics" not in sp or sp["metrics"].get("targetPort") not in ("metrics", 9471):
        errs.append("deploy/kubernetes: the Service has no metrics port to the sidecar")
    sm = kinds["ServiceMonitor"][0]
    msel = (sm["spec"].get("selector") or {}).get("matchLabels") or {}
    slabels = svc["metadata"].get("labels") or {}
    if not msel or any(slabels.get(k) != v for k, v in msel.items()):
        errs.append("deploy/kubernetes: the ServiceMonitor selector does not match the Service labels")
    if not any(e.get("port") == "metrics" for e in sm["spec"].get("endpoints") or []):
        errs.append("deploy/kubernetes: the ServiceMonitor does not scrape the metrics port")
    want = []
    for fn in sorted(rules_docs):
        want.extend(rules_docs[fn].get("groups", []))
    got = kinds["PrometheusRule"][0]["spec"].get("groups")
    if got != want:
        errs.append("deploy/kubernetes: the PrometheusRule's groups differ from alerts/*.yml; run scripts/ops/gen-prometheusrule.py")
    return errs


def load_all():
    families = opslib.parse_contract()
    rules_docs = opslib.rule_docs(yaml.safe_load)
    tests = alert_tests(os.path.join(ROOT, "alerts", "tests"))
    anchors = {}
    for rel in ("docs/alerts.md",):
        p = os.path.join(ROOT, rel)
        if os.path.exists(p):
            anchors[rel] = runbook_anchors(p)
    rb = os.path.join(ROOT, "docs", "runbooks")
    if os.path.isdir(rb):
        for fn in os.listdir(rb):
            anchors[f"docs/runbooks/{fn}"] = runbook_anchors(os.path.join(rb, fn))
    return families, rules_docs, tests, anchors


def read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def run_all():
    families, rules_docs, tests, anchors = load_all()
    errs, recorded = check_rules(rules_docs, families, tests, anchors)
    errs += check_dashboards(opslib.load_dashboards(), families, recorded)
    errs += check_compose(
        yaml.safe_load(read("docker-compose.yml")),
        yaml.safe_load(read("prometheus/prometheus.yml")),
        yaml.safe_load(read("grafana/provisioning/datasources/prometheus.yml")),
        read("Dockerfile"),
        read(".dockerignore"),
    )
    kdocs = []
    kdir = os.path.join(ROOT, "deploy", "kubernetes")
    for fn in sorted(os.listdir(kdir)):
        if fn.endswith((".yml", ".yaml")):
            kdocs.extend(yaml.safe_load_all(read(os.path.join("deploy", "kubernetes", fn))))
    errs += check_k8s(kdocs, rules_docs)
    return errs


def selftest():
    """Each mutation must produce at least one error mentioning `expect`."""
    families, rules_docs, tests, anchors = load_all()
    _, recorded = check_rules(rules_docs, families, tests, anchors)
    dashes = opslib.load_dashboards()
    fn = "vllm-sentinel-overview.json"
    cases = []

    def first_panel(d):
        return next(p for p in opslib.iter_panels(d) if p.get("type") != "row")

    def mut(desc, expect, f):
        d = copy.deepcopy(dashes)
        f(d[fn])
        cases.append((desc, expect, check_dashboards(d, families, recorded)))

    mut("panel without description", "no description", lambda d: first_panel(d).pop("description"))
    mut("panel without unit", "no unit", lambda d: first_panel(d)["fieldConfig"]["defaults"].pop("unit"))
    mut("fixed rate window", "fixed range [5m]", lambda d: first_panel(d)["targets"][0].update(expr="rate(vllm_sentinel_probe_requests_total[5m])"))
    mut("unknown metric", "not a family", lambda d: first_panel(d)["targets"][0].update(expr="vllm_sentinel_made_up_total"))
    mut("histogram without suffix", "is a histogram", lambda d: first_panel(d)["targets"][0].update(expr="vllm_sentinel_probe_ttft_seconds"))
    mut("undefined recording rule", "recording rule", lambda d: first_panel(d)["targets"][0].update(expr="vllm_sentinel:nope:p95_5m"))
    mut("hard-coded datasource", "datasource", lambda d: first_panel(d).update(datasource={"type": "prometheus", "uid": "abc"}))
    mut("no model variable", "no `model` variable", lambda d: d["templating"].update(list=[v for v in d["templating"]["list"] if v["name"] != "model"]))

    def rmut(desc, expect, f, t=tests):
        r = copy.deepcopy(rules_docs)
        f(r)
        cases.append((desc, expect, check_rules(r, families, t, anchors)[0]))

    def first_alert(r):
        return next(x for _, _, x in opslib.iter_rules(r) if "alert" in x)

    rmut("alert without severity", "labels.severity", lambda r: first_alert(r)["labels"].pop("severity"))
    rmut("alert without runbook", "annotations.runbook_url", lambda r: first_alert(r)["annotations"].pop("runbook_url"))
    rmut("runbook anchor missing", "has no section", lambda r: first_alert(r)["annotations"].update(runbook_url=RUNBOOK_PREFIX + "docs/alerts.md#nope"))
    rmut("rule on unknown metric", "not a family", lambda r: first_alert(r).update(expr="vllm_sentinel_nope > 0"))
    rmut("alert never tested", "no promtool unit test", lambda r: first_alert(r).update(alert="VllmSentinelUntested"))
    failed = 0
    for desc, expect, errs in cases:
        if not any(expect in e for e in errs):
            print(f"SELFTEST FAILED: {desc}: no error mentioning {expect!r} (got {errs[:3]})")
            failed += 1
    print(f"selftest: {len(cases) - failed}/{len(cases)} broken inputs caught")
    return failed == 0


def main():
    ok = True
    if "--selftest" in sys.argv[1:]:
        ok = selftest()
    errs = run_all()
    for e in errs:
        print(f"ERROR: {e}")
    if errs:
        print(f"{len(errs)} static check error(s)")
        ok = False
    else:
        print("static checks: dashboards, rules, runbooks, compose, Dockerfile, kubernetes OK")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
