#!/bin/bash
# Session 10, call 4 (issue 19): the study runtime column, all 33 methods, 42 f, 4 GPUs, longest first (sweep-study).
# Device call: run(command="bash .carry_c3.sh", carry=[".whl"], kind="nvidia-h100-x4"), queued at once after call 3 (the machine was still warm), LIMIT=570.
set -u
R=$OUT/r; mkdir -p "$R"
OUT=$R SWEEP_S=${SWEEP_S:-$(( ${LIMIT:-560} - 45 ))} bash benchmarks/gpu_session.sh sweep-study
cd "$OUT" && tar czf r.tgz r && rm -rf r
