#!/bin/bash
# Issue 15, session 7: where the traced rollout's extra time goes (benchmarks/overhead_parts.py), the
# native recorder's tick clock checked for exactness, the per-stage cost, and the headline bf16 ratio.
set -u
T0=$(date +%s); left() { echo $(( ${BUDGET:-470} - ($(date +%s) - T0) )); }
R=$OUT/r; mkdir -p "$R"
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$R/steps.log"; }
if [ ! -f /tmp/site7/.done ]; then
  pip install -q --no-index --no-deps --target /tmp/site7 .whl/*.whl > "$R/pip.log" 2>&1 && touch /tmp/site7/.done
fi
export PYTHONPATH=/tmp/site7:$PWD
{ date -u; nvidia-smi -L; nproc; python3 -c "import torch,sys;print(sys.version);print(torch.__version__, torch.version.cuda)";
  cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>&1; } > "$R/env.txt" 2>&1
log "build the native CUDA library (tick clock)"
if ! python3 -c "from tracers import native; native.load(cuda=True); print('built')" >> "$R/build.txt" 2>&1; then
  log "BUILD FAILED: back to HEAD's sources (steady clock per event)"
  cp .s7_old_native/alloc_events.cpp .s7_old_native/attach_cuda.cpp tracers/native/
  python3 -c "from tracers import native; native.load(cuda=True); print('built old')" >> "$R/build.txt" 2>&1
  echo old > "$R/clock.txt"
else
  echo ticks > "$R/clock.txt"
fi
log "stage cost"
timeout 60 python3 benchmarks/stage_cost.py --stages 20000 > "$R/stage_cost.json" 2>>"$R/steps.log"
log "parts: prq_int4 study 12 f"
timeout 240 python3 benchmarks/overhead_parts.py --method prq_int4 --integration study --frames 12 --repeat 2 \
  --parts untraced,tracker,drain,nostages,kvprof > "$R/parts_prq12.json" 2>>"$R/steps.log"
log "parts: bf16 study 42 f"
timeout 120 python3 benchmarks/overhead_parts.py --method bf16 --integration study --frames 42 --repeat 3 \
  --parts untraced,tracker,kvprof > "$R/parts_bf16_42.json" 2>>"$R/steps.log"
L=$(left); log "overhead.py bf16 42 f (fresh processes), $L s left"
if [ "$L" -gt 90 ]; then
  timeout $((L - 15)) python3 benchmarks/overhead.py --method bf16 --frames 42 --no-decode --repeat 2 --modes untraced,kvprof \
    --out /tmp/kv/ovh > "$R/overhead_bf16_42.json" 2>>"$R/steps.log"
fi
log "done"
cd "$OUT" && tar czf r.tgz r && rm -rf r
