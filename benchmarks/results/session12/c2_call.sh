#!/bin/bash
# Device call: run(command="bash .carry_c2.sh", carry=[".whl"], kind="nvidia-h100-x4", timeout_s=600).
# Session 12, call 2 (issue 15), all at once on a 4-GPU machine, each GPU's processes on its own 16 cores:
#  GPUs 0,1: prq_int4 study 126 f --rolling 21, untraced beside kvprof (both processes' max RSS: the issue's table
#            lacked the untraced one), then open_speed on the trace (every reader, the TUI included)
#  GPU 2 / GPU 3: py-spy --native 25 Hz on a traced / an untraced prq_int4 study 42 f process (self_profile.py):
#            what the model thread does at 42 frames (session 11 sampled 12 frames only)
set -u
T0=$(date +%s)
R=$OUT/r; mkdir -p "$R"
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$R/steps.log"; }
if [ ! -f /tmp/site/.done ]; then
  rm -rf /tmp/site; pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /tmp/pip.log 2>&1 && touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
{ date -u; nvidia-smi -L; nproc; lscpu | grep -i "model name\|NUMA\|socket\|thread"; nvidia-smi topo -m; } > "$R/env.txt" 2>&1
python3 -c "from tracers import native; native.load(cuda=True)" >> "$R/steps.log" 2>&1
log "built"
(
  timeout -k 10 500 python3 benchmarks/overhead.py --method prq_int4 --frames 126 --rolling 21 --no-decode \
    --modes untraced,kvprof --pairs 1 --repeat 1 --pair-gpus 0,1 --pin-cpus 0-15/16-31 --out /tmp/kv/long126 \
    --rows-log $R/long126.jsonl > $R/long126.json 2>> $R/steps.log
  log "126 f pair done"
  P=$(python3 -c "import json,sys; print(next(r['path'] for r in map(json.loads, open(sys.argv[1])) if r['mode']=='kvprof'))" $R/long126.jsonl)
  timeout 80 taskset -c 0-31 python3 benchmarks/open_speed.py --trace "$P" --repeat 1 > $R/open126.txt 2>> $R/steps.log
  log "open done"
) &
p1=$!
spy() {  # spy GPU CPUS MODE
  CUDA_VISIBLE_DEVICES=$1 timeout -s INT 400 taskset -c $2 python3 benchmarks/self_profile.py record $R/spy42_$3.txt \
    --mode $3 --rate 25 -- --method prq_int4 --frames 42 --no-decode --out /tmp/kv/spy$3 >> $R/spy.log 2>&1
  python3 benchmarks/self_profile.py analyze $R/spy42_$3.txt --top 40 > $R/spy42_$3.json 2>> $R/spy.log
  gzip -f $R/spy42_$3.txt
  log "spy $3 done"
}
spy 2 32-47 kvprof &
p2=$!
spy 3 48-63 untraced &
p3=$!
wait $p1 $p2 $p3
log "all done"
cd "$OUT" && tar czf r.tgz r && rm -rf r
