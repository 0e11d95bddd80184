#!/bin/bash
# Session 8, call 1 (issue 15): what is left of prq_int4's stage/tag overhead after session 7's stage path work.
# Device call: run(command="bash .carry_c1.sh", carry=[".whl"], kind="nvidia-h100-x1").
set -u
R=$OUT/r; mkdir -p "$R"
{ date -u; nvidia-smi -L; nproc; python3 -c "import torch,sys;print(sys.version);print(torch.__version__, torch.version.cuda)";
  cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>&1; git log --oneline -1 2>&1; } > "$R/env.txt" 2>&1
OUT=$R timeout -k 5 570 bash benchmarks/gpu_session.sh cost
cd "$OUT" && tar czf r.tgz r && rm -rf r
