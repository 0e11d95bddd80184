#!/bin/bash
# Session 8, call 5 (issue 15; written as call 3 for 4 GPUs, ran as call 5 on the 2 H200s lent): traced / untraced rollout wall time in fresh processes (benchmarks/overhead.py),
# prq_int4 (study) and bf16 at 42 frames, one alternated pair per GPU, every GPU of one host at once (even GPUs run
# untraced first, odd ones kvprof first): as many pairs in one device call as the host has GPUs.
# Device call: run(command="bash .carry_c3.sh", carry=[".whl"], kind="nvidia-h100-x4" or "nvidia-h100-x2").
set -u
T0=$(date +%s)
R=$OUT/r; mkdir -p "$R"
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$R/steps.log"; }
if [ ! -f /tmp/site/.done ]; then
  rm -rf /tmp/site; pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > "$R/pip.log" 2>&1 && touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site:$PWD
{ date -u; nvidia-smi -L; nproc; free -g; python3 -c "import torch,sys;print(sys.version);print(torch.__version__, torch.version.cuda)";
  cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>&1; lscpu | grep -i "model name"; } > "$R/env.txt" 2>&1
log "build the native library once"
python3 -c "from tracers import native; native.load(cuda=True); print('built')" >> "$R/steps.log" 2>&1
pair() {  # pair METHOD REPEAT TIMEOUT: one overhead.py per GPU, orders alternated across GPUs
  local m=$1 rep=$2 to=$3
  for g in $(seq 0 $(( $(nvidia-smi -L | wc -l) - 1 ))); do
    if [ $((g % 2)) -eq 0 ]; then modes=untraced,kvprof; else modes=kvprof,untraced; fi
    CUDA_VISIBLE_DEVICES=$g timeout "$to" python3 benchmarks/overhead.py --method "$m" --frames 42 --no-decode \
      --repeat "$rep" --modes "$modes" --out "/tmp/kv/ovh-$m-$g" > "$R/ovh_${m}_gpu$g.json" 2>"$R/ovh_${m}_gpu$g.err" &
  done
  wait
}
log "prq_int4 study 42 f: one pair per GPU"
pair prq_int4 1 ${PRQ_S:-430}
log "bf16 study 42 f: two pairs per GPU"
pair bf16 2 130
log "done"
cd "$R" && python3 - <<'PY' > summary.txt 2>&1
import glob, json, statistics
for m in ("prq_int4", "bf16"):
    pairs = []
    for f in sorted(glob.glob(f"ovh_{m}_gpu*.json")):
        try:
            rows = json.load(open(f))["rows"]
        except Exception as e:
            print(f, "unreadable", e); continue
        u = [r["rollout_wall_s"] for r in rows if r["mode"] == "untraced" and "rollout_wall_s" in r]
        k = [r for r in rows if r["mode"] == "kvprof" and "rollout_wall_s" in r]
        for a, b in zip(u, k):
            pairs.append(b["rollout_wall_s"] / a)
            print(m, f, f"untraced {a:.2f} kvprof {b['rollout_wall_s']:.2f} ratio {b['rollout_wall_s']/a:.4f} "
                  f"gap {b.get('peak_gap_bytes')} maxabs {b.get('max_abs_gap_bytes')} close {b.get('close_s')} disk {b.get('disk_bytes')} "
                  f"events {b.get('events')} rss {b.get('max_rss_bytes')}")
    if pairs:
        print(m, "pairs", len(pairs), "median ratio", round(statistics.median(pairs), 4), "min", round(min(pairs), 4), "max", round(max(pairs), 4))
PY
cd "$OUT" && tar czf r.tgz r && rm -rf r
