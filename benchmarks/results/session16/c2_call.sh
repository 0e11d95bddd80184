#!/bin/bash
# Device call: run(command="bash .carry_c2.sh", carry=[".whl"], kind="nvidia-h200-x2", timeout_s=600).
# Session 16, call 2 (issue 15), two H200: tracker_floor.py on GPU 0 with the recorder's write prefetch (this tree)
# and without it (alloc_events.cpp of c813590, .carry_old_alloc_events.cpp), alternated twice; then simultaneous
# swapped pairs of prq_int4 study 42 f untraced / kvprof on GPUs 0,1 (boundary calls now keep the GIL).
set -u
T0=$(date +%s)
R=$OUT/r; mkdir -p "$R"
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$R/steps.log"; }
if [ ! -f /tmp/site/.done ]; then
  rm -rf /tmp/site; pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /tmp/pip.log 2>&1 && touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
{ date -u; nvidia-smi -L; nproc; lscpu | grep -i "model name\|NUMA\|MHz"; } > "$R/env.txt" 2>&1
python3 -c "from tracers import native; native.load(cuda=True)" >> "$R/steps.log" 2>&1
rm -rf /tmp/old && mkdir -p /tmp/old/benchmarks && cp -r tracers /tmp/old/ && cp benchmarks/tracker_floor.py /tmp/old/benchmarks/ \
  && cp .carry_old_alloc_events.cpp /tmp/old/tracers/native/alloc_events.cpp
(cd /tmp/old && PYTHONPATH=/tmp/site:/tmp/old python3 -c "from tracers import native; native.load(cuda=True)") >> "$R/steps.log" 2>&1
log "built both"
for i in 1 2; do
  CUDA_VISIBLE_DEVICES=0 timeout 60 python3 benchmarks/tracker_floor.py --rounds 11 > "$R/floor_new_$i.json" 2>> "$R/floor.err"
  (cd /tmp/old && CUDA_VISIBLE_DEVICES=0 PYTHONPATH=/tmp/site:/tmp/old timeout 60 python3 benchmarks/tracker_floor.py --rounds 11) > "$R/floor_old_$i.json" 2>> "$R/floor.err"
  log "floor round $i"
done
N=$(nproc); H=$(( N / 2 ))
PINS="0-$((H-1))/$H-$((N-1))"
LEFT=$(( 575 - ($(date +%s) - T0) ))
log "cores $N, pins $PINS, pairs get ${LEFT}s"
PAIR_GPUS=0,1 PAIR_PINS=$PINS PAIR_MODES=untraced,kvprof PAIRS_S=$LEFT OUT=$R KVTMP=/tmp/kv2 \
  bash benchmarks/gpu_session.sh pairs:prq_int4:42:3 2>&1 | grep -v "sync_debug\|Synchronization debug" >> $R/steps.log
log "pairs done"
cd "$OUT" && tar czf r.tgz r && rm -rf r
