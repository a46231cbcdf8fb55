"""Captures our /metrics and nvidia-smi side by side, once a second.

usage: capture.py METRICS_URL SMI_CSV_OUT OURS_CSV_OUT STOP_FILE [METRICS_DUMP_DIR]
Every line of nvidia-smi's -lms 1000 stream is stamped on arrival; every scrape of /metrics
is stamped with the sample time the daemon reports (last_sample_timestamp).
"""
import os
import subprocess
import sys
import threading
import time
import urllib.request

SMI_FIELDS = ("memory.total,memory.used,memory.free,memory.reserved,utilization.gpu,"
              "utilization.memory,power.draw,power.limit,temperature.gpu,clocks.sm,clocks.mem,"
              "clocks.max.sm,clocks.max.mem,pstate,pcie.link.gen.current,pcie.link.width.current,"
              "ecc.errors.corrected.volatile.total,ecc.errors.uncorrected.volatile.total,"
              "clocks_event_reasons.active")

REASON_BITS = {"gpu_idle": 0x1, "applications_clocks_setting": 0x2, "sw_power_cap": 0x4,
               "hw_slowdown": 0x8, "sync_boost": 0x10, "sw_thermal_slowdown": 0x20,
               "hw_thermal_slowdown": 0x40, "hw_power_brake_slowdown": 0x80,
               "display_clock_setting": 0x100}

OURS_COLS = ["t_scrape", "t_sample", "up", "mem_total", "mem_used", "mem_free", "mem_reserved",
             "util_gpu", "util_mem", "power", "power_limit", "energy", "temp", "sm_clock",
             "mem_clock", "sm_clock_max", "mem_clock_max", "pstate", "pcie_gen", "pcie_width",
             "ecc_corr", "ecc_uncorr", "clock_events", "sample_duration", "cpu_seconds",
             "proc_mem_max", "proc_names", "remapped_corr", "pcie_tx", "pcie_rx"]


def parse_metrics(text, gpu="0"):
    """Returns {family: value} for gpu index `gpu` (plus unlabelled series), and extras."""
    vals, events, procs = {}, 0, []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        if "{" in name_labels:
            name, _, rest = name_labels.partition("{")
            labels = dict(kv.split("=", 1) for kv in _split_labels(rest.rstrip("}")))
            labels = {k: v.strip('"') for k, v in labels.items()}
        else:
            name, labels = name_labels, {}
        if "gpu" in labels and labels["gpu"] != gpu:
            continue
        v = float(value)
        if name == "vllm_sentinel_gpu_clock_event_active":
            if v == 1:
                events |= REASON_BITS.get(labels.get("reason"), 0)
        elif name == "vllm_sentinel_gpu_process_memory_used_bytes":
            procs.append((labels.get("process", "?"), v))
        elif name == "vllm_sentinel_gpu_ecc_errors_total":
            vals["ecc_" + labels.get("error_type", "?")] = v
        elif name == "vllm_sentinel_gpu_remapped_rows":
            vals["remapped_" + labels.get("cause", "?")] = v
        else:
            vals[name] = v
    return vals, events, procs


def _split_labels(s):
    out, cur, q = [], "", False
    for ch in s:
        if ch == '"':
            q = not q
        if ch == "," and not q:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        out.append(cur)
    return out


def ours_row(text, t_scrape):
    v, events, procs = parse_metrics(text)
    p = "vllm_sentinel_gpu_"
    g = lambda k: v.get(p + k, "")
    return [f"{t_scrape:.3f}", g("last_sample_timestamp_seconds"), g("up"),
            g("memory_total_bytes"), g("memory_used_bytes"), g("memory_free_bytes"),
            g("memory_reserved_bytes"), g("utilization_ratio"), g("memory_utilization_ratio"),
            g("power_watts"), g("power_limit_watts"), g("energy_joules_total"),
            g("temperature_celsius"), g("sm_clock_hertz"), g("memory_clock_hertz"),
            g("sm_clock_max_hertz"), g("memory_clock_max_hertz"), g("performance_state"),
            g("pcie_link_generation"), g("pcie_link_width"), v.get("ecc_corrected", ""),
            v.get("ecc_uncorrected", ""), f"0x{events:x}", g("sample_duration_seconds"),
            v.get("process_cpu_seconds_total", ""),
            max((b for _, b in procs), default=""), "|".join(sorted({n for n, _ in procs})),
            v.get("remapped_correctable", ""), g("pcie_tx_bytes_per_second"),
            g("pcie_rx_bytes_per_second")]


def valid_fields(fields):
    """Drops (or renames) fields this nvidia-smi does not know, so one bad name cannot empty
    the whole capture."""
    fields = fields.split(",")
    for _ in range(8):
        r = subprocess.run(["nvidia-smi", "--query-gpu=" + ",".join(fields),
                            "--format=csv,noheader,nounits"], capture_output=True, text=True)
        if r.returncode == 0:
            break
        bad = [f for f in fields if f'"{f}"' in (r.stdout + r.stderr)]
        if not bad:
            break
        print("nvidia-smi rejects", bad, file=sys.stderr)
        alias = "clocks_throttle_reasons.active"
        fields = [(alias if f == "clocks_event_reasons.active" else None) if f in bad else f
                  for f in fields]
        fields = [f for f in fields if f]
    return ",".join(fields)


def main_aligned(url, smi_out, ours_out, stop_file):
    """Scrapes just after each daemon sample and runs a one-shot nvidia-smi right then, so the
    two readings are tens of milliseconds apart rather than up to half a second."""
    fields = valid_fields(SMI_FIELDS)
    with open(ours_out, "w") as fo, open(smi_out, "w") as fs:
        fo.write(",".join(OURS_COLS) + "\n")
        fs.write("t," + fields + "\n")
        while not os.path.exists(stop_file):
            try:
                t = time.time()
                text = urllib.request.urlopen(url, timeout=2).read().decode()
                row = ours_row(text, t)
                t0 = time.time()
                r = subprocess.run(["nvidia-smi", "--query-gpu=" + fields,
                                    "--format=csv,noheader,nounits"],
                                   capture_output=True, text=True, timeout=5)
                t1 = time.time()
                fo.write(",".join(str(x) for x in row) + "\n")
                fo.flush()
                line = r.stdout.strip().splitlines()[0] if r.stdout.strip() else ""
                # nvidia-smi reads the GPU near the end of its run (after NVML init)
                fs.write(f"{t1:.3f},{line}\n")
                fs.flush()
                t_sample = float(row[1]) if row[1] != "" else t
                target = t_sample + 1.02
                while target < time.time():
                    target += 1.0
                time.sleep(target - time.time())
            except Exception as e:
                print("aligned capture failed:", e, file=sys.stderr)
                time.sleep(0.5)


def main():
    url, smi_out, ours_out, stop_file = sys.argv[1:5]
    if os.environ.get("CAPTURE_ALIGNED"):
        return main_aligned(url, smi_out, ours_out, stop_file)
    dump_dir = sys.argv[5] if len(sys.argv) > 5 else None
    fields = SMI_FIELDS if smi_out == "-" else valid_fields(SMI_FIELDS)
    smi = None if smi_out == "-" else subprocess.Popen(["nvidia-smi", f"--query-gpu={fields}",
                            "--format=csv,noheader,nounits", "-lms", "1000"],
                           stdout=subprocess.PIPE, text=True)

    def pump():
        with open(smi_out, "w") as f:
            f.write("t," + fields + "\n")
            for line in smi.stdout:
                f.write(f"{time.time():.3f},{line.strip()}\n")
                f.flush()

    if smi is not None:
        threading.Thread(target=pump, daemon=True).start()
    with open(ours_out, "w") as f:
        f.write(",".join(OURS_COLS) + "\n")
        nxt = time.time()
        while not os.path.exists(stop_file):
            try:
                t = time.time()
                text = urllib.request.urlopen(url, timeout=2).read().decode()
                f.write(",".join(str(x) for x in ours_row(text, t)) + "\n")
                f.flush()
                if dump_dir:
                    with open(os.path.join(dump_dir, "last-metrics.txt"), "w") as d:
                        d.write(text)
            except Exception as e:  # keep capturing
                print("scrape failed:", e, file=sys.stderr)
            nxt += 1.0
            time.sleep(max(0.0, nxt - time.time()))
    if smi is not None:
        smi.terminate()


if __name__ == "__main__":
    main()
