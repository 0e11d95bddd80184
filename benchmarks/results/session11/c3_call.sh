#!/bin/bash
# Session 11, call 3 (the x4 machine kept warm; issue 15), four GPUs at once:
#  GPU 0: prq_int4 study 252 f --rolling 21 traced, started detached (setsid nohup; ~600 s: longer than a call), collected by the next call
#  GPU 1: prq_int4 staged 252 f, then opened (open_speed)
#  GPU 2: bf16 staged 126 f and 252 f, each opened; then the start-up probe
#  GPU 3: py-spy --native 25 Hz on a traced and an untraced prq_int4 study 12 f process (self_profile.py), analyzed
set -u
T0=$(date +%s)
R=$OUT/r; mkdir -p "$R"
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$R/steps.log"; }
if [ ! -f /tmp/site/.done ]; then
  rm -rf /tmp/site; pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /tmp/pip.log 2>&1 && touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
python3 -c "from tracers import native; native.load(cuda=True); print('built')" >> "$R/steps.log" 2>&1
log "GPU 0: prq_int4 study 252 detached"
mkdir -p /tmp/kv/bg
CUDA_VISIBLE_DEVICES=0 OUT=/tmp/kv/bg LONG_S=1500 setsid nohup bash benchmarks/gpu_session.sh long:prq_int4:study:252 > /tmp/kv/bg/nohup.log 2>&1 < /dev/null &
( CUDA_VISIBLE_DEVICES=1 OUT=$R/g1 LONG_S=480 bash benchmarks/gpu_session.sh long:prq_int4:staged:252 ) &
p1=$!
( CUDA_VISIBLE_DEVICES=2 OUT=$R/g2 LONG_S=200 bash benchmarks/gpu_session.sh long:bf16:staged:126 long:bf16:staged:252 startup ) &
p2=$!
(
  export CUDA_VISIBLE_DEVICES=3
  mkdir -p $R/g3
  for mode in kvprof untraced; do
    timeout -s INT 150 python3 benchmarks/self_profile.py record $R/g3/spy_$mode.txt --mode $mode --rate 25 -- --method prq_int4 --frames 12 --no-decode >> $R/g3/spy.log 2>&1
    python3 benchmarks/self_profile.py analyze $R/g3/spy_$mode.txt --top 40 > $R/g3/spy_$mode.json 2>>$R/g3/spy.log
  done
) &
p3=$!
wait $p1 $p2 $p3
log "done; GPU 0's detached trace: $(tail -c 300 /tmp/kv/bg/steps.log 2>/dev/null)"
nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv >> "$R/steps.log" 2>&1
cd "$OUT" && tar czf r.tgz r && rm -rf r
