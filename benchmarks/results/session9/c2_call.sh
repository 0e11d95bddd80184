#!/bin/bash
# Session 9, call 2 (issue 17, the 1-GPU baseline): the 33-method staged 42-frame sweep on ONE GPU, as four
# one-GPU `kvprof sweep`s at once (GPU g runs a quarter of the methods with one Dask worker, cells one after another),
# quarters balanced by session 5's per-cell seconds. A one-GPU sweep's time = the four sweeps' wall times added
# (minus the three extra Dask start-ups, reported apart); call 3 runs the same 33 cells as one 4-GPU sweep on this machine.
# Device call: run(command="bash .carry_c2.sh", carry=[".whl"], kind="nvidia-h100-x4").
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
Q=(
  prq_int4,qaq_int2,tptq_int2,spatial_mixed_fg_quarot_kv_int4_bg_rtn_int2,flowcache_native_soft_prune_int4,kivi_int4,spatial_mixed_fg_kivi_int4_bg_kivi_int2,flowcache_native
  prq_int2,kivi_int4_refresh,kivi_k2_v4,rtn_int2,flowcache_hybrid_int2,flowcache_prune_int2,age_tier_int4,rtn_int4_recent2
  quarot_kv_int2,qaq_int4,rtn_int4_refresh,flowcache_adaptive_int2,age_tier_int2,kivi_int2,quarot_kv_int4_recent2,spatial_mixed_fg_rtn_int4_bg_rtn_int2
  quarot_kv_int4_refresh,quarot_kv_int4,flowcache_soft_prune_int2,rtn_k2_v4,flowcache_soft_prune_int4,flowcache_prune_int4,rtn_int4,spatial_mixed_fg_rtn_int4_bg_rtn_int4,bf16
)
log "four one-GPU sweeps at once"
for g in 0 1 2 3; do
  CUDA_VISIBLE_DEVICES=$g timeout -s INT -k 30 "${SWEEP_S:-545}" python3 -m kvprof.cli sweep --out /tmp/kv/q$g \
    --integrations staged --methods "${Q[$g]}" --frames 42 --workers-per-gpu 1 --quiet > "$R/q$g.log" 2>&1 &
done
wait
log "sweeps done"
for g in 0 1 2 3; do
  cp /tmp/kv/q$g/manifest.json "$R/q$g.manifest.json" 2>/dev/null
  python3 benchmarks/results_table.py --throughput /tmp/kv/q$g >> "$R/throughput.txt" 2>&1
  python3 benchmarks/results_table.py /tmp/kv/q$g > "$R/q$g.md" 2>&1
done
log "done"
cd "$R" && tar czf ../tables.tgz q*.md q*.log && rm -f q*.md q*.log
cd "$OUT" && tar czf r.tgz r tables.tgz && rm -rf r tables.tgz
