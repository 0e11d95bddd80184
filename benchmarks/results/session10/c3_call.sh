#!/bin/bash
# Session 10, call 3 (asked first as call 1, refused: no x4 then) (issue 17 on ONE machine in ONE call): the 33-method staged 42-frame sweep as four one-GPU
# sweeps at once (methods split by session 9's costs), then at once one 4-GPU sweep of the same cells, longest
# first (--costs-from the quarters). Both --no-decode (same flags) to fit one 600 s call.
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
  lscpu | grep -i "model name"; python3 -c "import dask, distributed; print('dask', dask.__version__, distributed.__version__)"; } > "$R/env.txt" 2>&1
log "build the native library once"
python3 -c "from tracers import native; native.load(cuda=True); print('built')" >> "$R/steps.log" 2>&1
log "sweep-speedup"
OUT=$R SWEEP_FLAGS=--no-decode ONE_S=${ONE_S:-290} MANY_S=${MANY_S:-280} bash benchmarks/gpu_session.sh sweep-speedup
log "done"
cd "$OUT" && tar czf r.tgz r && rm -rf r
