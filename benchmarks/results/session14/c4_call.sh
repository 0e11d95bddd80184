#!/bin/bash
# Device call: run(command="bash .carry_c4.sh", carry=[".whl"], kind="nvidia-h200-x2", timeout_s=280).
# Session 14, call 4 (issue 15), the budget's last ~300 s: ONE simultaneous pair, prq_int4 study 42 frames, untraced /
# kvprof on the new streamed parts (3762d04: trace encodings + LZ4). What it can show: the new parts work on the
# device's pyarrow, the trace is still exact, and the drain thread's CPU ("other threads", 9.2-9.5 s in call 1).
# One pair cannot give the ratio a median. Rows written straight under $OUT (no tar) so a cut call keeps them.
set -u
T0=$(date +%s)
R=$OUT/r; mkdir -p "$R"
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$R/steps.log"; }
if [ ! -f /tmp/site/.done ]; then
  rm -rf /tmp/site; pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /tmp/pip.log 2>&1 && touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
{ date -u; nvidia-smi -L; nproc; python3 -c "import pyarrow; print('pyarrow', pyarrow.__version__)"; } > "$R/env.txt" 2>&1
python3 -c "from tracers import native; native.load(cuda=True)" >> "$R/steps.log" 2>&1
log "built"
PAIR_GPUS=0,1 PAIR_PINS=0-15/16-31 PAIR_MODES=untraced,kvprof PAIRS_S=$(( 250 - ($(date +%s) - T0) )) OUT=$R KVTMP=/tmp/kv4 \
  bash benchmarks/gpu_session.sh pairs:prq_int4:42:1 2>&1 | grep -v "sync_debug\|Synchronization debug" >> $R/steps.log
log "pair done"
ls /tmp/kv4/pairs01/*/ >> $R/steps.log 2>&1
