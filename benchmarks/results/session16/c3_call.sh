#!/bin/bash
# Device call: run(command="bash .carry_c3.sh", carry=[".whl", ".carry_old"], kind="nvidia-h200-x2", timeout_s=600).
# Session 16, call 3 (issue 15), two H200: an A/B of two traced trees side by side. Call 2's pairs read 1.196 and
# 1.190 (kvprof over untraced), worse than any of session 15's. Is it the code since session 15's call 2 (e29ad9b,
# pairs 0.996 median), or the machine? Each pair: `overhead.py --mode kvprof` of this tree (new: boundary calls keep
# the GIL, write prefetch, the sampler and drain-lock changes) and of e29ad9b (.carry_old) at once, prq_int4 study
# 42 f, each on its own GPU and 16 cores, GPUs swapped pair by pair.
set -u
T0=$(date +%s)
R=$OUT/r; mkdir -p "$R"
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$R/steps.log"; }
if [ ! -f /tmp/site/.done ]; then
  rm -rf /tmp/site; pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /tmp/pip.log 2>&1 && touch /tmp/site/.done
fi
NEW=$PWD OLD=$PWD/.carry_old
{ date -u; nvidia-smi -L; nproc; lscpu | grep -i "model name\|NUMA\|MHz"; cat /sys/devices/system/clocksource/clocksource0/current_clocksource; } > "$R/env.txt" 2>&1
PYTHONPATH=/tmp/site:$NEW python3 -c "from tracers import native; native.load(cuda=True)" >> "$R/steps.log" 2>&1
(cd $OLD && PYTHONPATH=/tmp/site:$OLD python3 -c "from tracers import native; native.load(cuda=True)") >> "$R/steps.log" 2>&1
log "built both"
for p in 0 1 2; do
  LEFT=$(( 560 - ($(date +%s) - T0) ))
  [ $LEFT -lt 165 ] && { log "pair $p skipped: ${LEFT}s left"; break; }
  if [ $((p % 2)) = 0 ]; then GN=0; GO=1; else GN=1; GO=0; fi
  (cd $NEW && CUDA_VISIBLE_DEVICES=$GN PYTHONPATH=/tmp/site:$NEW timeout $LEFT taskset -c $((GN*16))-$((GN*16+15)) \
    python3 benchmarks/overhead.py --mode kvprof --method prq_int4 --frames 42 --no-decode --out /tmp/kvn$p) > "$R/new_$p.json" 2>> "$R/new.err" &
  (cd $OLD && CUDA_VISIBLE_DEVICES=$GO PYTHONPATH=/tmp/site:$OLD timeout $LEFT taskset -c $((GO*16))-$((GO*16+15)) \
    python3 benchmarks/overhead.py --mode kvprof --method prq_int4 --frames 42 --no-decode --out /tmp/kvo$p) > "$R/old_$p.json" 2>> "$R/old.err" &
  wait
  rm -rf /tmp/kvn$p /tmp/kvo$p
  log "pair $p done (new GPU $GN)"
done
grep -v "sync_debug\|Synchronization debug" "$R/new.err" | tail -5 > "$R/errs.txt"; grep -v "sync_debug\|Synchronization debug" "$R/old.err" | tail -5 >> "$R/errs.txt"; rm -f "$R/new.err" "$R/old.err"
cd "$OUT" && tar czf r.tgz r && rm -rf r
