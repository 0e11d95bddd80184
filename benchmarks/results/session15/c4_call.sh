#!/bin/bash
# Device call: run(command="bash .carry_c4.sh", carry=[".whl"], kind="nvidia-h200", timeout_s=200).
# Session 15, call 4 (issue 15), the budget's last ~280 s: one traced prq_int4 study rollout at 21 frames on one H200,
# to see the new self-measurements on a GPU (meta scopes.stages_s/tags_s, allocator_layout.drain_phases, and the
# "kvprof's own cost" line of `kvprof summary`). No pair: a check of the fields, not a ratio.
set -u
T0=$(date +%s)
R=$OUT/r; mkdir -p "$R"
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$R/steps.log"; }
if [ ! -f /tmp/site/.done ]; then
  rm -rf /tmp/site; pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /tmp/pip.log 2>&1 && touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
{ date -u; nvidia-smi -L; nproc; } > "$R/env.txt" 2>&1
python3 -c "from tracers import native; native.load(cuda=True)" >> "$R/steps.log" 2>&1
log "built"
timeout 150 python3 -m kvprof.cli trace --method prq_int4 --frames 21 --no-decode --out /tmp/kv4 --run-id prq21 > "$R/trace.txt" 2>&1
log "trace rc $?"
D=$(dirname $(ls /tmp/kv4/*/meta.json /tmp/kv4/meta.json 2>/dev/null | head -1)); python3 -m kvprof.cli summary "$D" > "$R/summary.txt" 2>&1
cp "$D/meta.json" "$R/" 2>/dev/null
log "done"
cd "$OUT" && tar czf r.tgz r && rm -rf r
