#!/bin/bash
# Calls 1 and 2 (session 7): the 1-GPU baseline of session 5's 33-cell staged sweep, on session 5's code
# (2e68c10, the same code as the 4-GPU run; `git archive 2e68c10` extracted into .carry_s5tree), one H100.
# Device call: run(command="bash .carry_s7_sweep1.sh", carry=[".whl", ".carry_s5tree"], kind="nvidia-h100-x1").
# Each call stops the sweep after SWEEP_S (SIGINT: finished cells stay in the manifest); a next call on the
# same warm machine would resume it (the machine was given back between calls 1 and 2: call 2 started over).
set -u
R=$OUT/r; mkdir -p "$R"
cd .carry_s5tree && ln -sfn ../.whl .whl
{ date -u; nvidia-smi -L; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; free -g;
  python3 -c "import torch,sys;print(sys.version);print(torch.__version__, torch.version.cuda)"; } > "$R/env.txt" 2>&1
[ -f /tmp/kv/sweep-1gpu/manifest.json ] && echo "resuming: manifest present" >> "$R/env.txt" || echo "fresh: no manifest" >> "$R/env.txt"
OUT=$R SWEEP_S=${SWEEP_S:-525} timeout -k 5 578 bash benchmarks/gpu_session.sh sweep-1gpu sweep-table
cp /tmp/kv/sweep-1gpu/manifest.json "$R/manifest.json" 2>/dev/null
cd "$OUT" && tar czf r.tgz r && rm -rf r
