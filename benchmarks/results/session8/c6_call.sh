#!/bin/bash
# Session 8, call 6 (issue 15): a third fresh-process prq_int4 study 42 f pair (benchmarks/overhead.py), then the traced
# one opened (open_speed.py: close step, summary, diagnose, report md, TUI); bf16 study at 126 frames --rolling 21
# traced and opened.
# Device call: run(command="bash .carry_c6.sh", carry=[".whl"], kind="nvidia-h100-x1").
set -u
T0=$(date +%s)
R=$OUT/r; mkdir -p "$R"
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$R/steps.log"; }
if [ ! -f /tmp/site/.done ]; then
  rm -rf /tmp/site; pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > "$R/pip.log" 2>&1 && touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site:$PWD
{ date -u; nvidia-smi -L; nproc; lscpu | grep -i "model name"; } > "$R/env.txt" 2>&1
python3 -c "from tracers import native; native.load(cuda=True); print('built')" >> "$R/steps.log" 2>&1
log "prq_int4 study 42 f: one pair (kvprof first)"
timeout 420 python3 benchmarks/overhead.py --method prq_int4 --frames 42 --no-decode --repeat 1 --modes kvprof,untraced \
  --out /tmp/kv/ovh6 > "$R/ovh_prq_int4.json" 2>"$R/ovh_prq_int4.err"
T=$(python3 -c "import json,sys; print(next(r['path'] for r in json.load(open(sys.argv[1]))['rows'] if r['mode']=='kvprof'))" "$R/ovh_prq_int4.json" 2>/dev/null)
log "open $T"
[ -n "$T" ] && timeout 100 python3 benchmarks/open_speed.py --trace "$T" --repeat 1 > "$R/open_prq_int4-study-42.txt" 2>>"$R/steps.log"
log "bf16 study 126 f"
OUT=$R LONG_S=150 timeout -k 5 $(( 585 - ($(date +%s) - T0) )) bash benchmarks/gpu_session.sh long:bf16:study:126
log "done"
cd "$OUT" && tar czf r.tgz r && rm -rf r
