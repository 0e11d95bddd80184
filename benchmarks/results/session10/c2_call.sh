#!/bin/bash
# Session 10, call 2 (issue 15): prq_int4 study 42 f, 3 simultaneous traced/untraced pairs on GPUs 0 and 1, each GPU's
# runs pinned to its own cores (benchmarks/pin_cpus.py); then, if time is left, where a sweep cell's time outside its
# trace goes: torch import, CUDA start, one bf16 staged 42 f --no-decode trace timed from outside, and one under cProfile.
# Device call: run(command="bash .carry_c2.sh", carry=[".whl"], kind="nvidia-h100-x2").
# (benchmarks/pin_cpus.py, which this call ran, became `overhead.py --pin-cpus auto` after it: PIN_CPUS=auto.)
set -u
T0=$(date +%s)
R=$OUT/r; mkdir -p "$R"
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$R/steps.log"; }
if [ ! -f /tmp/site/.done ]; then
  rm -rf /tmp/site; pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /tmp/pip.log 2>&1 && touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
{ date -u; nvidia-smi -L; nproc; free -g; python3 -c "import torch,sys;print(sys.version);print(torch.__version__, torch.version.cuda)";
  lscpu | grep -i "model name"; nvidia-smi topo -m; } > "$R/env.txt" 2>&1
log "build the native library once"
python3 -c "from tracers import native; native.load(cuda=True); print('built')" >> "$R/steps.log" 2>&1
PIN=$(python3 benchmarks/pin_cpus.py); log "pins $PIN"
OUT=$R PIN_CPUS=$PIN PAIRS_S=${PAIRS_S:-470} bash benchmarks/gpu_session.sh pairs:prq_int4:42:3
log "pairs done"
if [ $(( $(date +%s) - T0 )) -lt 480 ]; then
  KV="python3 -m kvprof.cli trace --method bf16 --integration staged --frames 42 --no-decode --json --quiet --out /tmp/kv/probe"
  { s=$(date +%s.%N); python3 -c "import torch"; e=$(date +%s.%N); echo "import torch: $(awk "BEGIN{print $e - $s}") s";
    python3 -c "import time,torch;t=time.time();torch.zeros(1,device='cuda');torch.cuda.synchronize();print('cuda start', round(time.time()-t,2),'s')";
    s=$(date +%s.%N); python3 -X importtime -m kvprof.cli --help > /dev/null 2> "$R/importtime_help.txt"; e=$(date +%s.%N); echo "kvprof --help: $(awk "BEGIN{print $e - $s}") s";
    for i in 1 2; do s=$(date +%s.%N); CUDA_VISIBLE_DEVICES=0 $KV --run-id plain$i > /tmp/kv/plain$i.json; e=$(date +%s.%N);
      echo "plain trace $i: process $(awk "BEGIN{print $e - $s}") s, start $s end $e"; done
    s=$(date +%s.%N); CUDA_VISIBLE_DEVICES=0 python3 -m cProfile -o "$R/cell.prof" -m kvprof.cli trace --method bf16 --integration staged \
      --frames 42 --no-decode --json --quiet --out /tmp/kv/probe --run-id prof > /dev/null; e=$(date +%s.%N); echo "cProfile trace: $(awk "BEGIN{print $e - $s}") s"
  } > "$R/probe.txt" 2>&1
  R=$R python3 - >> "$R/probe.txt" 2>&1 <<'PY'
import json, glob, pstats
for m in sorted(glob.glob('/tmp/kv/probe/*/meta.json')):
    d = json.load(open(m)); e = d['environment']
    print(m, 'startup', (d['started_unix_ns'] - e['process_started_unix_ns']) / 1e9, 'trace', (d['ended_unix_ns'] - d['started_unix_ns']) / 1e9,
          'wall_s', d['wall_s'], 'close', d.get('tracer_close_s'), 'ended_unix', d['ended_unix_ns'] / 1e9)
pstats.Stats(__import__("os").environ["R"] + "/cell.prof").sort_stats('cumulative').print_stats(60)
PY
fi
log "done"
cd "$OUT" && tar czf r.tgz r && rm -rf r
