#!/bin/bash
# Session 11, call 6 (call 5's machine, warm): two more prq_int4 12 f rounds, old (.old_s11) vs new at once, swapped.
set -u
R=$OUT/r; mkdir -p "$R"; NEW=$PWD; OLD=$PWD/.old_s11; P=()
run() { local tree=$1 gpu=$2 cpus=$3 name=$4; shift 4
  (cd $tree && CUDA_VISIBLE_DEVICES=$gpu PYTHONPATH=/tmp/site:$tree taskset -c $cpus "$@" > "$R/$name.json" 2>> "$R/steps.log"); }
for round in 2 3; do
  if [ $round = 2 ]; then a=$OLD; b=$NEW; na=old; nb=new; else a=$NEW; b=$OLD; na=new; nb=old; fi
  run $a 0 0-15 prq_${na}_r$round timeout 60 python3 benchmarks/overhead.py --mode kvprof --method prq_int4 --frames 12 --no-decode --out /tmp/kv/$na$round &
  P+=($!)
  run $b 1 16-31 prq_${nb}_r$round timeout 60 python3 benchmarks/overhead.py --mode kvprof --method prq_int4 --frames 12 --no-decode --out /tmp/kv/$nb$round &
  P+=($!)
  wait "${P[@]}"; P=()
done
cd "$OUT" && tar czf r.tgz r && rm -rf r
