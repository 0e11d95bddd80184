#!/bin/bash
# Device call: run(command="bash .carry_c5.sh", carry=[".whl"], kind="nvidia-h100-x2") (lent as 2 H200). .old_s11 was
# `git archive add24f5 tracers kvprof methods tui benchmarks/overhead.py benchmarks/stage_cost.py pyproject.toml`, untracked.
# Session 11, call 5 (nvidia-h100-x2: 2 GPUs, halves of the host's cores): the stage records folded by the drain thread
# (this tree) vs before (.old_s11 = add24f5's tracers/kvprof/methods/tui and the two benchmarks), side by side at once:
#  1. stage_cost.py on GPU 0 (old) and GPU 1 (new), then swapped
#  2. prq_int4 study 12 f one kvprof process each side at once (overhead.py --mode kvprof), then swapped
#  3. the same rollout untraced on both GPUs at once
set -u
T0=$(date +%s)
R=$OUT/r; mkdir -p "$R"
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$R/steps.log"; }
if [ ! -f /tmp/site/.done ]; then
  rm -rf /tmp/site; pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /tmp/pip.log 2>&1 && touch /tmp/site/.done
fi
NEW=$PWD; OLD=$PWD/.old_s11
{ date -u; nvidia-smi -L; nproc; lscpu | grep -i "model name\|NUMA node"; } > "$R/env.txt" 2>&1
for tree in $NEW $OLD; do (cd $tree && PYTHONPATH=/tmp/site:$tree python3 -c "from tracers import native; native.load(cuda=True)") >> "$R/steps.log" 2>&1; done
log "built"
P=()
run() {  # run TREE GPU CPUS NAME ARGS...
  local tree=$1 gpu=$2 cpus=$3 name=$4; shift 4
  (cd $tree && CUDA_VISIBLE_DEVICES=$gpu PYTHONPATH=/tmp/site:$tree taskset -c $cpus "$@" > "$R/$name.json" 2>> "$R/steps.log")
}
for round in 0 1; do
  if [ $round = 0 ]; then a=$OLD; b=$NEW; else a=$NEW; b=$OLD; fi
  na=$([ $a = $OLD ] && echo old || echo new); nb=$([ $b = $OLD ] && echo old || echo new)
  log "stage_cost round $round: GPU 0 $na, GPU 1 $nb"
  run $a 0 0-15 stage_${na}_r$round timeout 100 python3 benchmarks/stage_cost.py --stages 20000 --deep 50000 &
  P+=($!)
  run $b 1 16-31 stage_${nb}_r$round timeout 100 python3 benchmarks/stage_cost.py --stages 20000 --deep 50000 &
  P+=($!)
  wait "${P[@]}"; P=()
done
for round in 0 1; do
  if [ $round = 0 ]; then a=$OLD; b=$NEW; else a=$NEW; b=$OLD; fi
  na=$([ $a = $OLD ] && echo old || echo new); nb=$([ $b = $OLD ] && echo old || echo new)
  log "prq_int4 12 f kvprof round $round: GPU 0 $na, GPU 1 $nb"
  run $a 0 0-15 prq_${na}_r$round timeout 120 python3 benchmarks/overhead.py --mode kvprof --method prq_int4 --frames 12 --no-decode --out /tmp/kv/$na$round &
  P+=($!)
  run $b 1 16-31 prq_${nb}_r$round timeout 120 python3 benchmarks/overhead.py --mode kvprof --method prq_int4 --frames 12 --no-decode --out /tmp/kv/$nb$round &
  P+=($!)
  wait "${P[@]}"; P=()
done
log "prq_int4 12 f untraced on both"
run $NEW 0 0-15 prq_untraced_g0 timeout 100 python3 benchmarks/overhead.py --mode untraced --method prq_int4 --frames 12 --no-decode &
P+=($!)
run $NEW 1 16-31 prq_untraced_g1 timeout 100 python3 benchmarks/overhead.py --mode untraced --method prq_int4 --frames 12 --no-decode &
P+=($!)
wait "${P[@]}"; P=()
log "done"
cd "$OUT" && tar czf r.tgz r && rm -rf r
