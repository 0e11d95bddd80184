#!/bin/bash
# Device call: run(command="bash .carry_c2.sh", carry=[".whl"], kind="nvidia-h200-x2", timeout_s=600).
# Session 17, call 2 (issue 15), two H200 (no 4-GPU machine was lent): (1) the native NVML sampler on a GPU, under
# CUDA_VISIBLE_DEVICES=1 (its samples must be GPU 1's: 1 GiB held there); (2) prq_int4 study 42 f: untraced / kvprof
# (native sampler) at once, one a GPU and 16 cores, swapped round by round (benchmarks/gang.py), as many rounds as fit.
# Rows straight under $OUT.
set -u
T0=$(date +%s)
R=$OUT; LIMIT=${LIMIT:-585}
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$R/steps.log"; }
if [ ! -f /tmp/site/.done ]; then
  rm -rf /tmp/site; pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /tmp/pip.log 2>&1 && touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
{ date -u; git log --oneline -1; nvidia-smi -L; nproc; lscpu | grep -i "model name\|NUMA\|Thread\|Core\|L3"; cat /sys/devices/system/clocksource/clocksource0/current_clocksource; } > "$R/env.txt" 2>&1
python3 -c "from tracers import native; native.load(cuda=True)" >> "$R/steps.log" 2>&1
log "built; sampler check"
CUDA_VISIBLE_DEVICES=1 timeout 60 python3 - > "$R/sampler_check.txt" 2>&1 <<'P'
import time, torch, pynvml
from tracers import native
from tracers.sampler import DeviceSampler, nvml_uuid
x = torch.empty(2**30, dtype=torch.uint8, device="cuda"); torch.cuda.synchronize()
got = []
u = nvml_uuid(0)
s = DeviceSampler(0, got.append, 0.05, uuid=u, native=native.load(True))
s.start(time.perf_counter_ns()); time.sleep(1.0); s.collect(); time.sleep(0.3); s.stop()
pynvml.nvmlInit()
by_index0 = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used
by_index1 = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(1)).used
print({"uuid": u, "native": s.native, "reason": s.reason, "samples": len(got), "first": got[:2], "last": got[-1:],
       "nvml_index0_used": by_index0, "nvml_index1_used": by_index1})
P
log "sampler check: $(tail -c 700 $R/sampler_check.txt)"
LEFT=$(( LIMIT - ($(date +%s) - T0) ))
log "gang gets ${LEFT}s"
GANG_GPUS=0,1 GANG_PINS=0-15/16-31 GANG_MODES=untraced,kvprof GANG_S=$LEFT \
  OUT=$R KVTMP=/tmp/kv2 bash benchmarks/gpu_session.sh gang:prq_int4:42:4 2>&1 | grep -v "sync_debug\|Synchronization debug" >> $R/steps.log
log "gang done"
