#!/bin/bash
# Session 8, call 2b (issue 15 diagnosis): stage/tag/context counts and a cProfile of prq_int4 study 12 f.
set -u
R=$OUT/r; mkdir -p "$R"
if [ ! -f /tmp/site/.done ]; then
  rm -rf /tmp/site; pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > "$R/pip.log" 2>&1 && touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site:$PWD
timeout 200 python3 .carry_tools/count_tags.py prq_int4 12 > "$R/counts_prq12.txt" 2>"$R/counts.err"
timeout 300 python3 .carry_tools/prof_rollout.py prq_int4 12 > "$R/prof_prq12.txt" 2>"$R/prof.err"
cd "$OUT" && tar czf r.tgz r && rm -rf r
