#!/bin/bash
# Device call: run(command="bash .carry_c3.sh", carry=[".whl"], kind="nvidia-h200-x2", timeout_s=575).
# Session 17, call 3 (issue 15), two H200, the budget's last seconds: prq_int4 study 42 f, untraced / kvprof:drain10
# (the recorder drained every 10 s, not 2: fewer GIL hand-overs a rollout) at once, one a GPU and 16 cores, swapped
# round by round (benchmarks/gang.py), as many rounds as fit. Rows straight under $OUT.
set -u
T0=$(date +%s)
R=$OUT; LIMIT=${LIMIT:-550}
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$R/steps.log"; }
if [ ! -f /tmp/site/.done ]; then
  rm -rf /tmp/site; pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /tmp/pip.log 2>&1 && touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
{ date -u; git log --oneline -1; nvidia-smi -L; nproc; lscpu | grep -i "model name\|NUMA\|Thread\|Core\|L3"; cat /sys/devices/system/clocksource/clocksource0/current_clocksource; } > "$R/env.txt" 2>&1
python3 -c "from tracers import native; native.load(cuda=True)" >> "$R/steps.log" 2>&1
log "built"
LEFT=$(( LIMIT - ($(date +%s) - T0) ))
log "gang gets ${LEFT}s"
GANG_GPUS=0,1 GANG_PINS=0-15/16-31 GANG_MODES=untraced,kvprof:drain10 GANG_S=$LEFT \
  OUT=$R KVTMP=/tmp/kv3 bash benchmarks/gpu_session.sh gang:prq_int4:42:4 2>&1 | grep -v "sync_debug\|Synchronization debug" >> $R/steps.log
log "gang done"
