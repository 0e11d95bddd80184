#!/bin/bash
# Session 8, call 4 (issue 15): prq_int4 study at 126 frames --rolling 21 (30 s of video), traced, then opened
# (benchmarks/open_speed.py: close step, summary, diagnose, report md, TUI).
# Device call: run(command="bash .carry_c4.sh", carry=[".whl"], kind="nvidia-h100-x1").
set -u
R=$OUT/r; mkdir -p "$R"
{ date -u; nvidia-smi -L; nproc; lscpu | grep -i "model name"; } > "$R/env.txt" 2>&1
OUT=$R LONG_S=${LONG_S:-480} timeout -k 5 585 bash benchmarks/gpu_session.sh long:prq_int4:study:126
ls -la /tmp/kv/long/prq_int4-study-126 > "$R/trace_ls.txt" 2>&1
python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(json.dumps({k: m.get(k) for k in ('status','wall_s','host_max_rss_recording_bytes','max_memory_allocated_bytes','fine_stages','notes','tracer_drain_s')}, indent=1))" /tmp/kv/long/prq_int4-study-126/meta.json > "$R/meta_excerpt.json" 2>&1
cd "$OUT" && tar czf r.tgz r && rm -rf r
