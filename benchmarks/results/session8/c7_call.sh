#!/bin/bash
# Session 8, call 7 (issue 15 diagnosis): prq_int4 study 12 f, one process, parts that switch off one piece each,
# wall and model-thread CPU seconds (overhead_parts.py), each round starting one part later.
# Device call: run(command="bash .carry_c7.sh", carry=[".whl"], kind="nvidia-h100-x1").
set -u
T0=$(date +%s)
R=$OUT/r; mkdir -p "$R"
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$R/steps.log"; }
if [ ! -f /tmp/site/.done ]; then
  rm -rf /tmp/site; pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > "$R/pip.log" 2>&1 && touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site:$PWD
{ date -u; nvidia-smi -L; nproc; lscpu | grep -i "model name"; } > "$R/env.txt" 2>&1
log "parts: untraced,nostages,notags,kvprof,notimer, 3 rotated rounds"
timeout 330 python3 benchmarks/overhead_parts.py --method prq_int4 --frames 12 --repeat 3 \
  --parts untraced,nostages,notags,kvprof,notimer > "$R/parts.json" 2>>"$R/steps.log"
log "done"
cd "$OUT" && tar czf r.tgz r && rm -rf r
