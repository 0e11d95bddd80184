#!/bin/bash
# Session 8, call 2 (issue 15): fine stages left out by default (PRQ's residual per slice), and what the
# counters and device-time marks at stage boundaries cost, in one process per workload (overhead_parts.py).
# Device call: run(command="bash .carry_c2.sh", carry=[".whl"], kind="nvidia-h100-x1").
set -u
T0=$(date +%s)
R=$OUT/r; mkdir -p "$R"
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$R/steps.log"; }
if [ ! -f /tmp/site/.done ]; then
  rm -rf /tmp/site; pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > "$R/pip.log" 2>&1 && touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site:$PWD
{ date -u; nvidia-smi -L; nproc; python3 -c "import torch,sys;print(sys.version);print(torch.__version__, torch.version.cuda)";
  cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>&1; lscpu | grep -i "model name"; } > "$R/env.txt" 2>&1
log "parts: prq_int4 study 12 f"
timeout 300 python3 benchmarks/overhead_parts.py --method prq_int4 --frames 12 --repeat 2 \
  --parts untraced,kvprof,fine,nocounters > "$R/parts_prq12.json" 2>>"$R/steps.log"
log "parts: bf16 study 42 f"
timeout 200 python3 benchmarks/overhead_parts.py --method bf16 --frames 42 --repeat 3 \
  --parts untraced,kvprof,nocounters,notimer > "$R/parts_bf16_42.json" 2>>"$R/steps.log"
log "done"
cd "$OUT" && tar czf r.tgz r && rm -rf r
