#!/bin/bash
# Session 9, call 1 (issue 15): after PRQ's per-slice tags were hoisted (58a1951), on 2 GPUs of one host:
# A. prq_int4 study 12 f: kvprof and three pieces switched off, each traced run beside an untraced one on the other
#    GPU, then swapped (benchmarks/overhead.py --pair-gpus); B. py-spy --native on a traced (GPU 0) and an untraced
#    (GPU 1) prq_int4 12 f process at once (benchmarks/self_profile.py); C. bf16 study 42 f, 3 simultaneous pairs.
# GPU clocks, temperature and throttle reasons sampled every second throughout (smi.csv).
# Device call: run(command="bash .carry_c1.sh", carry=[".whl"], kind="nvidia-h100-x2").
set -u
T0=$(date +%s)
R=$OUT/r; mkdir -p "$R"
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$R/steps.log"; }
if [ ! -f /tmp/site/.done ]; then
  rm -rf /tmp/site; pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /tmp/pip.log 2>&1 && touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
{ date -u; nvidia-smi -L; nproc; free -g; python3 -c "import torch,sys;print(sys.version);print(torch.__version__, torch.version.cuda)";
  cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>&1; lscpu | grep -i "model name"; git log --oneline -1 2>&1;
  py-spy --version; } > "$R/env.txt" 2>&1
nvidia-smi --query-gpu=timestamp,index,clocks.sm,clocks.mem,temperature.gpu,power.draw,utilization.gpu,clocks_throttle_reasons.active \
  --format=csv -l 1 > "$R/smi.csv" 2>&1 &
SMI=$!
log "build the native library once"
python3 -c "from tracers import native; native.load(cuda=True); print('built')" >> "$R/steps.log" 2>&1
log "A: prq_int4 12 f pieces, pairs on GPUs 0,1"
timeout 270 python3 benchmarks/overhead.py --method prq_int4 --frames 12 --no-decode --repeat 1 --pair-gpus 0,1 \
  --modes untraced,kvprof,kvprof:notags,kvprof:nostages,kvprof:nocounters --out /tmp/kv/pieces \
  --rows-log "$R/pieces12.jsonl" > "$R/pieces12.json" 2> "$R/pieces12.err"
log "B: py-spy on kvprof (GPU 0) and untraced (GPU 1), prq_int4 12 f"
for g in 0 1; do
  if [ $g -eq 0 ]; then m=kvprof; else m=untraced; fi
  CUDA_VISIBLE_DEVICES=$g timeout 110 python3 benchmarks/self_profile.py record "/tmp/prof_$m.txt" --mode $m --rate 100 -- \
    --method prq_int4 --frames 12 --no-decode --out /tmp/kv/prof > "$R/prof_$m.row.json" 2> "$R/prof_$m.err" &
done
wait $(jobs -p | grep -v "^$SMI$") 2>/dev/null
for m in kvprof untraced; do python3 benchmarks/self_profile.py analyze "/tmp/prof_$m.txt" --top 40 > "$R/prof_$m.json" 2>&1; done
log "C: bf16 42 f, 3 pairs on GPUs 0,1"
timeout 170 python3 benchmarks/overhead.py --method bf16 --frames 42 --no-decode --repeat 2 --pairs 3 --pair-gpus 0,1 \
  --modes untraced,kvprof --out /tmp/kv/bf16 --rows-log "$R/bf16_42.jsonl" > "$R/bf16_42.json" 2> "$R/bf16_42.err"
log "done"
kill $SMI 2>/dev/null
cd "$OUT" && tar czf r.tgz r && rm -rf r
