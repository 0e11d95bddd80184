#!/bin/bash
# Device call: run(command="bash .carry_c3.sh", carry=[".whl"], kind="nvidia-h200-x2", timeout_s=600).
# Session 15, call 3 (issue 15): prq_int4 study 42 frames, simultaneous swapped pairs on GPUs 0,1:
# an A/A test: untraced beside twin (the same untraced rollout under another name), the pairs' own noise.
# Each process on its own half of the cores; rows kept as they come.
set -u
T0=$(date +%s)
R=$OUT/r; mkdir -p "$R"
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$R/steps.log"; }
if [ ! -f /tmp/site/.done ]; then
  rm -rf /tmp/site; pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /tmp/pip.log 2>&1 && touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
{ date -u; nvidia-smi -L; nproc; lscpu | grep -i "model name\|NUMA\|socket\|thread\|MHz"; nvidia-smi topo -m; } > "$R/env.txt" 2>&1
python3 -c "from tracers import native; native.load(cuda=True)" >> "$R/steps.log" 2>&1
log "built"
N=$(nproc); H=$(( N / 2 ))
PINS="0-$((H-1))/$H-$((N-1))"
log "cores $N, pins $PINS"
LEFT=$(( 575 - ($(date +%s) - T0) ))
PAIR_GPUS=0,1 PAIR_PINS=$PINS PAIR_MODES=untraced,twin PAIRS_S=$LEFT OUT=$R KVTMP=/tmp/kv3 \
  bash benchmarks/gpu_session.sh pairs:prq_int4:42:3 2>&1 | grep -v "sync_debug\|Synchronization debug" >> $R/steps.log
log "pairs done"
cd "$OUT" && tar czf r.tgz r && rm -rf r
