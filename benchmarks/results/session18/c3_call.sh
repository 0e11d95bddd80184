#!/bin/bash
# Device call: run(command="bash .carry_c3.sh", carry=[".whl"], kind="nvidia-h200-x4", timeout_s=590).
# Session 18, call 3 (issue 15), four H200: as call 1 (prq_int4 study 42 f, untraced / kvprof / untraced / kvprof, two
# pairs a round), at 534b9b6 (drains ready the next buffer), each process on 8 cores of the first 32 (0-7/8-15/16-23/24-31:
# no two slots on vCPUs i and i+32, which a host may run as one core's two threads; call 1 used 16 each of all 64).
# Untraced's two copies give the same-moment noise floor. Rows straight under $OUT.
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
GANG_GPUS=0,1,2,3 GANG_PINS=0-7/8-15/16-23/24-31 GANG_MODES=untraced,kvprof,untraced,kvprof GANG_S=$LEFT \
  OUT=$R KVTMP=/tmp/kv3 bash benchmarks/gpu_session.sh gang:prq_int4:42:4 2>&1 | grep -v "sync_debug\|Synchronization debug" >> $R/steps.log
log "gang done"
