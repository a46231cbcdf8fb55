#!/bin/bash
# Third H200 run: per-query and per-tick cost after caching the maximum clocks, and the daemon's
# CPU with only two scrapes (so serving /metrics is not counted), idle then under load.
set -u
D=.devcarry
OUT=${OUT:-/tmp/gpu-out3}; mkdir -p "$OUT"
LIB=/usr/local/nvidia/lib64/libnvidia-ml.so.1
chmod +x $D/vllm-sentinel $D/nvml_cost
$D/nvml_cost $LIB > $OUT/field-cost.md 2>&1
printf '[gpu]\npcie_throughput = true\n' > /tmp/pcie.toml
$D/vllm-sentinel serve --listen 127.0.0.1:9471 --nvml-library $LIB > /tmp/d1.log 2>&1 &
P1=$!
$D/vllm-sentinel serve --listen 127.0.0.1:9472 --nvml-library $LIB --config /tmp/pcie.toml > /tmp/d2.log 2>&1 &
P2=$!
for i in $(seq 1 50); do curl -sf 127.0.0.1:9471/readyz >/dev/null && curl -sf 127.0.0.1:9472/readyz >/dev/null && break; sleep 0.2; done
sleep 2
pct() { python3 -c "print(f'{($2-$1)/($4-$3)*100:.3f}')"; }
cpu() { curl -s 127.0.0.1:$1/metrics | awk '/^process_cpu_seconds_total/ {print $2}'; }
{
a0=$(cpu 9471); b0=$(cpu 9472); t0=$(date +%s.%N)
sleep 30
a1=$(cpu 9471); b1=$(cpu 9472); t1=$(date +%s.%N)
echo "idle GPU: default daemon cpu=$(pct $a0 $a1 $t0 $t1)% pcie daemon cpu=$(pct $b0 $b1 $t0 $t1)% of one core over 30 s"
python3 -c "
import torch,time
a=torch.randn(8192,8192,dtype=torch.bfloat16,device='cuda');b=torch.randn_like(a)
for _ in range(3): a@b
torch.cuda.synchronize(); print('go', flush=True)
end=time.time()+32
while time.time()<end:
  for _ in range(20): c=a@b
  torch.cuda.synchronize()
" > /tmp/w.log 2>&1 &
W=$!
for i in $(seq 1 300); do grep -q go /tmp/w.log && break; sleep 0.1; done
a0=$(cpu 9471); b0=$(cpu 9472); t0=$(date +%s.%N)
sleep 30
a1=$(cpu 9471); b1=$(cpu 9472); t1=$(date +%s.%N)
echo "busy GPU (bf16 matmuls): default daemon cpu=$(pct $a0 $a1 $t0 $t1)% pcie daemon cpu=$(pct $b0 $b1 $t0 $t1)% of one core over 30 s"
wait $W
curl -s 127.0.0.1:9471/metrics | grep -E '^(vllm_sentinel_gpu_sample_duration|process_threads|process_resident)'
curl -s 127.0.0.1:9472/metrics | grep -E '^(vllm_sentinel_gpu_sample_duration|vllm_sentinel_gpu_pcie)'
} > $OUT/cpu.txt 2>&1
kill -INT $P1 $P2; wait $P1 $P2
cat $OUT/cpu.txt $OUT/field-cost.md
