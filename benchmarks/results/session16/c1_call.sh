#!/bin/bash
# Device call: run(command="bash .carry_c1.sh", carry=[".whl"], kind="nvidia-h200", timeout_s=420).
# Session 16, call 1 (issue 15), one H200: c10's floor (tracker_floor.py), one stage's cost part by part and beside a
# thread that wants the GIL, boundary calls with the GIL held vs released (stage_cost.py --contend), then one traced
# prq_int4 study rollout at 21 frames (as session 15's call 4) for the in-process self-measurements.
set -u
T0=$(date +%s)
R=$OUT/r; mkdir -p "$R"
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$R/steps.log"; }
if [ ! -f /tmp/site/.done ]; then
  rm -rf /tmp/site; pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /tmp/pip.log 2>&1 && touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
{ date -u; git log --oneline -1 2>/dev/null; nvidia-smi -L; nproc; lscpu | grep -i "model name\|MHz"; } > "$R/env.txt" 2>&1
python3 -c "from tracers import native; native.load(cuda=True)" >> "$R/steps.log" 2>&1
log "built"
timeout 90 python3 benchmarks/tracker_floor.py > "$R/floor.json" 2> "$R/floor.err"
log "floor rc $?"
timeout 120 python3 benchmarks/stage_cost.py --device cuda --stages 20000 --contend --deep 100000 > "$R/stage_cost.json" 2> "$R/stage_cost.err"
log "stage_cost rc $?"
timeout 150 python3 -m kvprof.cli trace --method prq_int4 --frames 21 --no-decode --out /tmp/kv1 --run-id prq21 > "$R/trace.txt" 2>&1
log "trace rc $?"
D=$(dirname $(ls /tmp/kv1/*/meta.json /tmp/kv1/meta.json 2>/dev/null | head -1)); python3 -m kvprof.cli summary "$D" > "$R/summary.txt" 2>&1
cp "$D/meta.json" "$R/" 2>/dev/null
log "done"
cd "$OUT" && tar czf r.tgz r && rm -rf r
