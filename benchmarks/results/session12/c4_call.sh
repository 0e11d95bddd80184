#!/bin/bash
# Device call: run(command="bash .carry_c4.sh", carry=[".whl"], kind="nvidia-h100-x4", timeout_s=300).
# Session 12, call 4 (issue 15): two more series of prq_int4 42 f pairs, untraced vs kvprof, at once (the budget left)
# (what is left of the device budget: two pairs a series).
set -u
T0=$(date +%s)
R=$OUT/r; mkdir -p "$R"
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$R/steps.log"; }
if [ ! -f /tmp/site/.done ]; then
  rm -rf /tmp/site; pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /tmp/pip.log 2>&1 && touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
{ date -u; nvidia-smi -L; nproc; lscpu | grep -i "model name\|NUMA\|socket\|thread"; } > "$R/env.txt" 2>&1
python3 -c "from tracers import native; native.load(cuda=True)" >> "$R/steps.log" 2>&1
log "built"
LEFT=$(( 283 - ($(date +%s) - T0) ))
PAIR_GPUS=0,1+2,3 PAIR_PINS=0-15/16-31+32-47/48-63 PAIRS_S=$LEFT \
  OUT=$R KVTMP=/tmp/kv4 bash benchmarks/gpu_session.sh pairs:prq_int4:42:2 2>&1 | grep -v "sync_debug\|Synchronization debug" >> $R/steps.log
log "pairs done"
cd "$OUT" && tar czf r.tgz r && rm -rf r
