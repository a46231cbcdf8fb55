"""Pairs our samples with nvidia-smi's and writes the comparison.

usage: compare.py OURS_CSV SMI_CSV WORKLOAD_LOG OUT_DIR [OURS_PCIE_CSV]
Writes OUT_DIR/compare.csv (per field), OUT_DIR/phases.csv (per phase medians) and
OUT_DIR/summary.txt (cost per tick, daemon CPU, processes, verdicts).
"""
import csv
import statistics
import sys

MIB = 2**20
# (name, smi column, ours column, ours -> smi units, tolerance in smi units)
FIELDS = [
    ("memory.total (MiB)", "memory.total", "mem_total", lambda v: v / MIB, 1),
    ("memory.used (MiB)", "memory.used", "mem_used", lambda v: v / MIB, 2),
    ("memory.free (MiB)", "memory.free", "mem_free", lambda v: v / MIB, 2),
    ("memory.reserved (MiB)", "memory.reserved", "mem_reserved", lambda v: v / MIB, 1),
    ("utilization.gpu (%)", "utilization.gpu", "util_gpu", lambda v: v * 100, 5),
    ("utilization.memory (%)", "utilization.memory", "util_mem", lambda v: v * 100, 5),
    ("power.draw (W)", "power.draw", "power", lambda v: v, 15),
    ("power.limit (W)", "power.limit", "power_limit", lambda v: v, 1),
    ("temperature.gpu (C)", "temperature.gpu", "temp", lambda v: v, 1),
    ("clocks.sm (MHz)", "clocks.sm", "sm_clock", lambda v: v / 1e6, 15),
    ("clocks.mem (MHz)", "clocks.mem", "mem_clock", lambda v: v / 1e6, 1),
    ("clocks.max.sm (MHz)", "clocks.max.sm", "sm_clock_max", lambda v: v / 1e6, 0),
    ("clocks.max.mem (MHz)", "clocks.max.mem", "mem_clock_max", lambda v: v / 1e6, 0),
    ("pstate", "pstate", "pstate", lambda v: v, 0),
    ("pcie.link.gen.current", "pcie.link.gen.current", "pcie_gen", lambda v: v, 0),
    ("pcie.link.width.current", "pcie.link.width.current", "pcie_width", lambda v: v, 0),
    ("ecc.errors.corrected.volatile.total", "ecc.errors.corrected.volatile.total", "ecc_corr", lambda v: v, 0),
    ("ecc.errors.uncorrected.volatile.total", "ecc.errors.uncorrected.volatile.total", "ecc_uncorr", lambda v: v, 0),
    ("clocks_event_reasons.active (mask 0x1ff)", "clocks_event_reasons.active", "clock_events", lambda v: v, 0),
]
MATCH_FRACTION = 0.9


def num(s):
    s = (s or "").strip()
    if not s or s in ("[N/A]", "N/A", "[Not Supported]"):
        return None
    if s.startswith("P") and s[1:].isdigit():
        return float(s[1:])
    if s.startswith("0x"):
        return float(int(s, 16) & 0x1FF)
    try:
        return float(s)
    except ValueError:
        return None


def load(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def phases_from(path):
    out = []
    for line in open(path):
        parts = line.split()
        if len(parts) == 2 and not line.startswith("#"):
            try:
                out.append((float(parts[0]), parts[1]))
            except ValueError:
                pass
    return out


def phase_at(t, phases):
    name = "before"
    for start, p in phases:
        if t >= start:
            name = p
    return name


def main():
    ours_path, smi_path, wl_path, out_dir = sys.argv[1:5]
    pcie_path = sys.argv[5] if len(sys.argv) > 5 else None
    ours = [r for r in load(ours_path) if num(r["t_sample"]) is not None]
    # one row per daemon sample (several scrapes can see the same sample)
    seen, uniq = set(), []
    for r in ours:
        if r["t_sample"] not in seen:
            seen.add(r["t_sample"])
            uniq.append(r)
    smi = load(smi_path)
    smi_t = [float(r["t"]) for r in smi]
    phases = phases_from(wl_path)
    pairs = []
    for r in uniq:
        t = float(r["t_sample"])
        if not smi:
            break
        j = min(range(len(smi)), key=lambda i: abs(smi_t[i] - t))
        if abs(smi_t[j] - t) <= 0.6:
            pairs.append((r, smi[j], phase_at(t, phases), smi_t[j] - t))

    starts = [t for t, _ in phases]

    def steady(o):
        t = float(o["t_sample"])
        return all(abs(t - b) > 1.5 for b in starts)

    rows = []
    for name, scol, ocol, conv, tol in FIELDS:
        diffs, o_all, s_all, steady_diffs = [], [], [], []
        for o, s, _, _ in pairs:
            sraw = s.get(scol)
            if sraw is None and scol == "clocks_event_reasons.active":
                sraw = s.get("clocks_throttle_reasons.active")
            ov, sv = num(o.get(ocol)), num(sraw)
            if ov is None or sv is None:
                continue
            ov = conv(ov)
            o_all.append(ov)
            s_all.append(sv)
            diffs.append(abs(ov - sv))
            if steady(o):
                steady_diffs.append(abs(ov - sv))
        n = len(diffs)
        sn = len(steady_diffs)
        swithin = sum(1 for d in steady_diffs if d <= tol + 1e-9)
        within = sum(1 for d in diffs if d <= tol + 1e-9)
        rows.append({
            "field": name, "pairs": n,
            "smi_median": f"{statistics.median(s_all):.2f}" if n else "",
            "ours_median": f"{statistics.median(o_all):.2f}" if n else "",
            "median_abs_diff": f"{statistics.median(diffs):.3f}" if n else "",
            "max_abs_diff": f"{max(diffs):.3f}" if n else "",
            "tolerance": tol, "within_tolerance": f"{within}/{n}",
            "within_tolerance_off_transitions": f"{swithin}/{sn}",
            "match": "yes" if n and within / n >= MATCH_FRACTION else ("n/a" if not n else "no"),
        })
    with open(f"{out_dir}/compare.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)

    order = ["before", "baseline", "alloc_idle", "compute", "idle_held", "freed", "end"]
    cols = [("mem_used_GiB", "mem_used", lambda v: v / 2**30, "memory.used", lambda v: v / 1024),
            ("util_gpu_pct", "util_gpu", lambda v: v * 100, "utilization.gpu", lambda v: v),
            ("util_mem_pct", "util_mem", lambda v: v * 100, "utilization.memory", lambda v: v),
            ("power_W", "power", lambda v: v, "power.draw", lambda v: v),
            ("sm_clock_MHz", "sm_clock", lambda v: v / 1e6, "clocks.sm", lambda v: v),
            ("temp_C", "temp", lambda v: v, "temperature.gpu", lambda v: v)]
    prow = []
    for ph in order:
        sel = [(o, s) for o, s, p, _ in pairs if p == ph]
        if not sel:
            continue
        row = {"phase": ph, "samples": len(sel)}
        for label, oc, oconv, sc, sconv in cols:
            ov = [oconv(num(o[oc])) for o, _ in sel if num(o.get(oc)) is not None]
            sv = [sconv(num(s[sc])) for _, s in sel if num(s.get(sc)) is not None]
            row["ours_" + label] = f"{statistics.median(ov):.1f}" if ov else ""
            row["smi_" + label] = f"{statistics.median(sv):.1f}" if sv else ""
        prow.append(row)
    if prow:
        with open(f"{out_dir}/phases.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(prow[0].keys()))
            w.writeheader()
            w.writerows(prow)

    with open(f"{out_dir}/series.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "phase", "dt_smi_s", "ours_mem_used_MiB", "smi_mem_used_MiB",
                    "ours_util_gpu_pct", "smi_util_gpu_pct", "ours_util_mem_pct",
                    "smi_util_mem_pct", "ours_power_W", "smi_power_W", "ours_sm_MHz",
                    "smi_sm_MHz", "ours_temp_C", "smi_temp_C", "ours_clock_events",
                    "smi_clock_events", "ours_sample_ms"])
        t0 = float(pairs[0][0]["t_sample"]) if pairs else 0.0

        def f1(x, k=1.0, d=1):
            v = num(x)
            return "" if v is None else f"{v * k:.{d}f}"

        for o, sm, ph, dt in pairs:
            ev = sm.get("clocks_event_reasons.active") or sm.get("clocks_throttle_reasons.active") or ""
            w.writerow([f"{float(o['t_sample']) - t0:.2f}", ph, f"{dt:.2f}",
                        f1(o["mem_used"], 1 / MIB), f1(sm.get("memory.used")),
                        f1(o["util_gpu"], 100, 0), f1(sm.get("utilization.gpu"), 1, 0),
                        f1(o["util_mem"], 100, 0), f1(sm.get("utilization.memory"), 1, 0),
                        f1(o["power"]), f1(sm.get("power.draw")),
                        f1(o["sm_clock"], 1e-6, 0), f1(sm.get("clocks.sm"), 1, 0),
                        f1(o["temp"], 1, 0), f1(sm.get("temperature.gpu"), 1, 0),
                        o["clock_events"], "0x%x" % int(num(ev) or 0),
                        f1(o["sample_duration"], 1000, 2)])

    lines = []
    durs = sorted(float(r["sample_duration"]) * 1000 for r in uniq if num(r.get("sample_duration")) is not None)

    def pct(v, q):
        return v[min(len(v) - 1, int(q * (len(v) - 1) + 0.5))]

    if durs:
        lines.append(f"sample_duration_ms: n={len(durs)} median={statistics.median(durs):.2f} p95={pct(durs, 0.95):.2f} max={max(durs):.2f}")
    cpu = [(float(r["t_scrape"]), float(r["cpu_seconds"])) for r in ours if num(r.get("cpu_seconds")) is not None]
    if len(cpu) >= 2:
        dt, dc = cpu[-1][0] - cpu[0][0], cpu[-1][1] - cpu[0][1]
        lines.append(f"daemon_cpu: {dc:.3f} s over {dt:.1f} s = {100 * dc / dt:.3f}% of one core (includes serving 1 scrape/s)")
    if pcie_path:
        p = [r for r in load(pcie_path) if num(r.get("sample_duration")) is not None]
        d2 = sorted(float(r["sample_duration"]) * 1000 for r in p)
        if d2:
            lines.append(f"pcie_daemon_sample_duration_ms: n={len(d2)} median={statistics.median(d2):.2f} p95={pct(d2, 0.95):.2f} max={max(d2):.2f}")
        tx = [float(r["pcie_tx"]) for r in p if num(r.get("pcie_tx")) is not None]
        rx = [float(r["pcie_rx"]) for r in p if num(r.get("pcie_rx")) is not None]
        if tx:
            lines.append(f"pcie_tx_bytes_per_second: max={max(tx):.0f} rx max={max(rx) if rx else 0:.0f}")
        c2 = [(float(r["t_scrape"]), float(r["cpu_seconds"])) for r in p if num(r.get("cpu_seconds")) is not None]
        if len(c2) >= 2:
            dt, dc = c2[-1][0] - c2[0][0], c2[-1][1] - c2[0][1]
            lines.append(f"pcie_daemon_cpu: {100 * dc / dt:.3f}% of one core")
    names = sorted({n for r in ours for n in r.get("proc_names", "").split("|") if n})
    pm = [float(r["proc_mem_max"]) for r in ours if num(r.get("proc_mem_max")) is not None]
    lines.append(f"processes seen: {names} max bytes {max(pm) if pm else 0:.0f}")
    offs = sorted(abs(d) for *_, d in pairs)
    if offs:
        lines.append(f"pairs: {len(pairs)} (median |t_smi - t_ours| = {statistics.median(offs):.3f} s)")
    ups = [r["up"] for r in ours]
    lines.append(f"gpu_up values: {sorted(set(ups))} over {len(ups)} scrapes")
    for r in rows:
        lines.append(f"{r['field']}: {r['match']} ({r['within_tolerance']} within {r['tolerance']}, {r['within_tolerance_off_transitions']} off phase transitions, median |diff| {r['median_abs_diff']})")
    with open(f"{out_dir}/summary.txt", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
