#!/bin/bash
# Second H200 run: per-query NVML cost (idle and under load) and a time-aligned comparison.
set -u
D=.devcarry
OUT=${OUT:-/tmp/gpu-out2}; mkdir -p "$OUT"
T=/tmp/gpu-proof2; mkdir -p $T; rm -f $T/stop
LIB=/usr/local/nvidia/lib64/libnvidia-ml.so.1
chmod +x $D/vllm-sentinel $D/nvml_cost
$D/nvml_cost $LIB > $OUT/field-cost-idle.md 2>&1
$D/vllm-sentinel --log-level info serve --listen 127.0.0.1:9471 --nvml-library $LIB > $T/daemon.log 2>&1 &
P1=$!
for i in $(seq 1 50); do curl -sf 127.0.0.1:9471/readyz >/dev/null && break; sleep 0.2; done
CAPTURE_ALIGNED=1 python3 $D/capture.py http://127.0.0.1:9471/metrics $OUT/smi-aligned.csv $OUT/ours-aligned.csv $T/stop 2> $T/capture.err &
C=$!
sleep 2
PYTHONUNBUFFERED=1 WORKLOAD_SHORT=1 python3 $D/workload.py > $T/workload.log 2>&1 &
W=$!
for i in $(seq 1 600); do grep -q ' compute' $T/workload.log 2>/dev/null && break; sleep 0.1; done
sleep 1
$D/nvml_cost $LIB > $OUT/field-cost-busy.md 2>&1
wait $W
sleep 2
touch $T/stop; wait $C
kill -INT $P1; wait $P1
python3 $D/compare.py $OUT/ours-aligned.csv $OUT/smi-aligned.csv $T/workload.log $OUT > /dev/null 2>&1
{ echo "== workload"; cat $T/workload.log; echo "== capture errors"; cat $T/capture.err; echo "== daemon"; cat $T/daemon.log; } >> $OUT/summary.txt
cat $OUT/summary.txt $OUT/field-cost-idle.md $OUT/field-cost-busy.md
