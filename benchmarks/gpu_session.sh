#!/usr/bin/env bash
# The GPU runs of benchmarks/RESULTS.md, in steps that fit one `device` call (<= 10 minutes) each.
#
#   bash benchmarks/gpu_session.sh STEP [STEP...]     (on the device machine, from the repo root)
#
# Steps: core (issue 2 bf16 traced vs untraced, issue 5 LPIPS), held-before (blocks an earlier
# trace of the process left), budget (issue 6 budget + diagnose), host (issue 8 py-spy host
# profiles), study:M1,M2,... and staged:M1,M2,... (issue 3 sweeps), upstream and plugin (issue 18:
# upstream Self-Forcing instrumented, the example plugin method), notes (each trace's meta notes),
# render (issue 7 PNGs of every trace written so far, skipping PNGs already rendered;
# RENDER_ARGS=--pngs-only leaves out the comparison pages), pack (tar what render wrote). LANES=N
# runs a sweep as N processes sharing the GPU (bytes stay exact, times include the other lanes'
# load; see benchmarks/sweep.py).
# Results go to $OUT (the device tool brings back at most 8 files). Wheels for what the device
# image lacks are carried in .whl/ (see NEXT_GPU_SESSION.md); installed into a fresh /tmp/site.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/kv
if [ ! -f /tmp/site/.done ]; then
  rm -rf /tmp/site
  pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > "$OUT/pip.log" 2>&1 && touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
KV="python3 -m kvprof.cli"
T0=$(date +%s)
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/steps.log"; }

for step in "$@"; do
  case "$step" in
    core)
      log "env"
      { nvidia-smi -L; python3 -c "import torch, sys; print(sys.version); print(torch.__version__, torch.version.cuda)"; } > "$OUT/env.txt" 2>&1
      python3 benchmarks/probe_allocator.py --counters > "$OUT/counters_cost.json" 2>>"$OUT/steps.log"
      log "issue 2: bf16 traced vs untraced"
      timeout 300 python3 benchmarks/traced_vs_untraced.py --method bf16 --repeat 2 --out /tmp/kv/tvu > "$OUT/bf16_traced_vs_untraced.json" 2>>"$OUT/steps.log"
      log "issue 5: lpips vs official"
      timeout 120 python3 benchmarks/lpips_vs_official.py --device cuda --out "$OUT/lpips_vs_official_cuda.json" >> "$OUT/steps.log" 2>&1
      ;;
    budget)
      log "issue 6: budget 20GiB, bf16 then prq_int4 (study)"
      timeout 120 $KV trace --method bf16 --budget 20GiB --out /tmp/kv/budget --run-id bf16-budget --json > "$OUT/budget_bf16.json" 2>>"$OUT/steps.log"
      timeout 420 $KV trace --method prq_int4 --budget 20GiB --out /tmp/kv/budget --run-id prq_int4-budget --json > "$OUT/budget_prq_int4.json" 2>>"$OUT/steps.log"
      $KV diagnose /tmp/kv/budget/prq_int4-budget --baseline /tmp/kv/budget/bf16-budget > "$OUT/budget_diagnose.txt" 2>&1
      ;;
    host)
      for m in quarot_kv_int4 flowcache_soft_prune_int4; do
        log "issue 8: host profile $m"
        timeout 240 $KV trace --method "$m" --host-profile --out /tmp/kv/host --run-id "$m-host" --json > "$OUT/host_$m.json" 2>>"$OUT/steps.log"
      done
      ;;
    study:*|staged:*)
      integ=${step%%:*}; methods=${step#*:}
      log "issue 3: $integ sweep $methods"
      timeout 560 python3 benchmarks/sweep.py --integration "$integ" --methods "$methods" --deadline "${DEADLINE:-500}" \
        --lanes "${LANES:-1}" --costs benchmarks/results/sweep_*_h100*.jsonl \
        --out "/tmp/kv/sweep" >> "$OUT/sweep_$integ.jsonl" 2>>"$OUT/steps.log"
      ;;
    render)
      log "issue 7: render"
      timeout "${RENDER_S:-200}" python3 benchmarks/render_sweep_report.py /tmp/kv/sweep /tmp/kv/budget /tmp/kv/tvu /tmp/kv/host \
        --out /tmp/kv/report --skip-existing ${RENDER_ARGS:-} >> "$OUT/steps.log" 2>&1
      ;;
    held-before)
      # Blocks an earlier trace of the process leaves allocated: held by the next trace as "live
      # before tracing" (--keep-caches), or freed before it (the sweep's default).
      log "held-before: two traces per process, caches released vs kept"
      for mode in release keep; do
        flag=; [ $mode = keep ] && flag=--keep-caches
        timeout 200 python3 benchmarks/sweep.py --integration staged --methods rtn_int2,flowcache_prune_int2 $flag \
          --out /tmp/kv/$mode > "$OUT/held_before_$mode.jsonl" 2>>"$OUT/steps.log"
      done
      python3 -c "
import pathlib
from kvprof.trace import load_trace
for f in sorted(pathlib.Path('/tmp/kv').glob('*/*/meta.json')):
    t = load_trace(f.parent); m = t.meta; a = t.allocations
    lb = a[a['name'] == 'live before tracing']
    print(f.parent.parent.name, f.parent.name, 'allocated_before', m.get('allocated_before_bytes'),
          'held_before', m.get('held_before_bytes'), 'max_alloc', m.get('max_memory_allocated_bytes'),
          'unregistered', len(lb), int(lb['bytes'].sum()), sorted(lb['bytes'].tolist())[:8], 'freed', int((lb['q_free'] != -1).sum()))
" > "$OUT/held_before.txt" 2>>"$OUT/steps.log"
      ;;
    upstream)
      # Issue 18: upstream Self-Forcing's own pipeline (carried, never committed: UPSTREAM=its folder;
      # needs the einops wheel in .whl) traced with `instrument` alone, directly and through `kvprof run`.
      R=${UPSTREAM:-.upstream/Self-Forcing}
      log "issue 18: upstream pipeline, instrument(pipeline) in the script"
      timeout 400 python3 benchmarks/self_forcing_upstream.py "$R" /tmp/kv/upstream/direct > "$OUT/upstream.txt" 2>>"$OUT/steps.log"
      log "issue 18: the same through kvprof run --instrument self-forcing"
      PYTHONPATH=$PYTHONPATH:$PWD/benchmarks timeout 400 $KV run --instrument self-forcing --out /tmp/kv/upstream --run-id via-run \
        -- python3 benchmarks/self_forcing_upstream.py "$R" >> "$OUT/upstream.txt" 2>>"$OUT/steps.log"
      python3 -c "
from kvprof.trace import load_trace
for name in ('direct', 'via-run'):
    t = load_trace('/tmp/kv/upstream/' + name); s = t.summary; p = s['peak']; a = t.allocations
    kv = a[a['name'].astype(str).str.match(r'layer \d+ / [kv]$')]; cross = a[a['name'].astype(str).str.startswith('cross_')]
    print(name, 'peak', p['bytes'], 'max_memory_allocated', t.meta.get('max_memory_allocated_bytes'), 'stage', p['stage'])
    print('  at peak', p['by_category'])
    print('  kv_fp blocks', int(kv['bytes'].sum()), 'cross_kv blocks live at end', int(cross.loc[cross['q_free'] == -1, 'bytes'].sum()))
    print('  stages', {r['stage']: r['count'] for r in s['stage_times']}, 'reconciliation', s.get('reconciliation'))
" >> "$OUT/upstream.txt" 2>>"$OUT/steps.log"
      $KV diagnose /tmp/kv/upstream/direct >> "$OUT/upstream.txt" 2>&1
      ;;
    plugin)
      # Issue 18: the example plugin method (examples/my_method.py) at full size, study and staged, against bf16.
      P=examples.my_method:TokenInt4Sink
      for integ in study staged; do
        log "issue 18: plugin $P under $integ"
        timeout 280 $KV trace --method "$P" --integration $integ --out /tmp/kv/plugin --run-id "plugin-$integ" --json \
          > "$OUT/plugin_$integ.json" 2>>"$OUT/steps.log"
      done
      [ -d /tmp/kv/plugin/bf16 ] || timeout 120 $KV trace --method bf16 --out /tmp/kv/plugin --run-id bf16 --quiet > /dev/null 2>>"$OUT/steps.log"
      for integ in study staged; do
        $KV diagnose /tmp/kv/plugin/plugin-$integ --baseline /tmp/kv/plugin/bf16 >> "$OUT/plugin_diagnose.txt" 2>&1
      done
      ;;
    notes)
      # Each trace's meta notes and the other GPU processes NVML saw (confirms the "GPU shared" note).
      python3 -c "
import json, pathlib
for m in sorted(pathlib.Path('/tmp/kv').glob('*/*/meta.json')):
    d = json.loads(m.read_text())
    print(m.parent.name, d.get('other_gpu_processes_max'), d.get('notes'))
" > "$OUT/notes.txt" 2>>"$OUT/steps.log"
      ;;
    pack)
      # The HTML apart: the tool brings back files of at most 16 MiB each.
      tar -czf "$OUT/report.tgz" --exclude=sweep.html -C /tmp/kv report 2>>"$OUT/steps.log"
      [ -f /tmp/kv/report/sweep.html ] && gzip -c /tmp/kv/report/sweep.html > "$OUT/sweep.html.gz"
      ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
log "all done"
