#!/bin/bash
# Device call: run(command="bash .carry_c1.sh", carry=[".whl"], kind="nvidia-h100-x4", timeout_s=600).
# Session 12, call 1: issue 15's last target, prq_int4 study 42 frames traced / untraced, on the code with the
# recycled recorder buffer (3110796): two series of pairs at once (GPUs 0,1 and 2,3), each GPU's runs on its
# own cores (the GPUs' NUMA-local cores split among the GPUs that share them), rows kept as they come.
set -u
T0=$(date +%s)
R=$OUT/r; mkdir -p "$R"
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$R/steps.log"; }
if [ ! -f /tmp/site/.done ]; then
  rm -rf /tmp/site; pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /tmp/pip.log 2>&1 && touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
{ date -u; git log --oneline -1 2>/dev/null; nvidia-smi -L; nproc; lscpu | grep -i "model name\|NUMA\|socket\|thread"; nvidia-smi topo -m; } > "$R/env.txt" 2>&1
python3 -c "from tracers import native; native.load(cuda=True)" >> "$R/steps.log" 2>&1
log "built"
PINS=$(python3 - <<'PY'
import os, subprocess, sys
sys.path.insert(0, "benchmarks")
from overhead import cpu_list
topo = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True).stdout
usable = os.sched_getaffinity(0)
lines = [ln for ln in topo.splitlines() if ln.strip()]
header = [h.strip() for h in next(ln for ln in lines if "CPU Affinity" in ln).split("\t")]
col = header.index("CPU Affinity")
aff = {}
for ln in lines:
    cells = [c.strip() for c in ln.split("\t")]
    if cells[0].startswith("GPU") and cells[0][3:].isdigit() and len(cells) > col:
        aff[int(cells[0][3:])] = frozenset(cpu_list(cells[col], "topo") & usable)
groups = {}
for g in range(4):
    groups.setdefault(aff.get(g, frozenset(usable)), []).append(g)
if any(a & b for a in groups for b in groups if a != b):  # affinities that overlap without being equal
    groups = {frozenset(usable): [0, 1, 2, 3]}
pins = {}
for cores, gs in groups.items():
    cores = sorted(cores); k = len(cores) // len(gs)
    for i, g in enumerate(gs):
        pins[g] = cores[i * k:(i + 1) * k]
fmt = lambda c: f"{c[0]}-{c[-1]}" if c == list(range(c[0], c[-1] + 1)) else ",".join(map(str, c))
print(f"{fmt(pins[0])}/{fmt(pins[1])}+{fmt(pins[2])}/{fmt(pins[3])}")
PY
)
log "pins $PINS"
LEFT=$(( 575 - ($(date +%s) - T0) ))
PAIR_GPUS=0,1+2,3 PAIR_PINS=$PINS PAIRS_S=$LEFT OUT=$R KVTMP=/tmp/kv bash benchmarks/gpu_session.sh pairs:prq_int4:42:3
log "pairs done"
cd "$OUT" && tar czf r.tgz r && rm -rf r
