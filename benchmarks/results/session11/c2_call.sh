#!/bin/bash
# Session 11, call 2: call 1 was cut at the call's 600 s limit after its sweeps had finished (the one-GPU sweeps were
# awaited with a bare `wait`, which also waited for the clock sampler: fixed after, tests/test_gpu_session.py). The
# machine was still warm: this one-liner brought back the sweeps' manifests and compared them.
# Device call: run(kind="nvidia-h100-x4", timeout_s=60, command=...)
export PYTHONPATH=/tmp/site:$PWD; ls /tmp/kv/ 2>&1; mkdir -p $OUT/r; for s in /tmp/kv/one* /tmp/kv/many; do [ -f $s/manifest.json ] && cp $s/manifest.json $OUT/r/$(basename $s).manifest.json; done; python3 benchmarks/sweep_speedup.py compare --one /tmp/kv/one* --many /tmp/kv/many > $OUT/r/sweep_speedup.md 2>&1; ps aux | grep -c "kvprof\|dask" ; ps aux | grep -v grep | grep "kvprof\|dask\|python" | head -20 > $OUT/r/ps.txt; cd $OUT && tar czf r.tgz r && rm -rf r
