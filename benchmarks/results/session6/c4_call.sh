pip install --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
mkdir -p $OUT/r
timeout 60 python3 benchmarks/stage_cost.py --stages 20000 > $OUT/r/stage_cost.json 2>$OUT/r/stage_cost.err; cat $OUT/r/stage_cost.json
timeout 330 python3 benchmarks/overhead.py --method bf16 --config wan-1.3b --frames 42 --no-decode --modes untraced,kvprof,history --repeat 3 --out /tmp/kv/ovb > $OUT/r/bf16_42_overhead.json 2>$OUT/r/bf16_42_overhead.err
timeout 100 python3 benchmarks/overhead.py --method bf16 --config wan-1.3b --frames 42 --no-decode --modes profiler --repeat 1 --mode-timeout 80 --out /tmp/kv/ovprof > $OUT/r/bf16_42_profiler.json 2>$OUT/r/bf16_42_profiler.err
python3 - <<'PY'
import json, os
for f in ("bf16_42_overhead", "bf16_42_profiler"):
    d = json.load(open(os.environ["OUT"] + f"/r/{f}.json"))
    for m, s in d["summary"].items():
        print(m, {k: (v["median"] if isinstance(v, dict) else v) for k, v in s.items()})
    for r in d["rows"]:
        print(r.get("mode"), r.get("rollout_wall_s"), r.get("close_s"), r.get("max_abs_gap_bytes"), r.get("peak_bytes"), r.get("max_memory_allocated"), r.get("timed_out"), r.get("failed"))
PY
for fr in 126; do timeout 120 python3 -m kvprof.cli trace --method bf16 --config wan-1.3b --frames $fr --rolling 21 --no-decode --out /tmp/kv/long --run-id bf16-study-${fr}f --json > $OUT/r/bf16_${fr}.json 2>$OUT/r/bf16_${fr}.err; tail -2 $OUT/r/bf16_${fr}.err; done
ls /tmp/kv/long
cd $OUT && tar czf r.tgz r && rm -rf r
