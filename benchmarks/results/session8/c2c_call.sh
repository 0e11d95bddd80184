#!/bin/bash
# Session 8, call 2c (issue 15 diagnosis): the garbage collector's share of the traced rollout's extra time.
set -u
R=$OUT/r; mkdir -p "$R"
if [ ! -f /tmp/site/.done ]; then
  rm -rf /tmp/site; pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > "$R/pip.log" 2>&1 && touch /tmp/site/.done
fi
export PYTHONPATH=/tmp/site:$PWD
timeout 400 python3 .carry_tools/gc_probe.py prq_int4 12 2 untraced,kvprof,kvprof_nogc,untraced_nogc,kvprof_freeze > "$R/gc_prq12.jsonl" 2>"$R/gc.err"
cd "$OUT" && tar czf r.tgz r && rm -rf r
