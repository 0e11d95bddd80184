#!/bin/bash
# Session 9, call 3 (issue 17): the same 33 staged 42-frame cells as call 2, now ONE `kvprof sweep` over the four
# GPUs of the machine (4 Dask workers, 1 per GPU); queued at once after call 2 so it ran on the same warm machine.
# Device call: run(command="bash .carry_c3.sh", carry=[".whl"], kind="nvidia-h100-x4").
set -u
T0=$(date +%s)
R=$OUT/r; mkdir -p "$R"
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$R/steps.log"; }
if [ ! -f /tmp/site/.done ]; then
  rm -rf /tmp/site; pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /tmp/pip.log 2>&1 && touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
{ date -u; nvidia-smi -L; nproc; ls -d /tmp/kv/q* 2>&1; } > "$R/env.txt" 2>&1
python3 -c "from tracers import native; native.load(cuda=True); print('built')" >> "$R/steps.log" 2>&1
log "one 4-GPU sweep"
timeout -s INT -k 30 "${SWEEP_S:-550}" python3 -m kvprof.cli sweep --out /tmp/kv/all4 --integrations staged --methods all \
  --frames 42 --workers-per-gpu 1 --quiet > "$R/all4.log" 2>&1
log "sweep exit $?"
cp /tmp/kv/all4/manifest.json "$R/all4.manifest.json" 2>/dev/null
python3 benchmarks/results_table.py --throughput /tmp/kv/all4 > "$R/throughput.txt" 2>&1
python3 benchmarks/results_table.py /tmp/kv/all4 > "$R/all4.md" 2>&1
log "done"
cd "$OUT" && tar czf r.tgz r && rm -rf r
