#!/usr/bin/env bash
# The GPU runs of benchmarks/RESULTS.md, in steps that fit one `device` call (<= 10 minutes) each.
#
#   bash benchmarks/gpu_session.sh STEP [STEP...]     (on the device machine, from the repo root)
#
# Steps: core (issue 2 bf16 traced vs untraced, issue 5 LPIPS), cost (issue 15: stage_cost and
# overhead_parts, ~6 min), long:METHOD:INTEGRATION:FRAMES (issue 15: a --rolling 21 trace, then
# open_speed on it; LONG_S caps the trace), budget (issue 6 budget + diagnose), host (issue 8 py-spy host
# profiles), study:M1,M2,... and staged:M1,M2,... (issue 3 sweeps, `kvprof sweep` on a local Dask
# cluster of one worker per GPU; WORKERS_PER_GPU=N puts N traces on each GPU: bytes stay exact,
# times include the others' load), sweep-1gpu and sweep-all (issue 17: all methods, staged, 42
# frames, on GPU 0 alone and on every GPU of the machine; each resumes where the last call
# stopped, so repeat the step until it says 'complete'; SWEEP_METHODS=M1,M2 for fewer), sweep-table (their tables and
# throughput), sweep-speedup (issue 17 in one call on one machine: the methods split in one list a GPU by earlier
# costs, a one-GPU sweep of each list on its GPU at once, then one sweep over every GPU longest first; then
# sweep_speedup.py compare; SWEEP_FLAGS="--no-decode" to fit 4 H100s in one call; SPEEDUP_ORDER=many-first), pairs:METHOD:FRAMES:N (issue
# 15: overhead.py, N traced runs each beside an untraced one on the other of GPUs 0 and 1; rows kept as they come;
# PIN_CPUS=A/B or auto keeps each GPU's runs on its own cores), perfpair:METHOD:FRAMES (issue 15: perf stat of each
# thread of an untraced and a traced process at once, mid-rollout; perf_threads.py reads them), spypair:METHOD:FRAMES
# (issue 15: py-spy on a traced and an untraced rollout at once; self_profile.py compare), gang:METHOD:FRAMES:ROUNDS
# (issue 15: several modes at once, one a GPU, rotated; GANG_GPUS, GANG_PINS, GANG_MODES, GANG_S), selfcost:METHOD:FRAMES
# (issue 15: one trace and its summary's own-cost line, meta kept), sweep-study (issue 19: the study column, every GPU, longest
# first; resumes like sweep-all), startup (a cell's start-up: imports, the VAE module, a trace process split in
# phases; ~70 s), notes (each trace's meta notes), render (issue 7 PNGs of every trace written so
# far, skipping PNGs already rendered; RENDER_ARGS=--pngs-only leaves out the comparison pages),
# pack (tar what render wrote).
# upstream and plugin (issue 18: upstream Self-Forcing instrumented, the example plugin method).
# bg:STEP runs STEP detached (it outlives the device call while the machine stays warm); collect, in a later call,
# waits for the detached steps and copies their outputs to $OUT/bg/.
# Results go to $OUT (the device tool brings back at most 8 files). Wheels for what the device
# image lacks are carried in .whl/ (see NEXT_GPU_SESSION.md); installed into a fresh /tmp/site.
set -u
OUT=${OUT:-/tmp/out}
KVTMP=${KVTMP:-/tmp/kv}  # where traces and sweeps go on the device (a test points it elsewhere)
mkdir -p "$OUT" "$KVTMP"
SITE=${SITE:-/tmp/site}  # the carried wheels, installed once a machine
if [ ! -f $SITE/.done ]; then
  rm -rf $SITE
  pip install -q --no-index --no-deps --target $SITE .whl/*.whl > "$OUT/pip.log" 2>&1 && touch $SITE/.done
fi
export PYTHONPATH=$SITE:$PWD PATH=$SITE/bin:$PATH
KV=${KV:-python3 -m kvprof.cli}  # a test may stand a fake in (tests/test_gpu_session.py)
# `kvprof sweep` into folder $1 (the matrix flags after it), resumed when the folder holds a sweep; a
# call stops (SIGINT: finished cells stay in the manifest) before the device call's 10 minutes.
# A machine can be given back between two calls (session 7): with SWEEP_STATE_DIR (a carried folder
# holding <sweep>.manifest.json from the last call's $OUT), a fresh machine resumes from that manifest
# (finished cells are not run again; their trace folders stay with the call that wrote them).
sweep() {
  local dir=$1; shift
  local saved="${SWEEP_STATE_DIR:-/nonexistent}/$(basename "$dir").manifest.json"
  if [ ! -f "$dir/manifest.json" ] && [ -f "$saved" ]; then
    mkdir -p "$dir" && cp "$saved" "$dir/manifest.json" && log "restored $dir/manifest.json from $saved (fresh machine)"
  fi
  local args=("$@"); [ -f "$dir/manifest.json" ] && args=(--resume)
  timeout -s INT -k 30 "${SWEEP_S:-520}" $KV sweep --out "$dir" "${args[@]}" --workers-per-gpu "${WORKERS_PER_GPU:-1}" \
    --quiet >> "$OUT/steps.log" 2>&1
  local rc=$?
  log "sweep $dir: exit $rc ($(python3 -c "import json,collections,sys; print(dict(collections.Counter(c['status'] for c in json.load(open(sys.argv[1]))['cells'])))" "$dir/manifest.json" 2>&1))"
}
T0=$(date +%s)
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/steps.log"; }

for step in "$@"; do
  case "$step" in
    core)
      log "env"
      { nvidia-smi -L; python3 -c "import torch, sys; print(sys.version); print(torch.__version__, torch.version.cuda)"; } > "$OUT/env.txt" 2>&1
      python3 benchmarks/probe_allocator.py --counters > "$OUT/counters_cost.json" 2>>"$OUT/steps.log"
      log "issue 2: bf16 traced vs untraced"
      timeout 560 python3 benchmarks/overhead.py --method bf16 --repeat 3 --out $KVTMP/tvu > "$OUT/bf16_overhead.json" 2>>"$OUT/steps.log"
      log "issue 5: lpips vs official"
      timeout 120 python3 benchmarks/lpips_vs_official.py --device cuda --out "$OUT/lpips_vs_official_cuda.json" >> "$OUT/steps.log" 2>&1
      ;;
    cost)
      log "issue 15: where the traced rollout's time goes (stage cost, parts of prq_int4 12 f and bf16 42 f)"
      timeout 90 python3 benchmarks/stage_cost.py --stages 20000 --deep 100000 > "$OUT/stage_cost.json" 2>>"$OUT/steps.log"
      timeout 260 python3 benchmarks/overhead_parts.py --method prq_int4 --frames 12 --repeat 2 \
        --parts untraced,tracker,drain,nostages,kvprof > "$OUT/parts_prq12.json" 2>>"$OUT/steps.log"
      timeout 150 python3 benchmarks/overhead_parts.py --method bf16 --frames 42 --repeat 3 \
        --parts untraced,tracker,kvprof > "$OUT/parts_bf16_42.json" 2>>"$OUT/steps.log"
      ;;
    selfcost:*)  # selfcost:METHOD:FRAMES (issue 15): one traced rollout and its `kvprof summary`, for what the trace measured
      # of kvprof's own cost in place (scopes and their device-time marks, drains, the record path); meta.json kept
      IFS=: read -r _ m frames <<< "$step"
      log "issue 15: $m $frames frames traced, kvprof's own cost as the trace measured it"
      timeout "${SELFCOST_S:-300}" $KV trace --method "$m" --frames "$frames" --no-decode --out $KVTMP/selfcost \
        --run-id "$m-$frames" > /dev/null 2>>"$OUT/steps.log"
      $KV summary "$KVTMP/selfcost/$m-$frames" > "$OUT/selfcost_$m-$frames.txt" 2>>"$OUT/steps.log"
      cp "$KVTMP/selfcost/$m-$frames/meta.json" "$OUT/selfcost_$m-$frames.meta.json" 2>>"$OUT/steps.log"
      log "selfcost: $(grep -m1 "kvprof's own cost" "$OUT/selfcost_$m-$frames.txt" || echo 'no own-cost line')"
      ;;
    long:*)  # long:METHOD:INTEGRATION:FRAMES, e.g. long:prq_int4:study:126 (issue 15: a long horizon traced, then opened)
      IFS=: read -r _ m integ frames <<< "$step"
      log "issue 15: $m $integ $frames frames --rolling 21, traced, then opened"
      timeout "${LONG_S:-540}" $KV trace --method "$m" --integration "$integ" --frames "$frames" --rolling 21 --no-decode \
        --out $KVTMP/long --run-id "$m-$integ-$frames" --json > "$OUT/long_$m-$integ-$frames.json" 2>>"$OUT/steps.log"
      [ -f "$KVTMP/long/$m-$integ-$frames/summary.json" ] && timeout 120 python3 benchmarks/open_speed.py \
        --trace "$KVTMP/long/$m-$integ-$frames" --repeat 1 > "$OUT/open_$m-$integ-$frames.txt" 2>>"$OUT/steps.log"
      ;;
    pairs:*)  # pairs:METHOD:FRAMES:N, e.g. pairs:prq_int4:42:3 (issue 15: N traced runs, each beside an untraced one)
      # PAIR_GPUS=0,1 (default); PAIR_GPUS=0,1+2,3 runs two such series at once on a 4-GPU machine (twice the pairs a call)
      IFS=: read -r _ m frames n <<< "$step"
      ppids=()
      # PIN_CPUS applies to every series; PAIR_PINS=0-15/16-31+32-47/48-63 gives each series its own (auto would
      # halve one NUMA node for every series alike, putting two series' processes on the same cores)
      IFS=+ read -ra series <<< "${PAIR_GPUS:-0,1}"
      IFS=+ read -ra pins <<< "${PAIR_PINS:-}"
      # PAIR_MODES=untraced,kvprof+untraced,kvprof:nosampler gives each series its modes (default untraced,kvprof)
      IFS=+ read -ra pmodes <<< "${PAIR_MODES:-}"
      for i in "${!series[@]}"; do
        gpus=${series[$i]} tagg=${series[$i]//,/} pin=${pins[$i]:-${PIN_CPUS:-}} modes=${pmodes[$i]:-untraced,kvprof}
        log "issue 15: $m $frames frames, $n simultaneous pairs on GPUs $gpus"
        timeout -k 10 "${PAIRS_S:-540}" ${OVERHEAD:-python3 benchmarks/overhead.py} --method "$m" --frames "$frames" --no-decode \
          --repeat $(( (n + 1) / 2 )) --pairs "$n" --pair-gpus "$gpus" --modes "$modes" --out $KVTMP/pairs$tagg \
          --rows-log "$OUT/pairs_$m-$frames-g$tagg.jsonl" ${pin:+--pin-cpus "$pin"} > "$OUT/pairs_$m-$frames-g$tagg.json" 2>>"$OUT/steps.log" &
        ppids+=($!)
      done
      wait "${ppids[@]}"
      nvidia-smi topo -m > "$OUT/topo.txt" 2>&1
      ;;
    gang:*)  # gang:METHOD:FRAMES:ROUNDS (issue 15): GANG_MODES (one a GPU of GANG_GPUS, untraced among them) all at once,
      # each on its GPU's GANG_PINS cores, rotated round by round (benchmarks/gang.py); GANG_S caps the rounds' time
      IFS=: read -r _ m frames n <<< "$step"
      log "issue 15: $m $frames frames, $n rounds of ${GANG_MODES:-untraced,kvprof} at once on GPUs ${GANG_GPUS:-0,1}"
      # the GPUs' clocks, temperature and throttle reasons every 5 s: is a slow round a slow GPU? (rows: the CPU's probe)
      nvidia-smi --query-gpu=timestamp,index,clocks.sm,clocks.mem,temperature.gpu,power.draw,utilization.gpu,clocks_throttle_reasons.active \
        --format=csv -l 5 > "$OUT/gang_smi.csv" 2>/dev/null &
      smi=$!
      timeout -k 10 "${GANG_S:-540}" ${GANG:-python3 benchmarks/gang.py} --method "$m" --frames "$frames" --no-decode \
        --rounds "$n" --budget-s $(( ${GANG_S:-540} - 20 )) --gpus "${GANG_GPUS:-0,1}" --modes "${GANG_MODES:-untraced,kvprof}" \
        ${GANG_PINS:+--pins "$GANG_PINS"} --out $KVTMP/gang --rows-log "$OUT/gang_$m-$frames.jsonl" \
        > "$OUT/gang_$m-$frames.json" 2>>"$OUT/steps.log"
      kill $smi 2>/dev/null
      log "gang: $(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['summary'])" "$OUT/gang_$m-$frames.json" 2>&1 | tail -c 600)"
      nvidia-smi topo -m > "$OUT/topo.txt" 2>&1
      ;;
    perfpair:*)  # perfpair:METHOD:FRAMES (issue 15): hardware counters of every thread of an untraced (GPU 0) and a
      # traced (GPU 1) process at once, over a PERF_FOR_S window (30 s) from PERF_AFTER_S (60 s) after both started
      # (mid-rollout), then perf_threads.py: does the traced model thread run more instructions, or at a lower IPC?
      # PIN_CPUS=A/B (default 0-15/16-31) keeps each process on its own cores. The GPU machines of RESULTS.md have neither
      # perf nor hardware counters in their VMs: there the step says so in one line and goes on
      IFS=: read -r _ m frames <<< "$step"
      if ! perf stat -e cycles true > /dev/null 2>&1; then
        log "perfpair: perf cannot count here: $(perf stat -e cycles true 2>&1 | tail -1)"
        continue
      fi
      cpus=${PIN_CPUS:-0-15/16-31}; [ "$cpus" = auto ] && cpus=0-15/16-31  # overhead.py's auto needs its own pairs
      IFS=/ read -r cpu_a cpu_b <<< "$cpus"
      log "issue 15: perf stat of $m $frames frames, untraced (GPU 0, cores $cpu_a) and kvprof (GPU 1, cores $cpu_b) at once"
      procs=()
      for gmc in "0:$cpu_a:untraced" "1:$cpu_b:kvprof"; do
        IFS=: read -r gpu cores mode <<< "$gmc"
        CUDA_VISIBLE_DEVICES=$gpu taskset -c "$cores" ${OVERHEAD:-python3 benchmarks/overhead.py} --mode $mode --method "$m" \
          --frames "$frames" --no-decode --out $KVTMP/perfpair > "$OUT/perfpair_$mode.json" 2>>"$OUT/steps.log" &
        procs+=("$!:$mode")
      done
      sleep "${PERF_AFTER_S:-60}"
      waits=()
      for pm in "${procs[@]}"; do
        perf stat -x, --per-thread -e cycles,instructions,cache-misses,dTLB-load-misses -p "${pm%%:*}" \
          -o "$OUT/perf_${pm#*:}.csv" -- sleep "${PERF_FOR_S:-30}" 2>>"$OUT/steps.log" &
        waits+=($! "${pm%%:*}")
      done
      wait "${waits[@]}"  # by pid: a bare wait would also wait for another step's clock sampler
      for pm in "${procs[@]}"; do wait "${pm%%:*}"; done  # the next step must not share the GPUs with these rollouts
      python3 benchmarks/perf_threads.py "$OUT/perf_untraced.csv" "$OUT/perf_kvprof.csv" > "$OUT/perfpair.json" 2>>"$OUT/steps.log"
      log "perfpair: traced / untraced $(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['traced_over_untraced'])" "$OUT/perfpair.json" 2>&1)"
      ;;
    spypair:*)  # spypair:METHOD:FRAMES (issue 15): py-spy (native frames, SPY_RATE=25 a second) on a traced (GPU 0) and an
      # untraced (GPU 1) rollout at once, each on its own cores (PIN_CPUS=A/B, default 0-15/16-31), then
      # `self_profile.py compare`: where the traced model thread spent more seconds, by leaf frame and by binary/file.
      # SPY_S (400) only guards the call: py-spy stops when its rollout ends, and writes its output then
      IFS=: read -r _ m frames <<< "$step"
      cpus=${PIN_CPUS:-0-15/16-31}; [ "$cpus" = auto ] && cpus=0-15/16-31
      IFS=/ read -r cpu_a cpu_b <<< "$cpus"
      log "issue 15: py-spy on $m $frames frames, kvprof (GPU 0, cores $cpu_a) and untraced (GPU 1, cores $cpu_b) at once"
      procs=()
      for gmc in "0:$cpu_a:kvprof" "1:$cpu_b:untraced"; do
        IFS=: read -r gpu cores mode <<< "$gmc"
        CUDA_VISIBLE_DEVICES=$gpu timeout -s INT "${SPY_S:-400}" taskset -c "$cores" \
          ${SELF_PROFILE:-python3 benchmarks/self_profile.py} record "$OUT/spy_$mode.txt" --mode "$mode" --rate "${SPY_RATE:-25}" \
          -- --method "$m" --frames "$frames" --no-decode --out $KVTMP/spypair > "$OUT/spy_$mode.json" 2>>"$OUT/steps.log" &
        procs+=($!)
      done
      wait "${procs[@]}"  # by pid (a bare wait would also wait for another step's clock sampler)
      python3 benchmarks/self_profile.py compare "$OUT/spy_kvprof.txt" "$OUT/spy_untraced.txt" --rate "${SPY_RATE:-25}" \
        > "$OUT/spypair.json" 2>>"$OUT/steps.log"
      log "spypair: rollout seconds sampled kvprof, untraced $(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['rollout_s'])" "$OUT/spypair.json" 2>&1)"
      ;;
    budget)
      log "issue 6: budget 20GiB, bf16 then prq_int4 (study)"
      timeout 120 $KV trace --method bf16 --budget 20GiB --out $KVTMP/budget --run-id bf16-budget --json > "$OUT/budget_bf16.json" 2>>"$OUT/steps.log"
      timeout 420 $KV trace --method prq_int4 --budget 20GiB --out $KVTMP/budget --run-id prq_int4-budget --json > "$OUT/budget_prq_int4.json" 2>>"$OUT/steps.log"
      $KV diagnose $KVTMP/budget/prq_int4-budget --baseline $KVTMP/budget/bf16-budget > "$OUT/budget_diagnose.txt" 2>&1
      ;;
    host)
      for m in quarot_kv_int4 flowcache_soft_prune_int4; do
        log "issue 8: host profile $m"
        timeout 240 $KV trace --method "$m" --host-profile --out $KVTMP/host --run-id "$m-host" --json > "$OUT/host_$m.json" 2>>"$OUT/steps.log"
      done
      ;;
    study:*|staged:*)
      integ=${step%%:*}; methods=${step#*:}
      log "issue 3: $integ sweep $methods"
      sweep "$KVTMP/sweep-$integ-${methods//,/_}" --integrations "$integ" --methods "$methods"
      python3 benchmarks/results_table.py "$KVTMP/sweep-$integ-${methods//,/_}" >> "$OUT/sweep_$integ.md" 2>>"$OUT/steps.log"
      ;;
    sweep-1gpu)
      log "issue 17: all methods, staged, 42 frames, GPU 0 alone"
      CUDA_VISIBLE_DEVICES=0 sweep $KVTMP/sweep-1gpu --integrations staged --methods "${SWEEP_METHODS:-all}" --frames 42
      ;;
    sweep-all)
      log "issue 17: all methods, staged, 42 frames, every GPU ($(nvidia-smi -L | wc -l))"
      sweep $KVTMP/sweep-all --integrations staged --methods "${SWEEP_METHODS:-all}" --frames 42
      ;;
    sweep-speedup)
      # SPEEDUP_ORDER=many-first runs the many-GPU sweep before the one-GPU ones (session 10's many-GPU cells ran 9 % slower
      # than the same cells of the one-GPU sweeps run just before them on the same GPUs: order, or the sweep itself?)
      n=$(nvidia-smi -L | wc -l)
      costs=${SPLIT_COSTS_FROM:-$(ls benchmarks/results/session10/call3/one*.manifest.json)}
      mapfile -t parts < <(python3 benchmarks/sweep_speedup.py split "$n" --costs-from $costs --methods "${SWEEP_METHODS:-all}")
      ones() {
        log "issue 17: $n one-GPU sweeps at once (${SWEEP_FLAGS:-with the decode})"
        local pids=()
        for g in $(seq 0 $((n - 1))); do
          CUDA_VISIBLE_DEVICES=$g timeout -s INT -k 30 "${ONE_S:-300}" $KV sweep --out $KVTMP/one$g --integrations staged \
            --methods "${parts[$g]}" --frames 42 ${SWEEP_FLAGS:-} --quiet >> "$OUT/steps.log" 2>&1 &
          pids+=($!)
        done
        wait "${pids[@]}"  # the sweeps only: a bare `wait` also waits for the clock sampler, which never ends (session 11)
      }
      many() {
        log "issue 17: one sweep over $n GPUs"
        timeout -s INT -k 30 "${MANY_S:-300}" $KV sweep --out $KVTMP/many --integrations staged --methods "${SWEEP_METHODS:-all}" \
          --frames 42 ${SWEEP_FLAGS:-} --costs-from "$@" --quiet >> "$OUT/steps.log" 2>&1
      }
      # clocks, temperature and throttle reasons every 5 s: are the second sweep's cells slower because the GPUs are hot?
      nvidia-smi --query-gpu=timestamp,index,clocks.sm,clocks.mem,temperature.gpu,power.draw,utilization.gpu,clocks_throttle_reasons.active \
        --format=csv -l 5 > "$OUT/sweep_speedup_smi.csv" 2>/dev/null &
      smi=$!
      if [ "${SPEEDUP_ORDER:-ones-first}" = many-first ]; then many $costs; ones; else ones; many $KVTMP/one*; fi
      kill $smi 2>/dev/null
      log "sweeps done"
      python3 benchmarks/sweep_speedup.py compare --one $KVTMP/one* --many $KVTMP/many > "$OUT/sweep_speedup.md" 2>>"$OUT/steps.log"
      python3 benchmarks/sweep_speedup.py compare --one $KVTMP/one* --many $KVTMP/many --json > "$OUT/sweep_speedup.json" 2>>"$OUT/steps.log"
      for s in $KVTMP/one* $KVTMP/many; do cp "$s/manifest.json" "$OUT/$(basename "$s").manifest.json"; done
      ;;
    startup)  # where a sweep cell's seconds outside its trace go (session 10: ~5 s start-up, ~18 s when decoding)
      log "start-up: torch, the VAE module, a bf16 staged 42 f trace process without and with the decode"
      CUDA_VISIBLE_DEVICES=${STARTUP_GPU:-0} timeout 200 python3 benchmarks/startup_probe.py > "$OUT/startup.json" 2>>"$OUT/steps.log"
      ;;
    sweep-study)  # issue 19: the study runtime column; the long cells first (by the older study sweeps' times)
      order=$(python3 benchmarks/sweep_speedup.py split 1 --costs-from benchmarks/results/sweep_study_h100*.jsonl)
      log "issue 19: all methods, study, 42 frames, every GPU ($(nvidia-smi -L | wc -l)), longest first"
      sweep $KVTMP/sweep-study --integrations study --methods "$order" --frames 42
      python3 benchmarks/results_table.py $KVTMP/sweep-study > "$OUT/sweep-study.md" 2>>"$OUT/steps.log"
      cp $KVTMP/sweep-study/manifest.json "$OUT/sweep-study.manifest.json"
      ;;
    sweep-table)
      done_dirs=()
      for s in sweep-1gpu sweep-all; do
        [ -f $KVTMP/$s/manifest.json ] || continue
        done_dirs+=($KVTMP/$s)
        python3 benchmarks/results_table.py $KVTMP/$s > "$OUT/$s.md" 2>>"$OUT/steps.log"
        cp $KVTMP/$s/manifest.json "$OUT/$s.manifest.json"
      done
      [ ${#done_dirs[@]} -gt 0 ] && python3 benchmarks/results_table.py --throughput "${done_dirs[@]}" > "$OUT/sweep_throughput.txt" 2>>"$OUT/steps.log"
      ;;
    render)
      log "issue 7: render"
      timeout "${RENDER_S:-200}" python3 benchmarks/render_sweep_report.py $KVTMP/sweep $KVTMP/budget $KVTMP/tvu $KVTMP/host \
        --out $KVTMP/report --skip-existing ${RENDER_ARGS:-} >> "$OUT/steps.log" 2>&1
      ;;
    upstream)
      # Issue 18: upstream Self-Forcing's own pipeline (carried, never committed: UPSTREAM=its folder;
      # needs the einops wheel in .whl) traced with `instrument` alone, directly and through `kvprof run`.
      R=${UPSTREAM:-.upstream/Self-Forcing}
      log "issue 18: upstream pipeline, instrument(pipeline) in the script"
      timeout 400 python3 benchmarks/self_forcing_upstream.py "$R" $KVTMP/upstream/direct > "$OUT/upstream.txt" 2>>"$OUT/steps.log"
      log "issue 18: the same through kvprof run --instrument self-forcing"
      PYTHONPATH=$PYTHONPATH:$PWD/benchmarks timeout 400 $KV run --instrument self-forcing --out $KVTMP/upstream --run-id via-run \
        -- python3 benchmarks/self_forcing_upstream.py "$R" >> "$OUT/upstream.txt" 2>>"$OUT/steps.log"
      python3 -c "
from kvprof.read.trace import load_trace
for name in ('direct', 'via-run'):
    t = load_trace('$KVTMP/upstream/' + name); s = t.summary.to_dict(); p = s['peak']; a = t.allocations
    kv = a[a['name'].astype(str).str.match(r'layer \d+ / [kv]$')]; cross = a[a['name'].astype(str).str.startswith('cross_')]
    print(name, 'peak', p['bytes'], 'max_memory_allocated', t.meta.get('max_memory_allocated_bytes'), 'stage', p['stage'])
    print('  at peak', p['by_category'])
    print('  kv_fp blocks', int(kv['bytes'].sum()), 'cross_kv blocks live at end', int(cross.loc[cross['q_free'] == -1, 'bytes'].sum()))
    print('  stages', {r['stage']: r['count'] for r in s['stage_times']}, 'reconciliation', s.get('reconciliation'))
" >> "$OUT/upstream.txt" 2>>"$OUT/steps.log"
      $KV diagnose $KVTMP/upstream/direct >> "$OUT/upstream.txt" 2>&1
      ;;
    plugin)
      # Issue 18: the example plugin method (examples/my_method.py) at full size, study and staged, against bf16.
      P=examples.my_method:TokenInt4Sink
      for integ in study staged; do
        log "issue 18: plugin $P under $integ"
        timeout 280 $KV trace --method "$P" --integration $integ --out $KVTMP/plugin --run-id "plugin-$integ" --json \
          > "$OUT/plugin_$integ.json" 2>>"$OUT/steps.log"
      done
      [ -d $KVTMP/plugin/bf16 ] || timeout 120 $KV trace --method bf16 --out $KVTMP/plugin --run-id bf16 --quiet > /dev/null 2>>"$OUT/steps.log"
      for integ in study staged; do
        $KV diagnose $KVTMP/plugin/plugin-$integ --baseline $KVTMP/plugin/bf16 >> "$OUT/plugin_diagnose.txt" 2>&1
      done
      ;;
    notes)
      # Each trace's meta notes and the other GPU processes NVML saw (confirms the "GPU shared" note).
      python3 -c "
import json, pathlib
for m in sorted(pathlib.Path('$KVTMP').glob('*/*/meta.json')):
    d = json.loads(m.read_text())
    print(m.parent.name, d.get('other_gpu_processes_max'), d.get('notes'))
" > "$OUT/notes.txt" 2>>"$OUT/steps.log"
      ;;
    pack)
      # The HTML apart: the tool brings back files of at most 16 MiB each.
      tar -czf "$OUT/report.tgz" --exclude=sweep.html -C $KVTMP report 2>>"$OUT/steps.log"
      [ -f $KVTMP/report/sweep.html ] && gzip -c $KVTMP/report/sweep.html > "$OUT/sweep.html.gz"
      ;;
    bg:*)  # bg:STEP starts STEP detached (setsid nohup) into $KVTMP/bg/<STEP>/: a job longer than one device call keeps
      # running after the call ends while the machine stays warm (session 11); a later call's `collect` brings it back
      inner=${step#bg:}
      dir=$KVTMP/bg/${inner//:/_}
      mkdir -p "$dir"
      log "detached: $inner (output in $dir)"
      OUT=$dir setsid nohup bash "$0" "$inner" > "$dir/nohup.log" 2>&1 < /dev/null &
      echo $! > "$dir/pid"
      ;;
    collect)  # wait (up to COLLECT_S, default 540 s) for every bg: step, then copy their outputs to $OUT/bg/
      for dir in "$KVTMP"/bg/*/; do
        [ -f "$dir/pid" ] || continue
        name=$(basename "$dir") pid=$(cat "$dir/pid") waited=0
        while kill -0 "$pid" 2>/dev/null && [ $waited -lt "${COLLECT_S:-540}" ]; do sleep 5; waited=$((waited + 5)); done
        kill -0 "$pid" 2>/dev/null && log "collect: $name still running after ${COLLECT_S:-540} s" || log "collect: $name finished"
        mkdir -p "$OUT/bg/$name" && cp -r "$dir"/. "$OUT/bg/$name/" && rm -f "$OUT/bg/$name/pip.log"
      done
      ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
log "all done"
