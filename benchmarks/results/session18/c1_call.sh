#!/bin/bash
# Device call: run(command="bash .carry_c1.sh", carry=[".whl"], kind="nvidia-h200-x4", timeout_s=590).
# Session 18, call 1 (issue 15), four H200: prq_int4 study 42 f, untraced / kvprof / untraced / kvprof at once (two
# pairs a round, benchmarks/gang.py with a repeated mode), one a GPU and 16 cores, rotated round by round, as many
# rounds as fit; untraced's two copies in the same round give the noise floor. Default kvprof (native sampler, drains
# every 10 s). Rows straight under $OUT.
set -u
T0=$(date +%s)
R=$OUT; LIMIT=${LIMIT:-565}
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$R/steps.log"; }
if [ ! -f /tmp/site/.done ]; then
  rm -rf /tmp/site; pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /tmp/pip.log 2>&1 && touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
{ date -u; git log --oneline -1; nvidia-smi -L; nproc; lscpu | grep -i "model name\|NUMA\|Thread\|Core\|L3\|MHz"; cat /sys/devices/system/clocksource/clocksource0/current_clocksource; nvidia-smi topo -m; } > "$R/env.txt" 2>&1
python3 -c "from tracers import native; native.load(cuda=True)" >> "$R/steps.log" 2>&1
log "built"
LEFT=$(( LIMIT - ($(date +%s) - T0) ))
log "gang gets ${LEFT}s"
GANG_GPUS=0,1,2,3 GANG_PINS=0-15/16-31/32-47/48-63 GANG_MODES=untraced,kvprof,untraced,kvprof GANG_S=$LEFT \
  OUT=$R KVTMP=/tmp/kv1 bash benchmarks/gpu_session.sh gang:prq_int4:42:4 2>&1 | grep -v "sync_debug\|Synchronization debug" >> $R/steps.log
log "gang done"
