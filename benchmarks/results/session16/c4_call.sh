#!/bin/bash
# Device call: run(command="bash .carry_c4.sh", carry=[".whl"], kind="nvidia-h200-x2", timeout_s=<budget left>).
# Session 16, call 4 (issue 15), two H200, the budget's last seconds: simultaneous swapped pairs of prq_int4 study
# 42 f, untraced / kvprof (this tree), as many as fit. Rows go straight under $OUT (no tar: a call cut by the budget
# still brings back the rows logged so far).
set -u
T0=$(date +%s)
R=$OUT; LIMIT=${LIMIT:-440}
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$R/steps.log"; }
if [ ! -f /tmp/site/.done ]; then
  rm -rf /tmp/site; pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /tmp/pip.log 2>&1 && touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
{ date -u; nvidia-smi -L; nproc; lscpu | grep -i "model name\|NUMA\|MHz"; cat /sys/devices/system/clocksource/clocksource0/current_clocksource; } > "$R/env.txt" 2>&1
python3 -c "from tracers import native; native.load(cuda=True)" >> "$R/steps.log" 2>&1
LEFT=$(( LIMIT - ($(date +%s) - T0) ))
log "built; pairs get ${LEFT}s"
PAIR_GPUS=0,1 PAIR_PINS=0-15/16-31 PAIR_MODES=untraced,kvprof PAIRS_S=$LEFT OUT=$R KVTMP=/tmp/kv4 \
  bash benchmarks/gpu_session.sh pairs:prq_int4:42:3 2>&1 | grep -v "sync_debug\|Synchronization debug" >> $R/steps.log
log "pairs done"
