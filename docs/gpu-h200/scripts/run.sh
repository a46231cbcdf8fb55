#!/bin/bash
# The H200 proof: run from the repository root on the device machine, with .devcarry carried.
set -u
D=.devcarry
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
T=/tmp/gpu-proof; mkdir -p $T; rm -f $T/stop
BIN=$D/vllm-sentinel; chmod +x $BIN
LIB=/usr/local/nvidia/lib64/libnvidia-ml.so.1
LOG=$OUT/logs.txt
{ date -u; uname -r; nvidia-smi --query-gpu=name,driver_version,pci.bus_id,memory.total --format=csv; nproc; } > $LOG 2>&1
nvidia-smi --help-query-gpu | grep -E '^"(clocks_event_reasons.active|memory.reserved|pcie.link.gen.current|clocks.max.sm)"' >> $LOG 2>&1
printf '[gpu]\npcie_throughput = true\n' > $T/pcie.toml
$BIN --log-level info serve --listen 127.0.0.1:9471 --nvml-library $LIB > $T/daemon.log 2>&1 &
P1=$!
# no --nvml-library: exercises the fallback path lookup
$BIN --log-level info serve --listen 127.0.0.1:9472 --config $T/pcie.toml > $T/daemon-pcie.log 2>&1 &
P2=$!
for i in $(seq 1 50); do curl -sf 127.0.0.1:9471/readyz >/dev/null && curl -sf 127.0.0.1:9472/readyz >/dev/null && break; sleep 0.2; done
curl -s 127.0.0.1:9471/metrics > $T/metrics-idle.txt
python3 $D/capture.py http://127.0.0.1:9471/metrics $OUT/smi.csv $OUT/ours.csv $T/stop &
C1=$!
python3 - <<'PY' &
import sys; sys.argv=["c","http://127.0.0.1:9472/metrics","-","/tmp/gpu-out-pcie.csv","/tmp/gpu-proof/stop"]
sys.path.insert(0, ".devcarry"); import capture; capture.main()
PY
C2=$!
sleep 3
PYTHONUNBUFFERED=1 python3 $D/workload.py > $T/workload.log 2>&1 &
W=$!
for i in $(seq 1 600); do grep -q ' compute' $T/workload.log 2>/dev/null && break; sleep 0.1; done
sleep 10
curl -s 127.0.0.1:9471/metrics > $OUT/metrics-compute.txt
wait $W
sleep 2
touch $T/stop
wait $C1 $C2
cp /tmp/gpu-out-pcie.csv $OUT/ours-pcie.csv 2>/dev/null
kill -INT $P1 $P2; wait $P1 $P2
python3 $D/compare.py $OUT/ours.csv $OUT/smi.csv $T/workload.log $OUT $OUT/ours-pcie.csv >> $LOG 2>&1
{ echo "== workload"; cat $T/workload.log; echo "== daemon (9471, --nvml-library)"; cat $T/daemon.log; echo "== daemon (9472, pcie_throughput, default lookup)"; cat $T/daemon-pcie.log; echo "== idle metrics (9471)"; grep -v '^#' $T/metrics-idle.txt | grep gpu; } >> $LOG 2>&1
cat $OUT/summary.txt
ls -la $OUT
