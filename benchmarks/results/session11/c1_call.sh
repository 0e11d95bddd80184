#!/bin/bash
# Session 11, call 1 (issue 17 on ONE machine in ONE call, many-first): one 4-GPU sweep of the 33 staged 42-frame cells
# (--no-decode, longest first: submission_order since b342503), then the same cells as four one-GPU sweeps at once
# (split by session 10's costs). GPU clocks sampled. Then, if the call has time, the start-up probe.
# Device call: run(command="bash .carry_c1.sh", carry=[".whl"], kind="nvidia-h100-x4").
set -u
T0=$(date +%s)
R=$OUT/r; mkdir -p "$R"
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$R/steps.log"; }
if [ ! -f /tmp/site/.done ]; then
  rm -rf /tmp/site; pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /tmp/pip.log 2>&1 && touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
{ date -u; nvidia-smi -L; nproc; free -g; python3 -c "import torch,sys;print(sys.version);print(torch.__version__, torch.version.cuda)";
  lscpu | grep -i "model name"; python3 -c "import dask, distributed; print('dask', dask.__version__, distributed.__version__)"; git log -1 --format=%H 2>/dev/null; } > "$R/env.txt" 2>&1
log "build the native library once"
python3 -c "from tracers import native; native.load(cuda=True); print('built')" >> "$R/steps.log" 2>&1
log "sweep-speedup many-first"
OUT=$R SWEEP_FLAGS=--no-decode SPEEDUP_ORDER=many-first ONE_S=${ONE_S:-265} MANY_S=${MANY_S:-255} bash benchmarks/gpu_session.sh sweep-speedup
el=$(( $(date +%s) - T0 ))
if [ $el -lt 470 ]; then
  log "startup probe"
  OUT=$R timeout $(( 575 - el )) bash benchmarks/gpu_session.sh startup
fi
log "done"
cd "$OUT" && tar czf r.tgz r && rm -rf r
