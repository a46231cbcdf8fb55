"""H200 proof workload: baseline, hold 100 GiB idle, compute, idle with memory held, free.

Prints one line per phase start: "<unix time> <phase>".
"""
import os
import time

import torch

# WORKLOAD_SHORT=1: shorter phases (the second, aligned run)
S = 0.5 if os.environ.get("WORKLOAD_SHORT") else 1.0


def mark(phase):
    print(f"{time.time():.3f} {phase}", flush=True)


mark("baseline")
torch.cuda.init()
time.sleep(8 * S)
held = torch.empty(100 * 2**30, dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
mark("alloc_idle")
time.sleep(20 * S)
a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
torch.cuda.synchronize()
mark("compute")
end = time.time() + 20 * (0.75 if S < 1 else 1)
n = 0
while time.time() < end:
    for _ in range(20):
        c = a @ b
    torch.cuda.synchronize()
    n += 20
mark("idle_held")
print(f"# matmuls {n}", flush=True)
time.sleep(6 * S)
del held, a, b, c
torch.cuda.empty_cache()
torch.cuda.synchronize()
mark("freed")
time.sleep(8 * S)
mark("end")
