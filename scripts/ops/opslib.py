"""Shared helpers of the ops tests: the metrics contract, PromQL name extraction, dashboard and
rule expression extraction. Python 3 stdlib only (YAML loading is left to the callers, which run
in the ops venv with PyYAML)."""

import json
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HIST_SUFFIXES = ("_bucket", "_sum", "_count")


def parse_contract(path=None):
    """Families of docs/metrics.md: {name: type}, type in histogram|counter|gauge.

    Table rows list one or more backticked names in the first column; an abbreviated name such as
    `_used_bytes` after `vllm_sentinel_gpu_memory_total_bytes` replaces as many trailing words of
    the first name as the first abbreviation has (so `_used_bytes` gives
    `vllm_sentinel_gpu_memory_used_bytes`, and `_memory_clock_hertz` after
    `vllm_sentinel_gpu_sm_clock_hertz` gives `vllm_sentinel_gpu_memory_clock_hertz`)."""
    path = path or os.path.join(ROOT, "docs", "metrics.md")
    families = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.startswith("|") or line.startswith("|---"):
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) < 2:
                continue
            names = re.findall(r"`([A-Za-z_:][A-Za-z0-9_:]*)`", cells[0])
            if not names or cells[0] == "family":
                continue
            typ_cell = cells[1].lower()
            typ = "histogram" if "histogram" in typ_cell else "counter" if "counter" in typ_cell else "gauge" if "gauge" in typ_cell else None
            if typ is None:
                continue
            first = names[0]
            prefix = None
            for n in names:
                if n.startswith("_"):
                    if prefix is None:
                        words = first.split("_")
                        k = len(n.strip("_").split("_"))
                        prefix = "_".join(words[: len(words) - k])
                    families[prefix + n] = typ
                else:
                    families[n] = typ
    return families


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_NAME_RE = re.compile(r"__name__\s*=~?\s*\"((?:[^\"\\]|\\.)*)\"")
_TOKEN = re.compile(r"(?<![A-Za-z0-9_:$.])[A-Za-z_:][A-Za-z0-9_:]*")


def _expand_name_regex(rx):
    """`vllm_sentinel_(a|b)` -> [vllm_sentinel_a, vllm_sentinel_b] (one group, no nesting)."""
    m = re.fullmatch(r"([A-Za-z0-9_:]*)\(([A-Za-z0-9_:|]+)\)([A-Za-z0-9_:]*)", rx)
    if m:
        return [m.group(1) + alt + m.group(3) for alt in m.group(2).split("|")]
    if re.fullmatch(r"[A-Za-z0-9_:]+", rx):
        return [rx]
    raise ValueError(f"cannot expand __name__ regex {rx!r}")


def metric_names(expr):
    """Metric names an expression selects: vllm_sentinel_*, process_*, up, and recording-rule
    names (with a colon). Label names, functions and keywords are not metric names here."""
    names = set()
    for m in _NAME_RE.finditer(expr):
        names.update(_expand_name_regex(m.group(1)))
    stripped = _STRING.sub('""', expr)
    # drop label matchers and grouping lists, keep what's outside them
    stripped = re.sub(r"\{[^}]*\}", "{}", stripped)
    stripped = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", stripped)
    for tok in _TOKEN.findall(stripped):
        if tok.startswith(("vllm_sentinel", "process_", "model:")) or tok == "up" or ":" in tok:
            names.add(tok)
    return names


def contract_check(name, families, recorded):
    """None when `name` is fine, else why not."""
    if ":" in name:
        return None if name in recorded else f"recording rule {name} is not defined in alerts/"
    if name == "up":
        return None
    if name in families:
        if families[name] == "histogram":
            return f"{name} is a histogram: select {name}_bucket/_sum/_count"
        return None
    for suf in HIST_SUFFIXES:
        if name.endswith(suf):
            base = name[: -len(suf)]
            if families.get(base) == "histogram":
                return None
    return f"{name} is not a family of docs/metrics.md"


def load_dashboards(dirpath=None):
    dirpath = dirpath or os.path.join(ROOT, "dashboards")
    out = {}
    for fn in sorted(os.listdir(dirpath)):
        if fn.endswith(".json"):
            with open(os.path.join(dirpath, fn), encoding="utf-8") as f:
                out[fn] = json.load(f)
    return out


def iter_panels(dash):
    for p in dash.get("panels", []):
        yield p
        for sub in p.get("panels", []) or []:
            yield sub


def dashboard_exprs(dashboards):
    """[(file, panel title, refId, expr)] of every panel query."""
    out = []
    for fn, d in dashboards.items():
        for p in iter_panels(d):
            for t in p.get("targets", []) or []:
                if t.get("expr"):
                    out.append((fn, p.get("title", "?"), t.get("refId", "?"), t["expr"]))
    return out


def dashboard_variable_queries(dashboards):
    """[(file, variable name, query string)] of query variables."""
    out = []
    for fn, d in dashboards.items():
        for v in d.get("templating", {}).get("list", []):
            if v.get("type") == "query":
                qv = v.get("query")
                qs = qv.get("query") if isinstance(qv, dict) else qv
                out.append((fn, v["name"], qs))
    return out


def rule_docs(yaml_load, dirpath=None):
    """{file: parsed rule file} of alerts/*.yml (not the tests)."""
    dirpath = dirpath or os.path.join(ROOT, "alerts")
    out = {}
    for fn in sorted(os.listdir(dirpath)):
        if fn.endswith((".yml", ".yaml")):
            with open(os.path.join(dirpath, fn), encoding="utf-8") as f:
                out[fn] = yaml_load(f)
    return out


def iter_rules(docs):
    for fn, doc in docs.items():
        for g in doc.get("groups", []):
            for r in g.get("rules", []):
                yield fn, g["name"], r


def substitute(expr, values=None):
    """Grafana macro and variable substitution for running a dashboard query in Prometheus."""
    values = values or {}
    expr = expr.replace("$__rate_interval", values.get("rate_interval", "15s"))
    expr = expr.replace("$__range", values.get("range", "5m"))
    expr = expr.replace("$__interval", values.get("interval", "5s"))
    expr = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: values.get(m.group(1), ".*"), expr)
    return expr


def label_values_query(q):
    """`label_values(selector, label)` -> (selector or None, label)."""
    m = re.fullmatch(r"\s*label_values\(\s*(?:(.*),\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", q, re.S)
    if not m:
        raise ValueError(f"not a label_values() query: {q!r}")
    return m.group(1), m.group(2)


def github_anchor(heading):
    a = heading.strip().lower()
    a = re.sub(r"[^\w\- ]", "", a)
    return a.replace(" ", "-")
