#!/bin/bash
# Device call: run(command="bash .carry_c1.sh", carry=[".whl"], kind="nvidia-h200-x4", timeout_s=600).
# Session 17, call 1 (issue 15), four H200: prq_int4 study 21 f, untraced / kvprof / kvprof:quiet (no kvprof thread
# beside the rollout) / kvprof:lean (nothing on the model's thread but the per-event record), all four at once, one a
# GPU and 16 cores, rotated round by round (benchmarks/gang.py), as many rounds as fit. Rows straight under $OUT.
set -u
T0=$(date +%s)
R=$OUT; LIMIT=${LIMIT:-560}
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$R/steps.log"; }
if [ ! -f /tmp/site/.done ]; then
  rm -rf /tmp/site; pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /tmp/pip.log 2>&1 && touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
{ date -u; git log --oneline -1; nvidia-smi -L; nproc; lscpu | grep -i "model name\|NUMA\|MHz\|Thread\|Core\|Socket\|L3"; cat /sys/devices/system/clocksource/clocksource0/current_clocksource; } > "$R/env.txt" 2>&1
python3 -c "from tracers import native; native.load(cuda=True)" >> "$R/steps.log" 2>&1
LEFT=$(( LIMIT - ($(date +%s) - T0) ))
log "built; gang gets ${LEFT}s"
GANG_GPUS=0,1,2,3 GANG_PINS=0-15/16-31/32-47/48-63 GANG_MODES=untraced,kvprof,kvprof:quiet,kvprof:lean GANG_S=$LEFT \
  OUT=$R KVTMP=/tmp/kv1 bash benchmarks/gpu_session.sh gang:prq_int4:21:12 2>&1 | grep -v "sync_debug\|Synchronization debug" >> $R/steps.log
log "gang done"
