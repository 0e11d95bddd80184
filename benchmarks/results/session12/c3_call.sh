#!/bin/bash
# Device call: run(command="bash .carry_c3.sh", carry=[".whl"], kind="nvidia-h100-x4", timeout_s=600).
# Session 12, call 3 (issue 15): does the drain thread's work beside the model's thread make the traced prq_int4
# rollout slower? Two series at once, each GPU's runs on its own 16 cores: GPUs 0,1 untraced vs kvprof:nodrain (the
# recorder drained once, at the end), GPUs 2,3 untraced vs kvprof; pairs swapped, rows kept as they come.
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
LEFT=$(( 580 - ($(date +%s) - T0) ))
PAIR_GPUS=0,1+2,3 PAIR_PINS=0-15/16-31+32-47/48-63 PAIR_MODES=untraced,kvprof:nodrain+untraced,kvprof PAIRS_S=$LEFT \
  OUT=$R KVTMP=/tmp/kv3 bash benchmarks/gpu_session.sh pairs:prq_int4:42:3 2>&1 | grep -v "sync_debug\|Synchronization debug" >> $R/steps.log
log "pairs done"
cd "$OUT" && tar czf r.tgz r && rm -rf r
