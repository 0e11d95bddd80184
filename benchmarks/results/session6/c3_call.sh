pip install --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
mkdir -p $OUT/r; cd $PWD
git log --oneline -1 > $OUT/r/commit.txt 2>/dev/null || true
timeout 60 python3 benchmarks/stage_cost.py --stages 20000 > $OUT/r/stage_cost.json 2>$OUT/r/stage_cost.err; cat $OUT/r/stage_cost.json
timeout 300 python3 benchmarks/overhead.py --method bf16 --config wan-1.3b --frames 42 --no-decode --modes untraced,kvprof,history --repeat 3 --out /tmp/kv/ovb > $OUT/r/bf16_42_overhead.json 2>$OUT/r/bf16_42_overhead.err
python3 - <<'PY'
import json, os
d = json.load(open(os.environ["OUT"] + "/r/bf16_42_overhead.json"))
for m, s in d["summary"].items():
    print(m, {k: (v["median"] if isinstance(v, dict) else v) for k, v in s.items()})
for r in d["rows"]:
    print(r.get("mode"), r.get("rollout_wall_s"), r.get("close_s"), r.get("max_abs_gap_bytes"), r.get("peak_bytes"), r.get("max_memory_allocated"), r.get("failed"))
PY
timeout 330 python3 benchmarks/overhead.py --mode kvprof --method prq_int4 --config wan-1.3b --frames 42 --no-decode --out /tmp/kv/ovp > $OUT/r/prq_42_kvprof.json 2>$OUT/r/prq_42_kvprof.err; cut -c1-900 $OUT/r/prq_42_kvprof.json
P=$(ls -d /tmp/kv/ovp/*/ | head -1)
python3 -c "import json,sys; m=json.load(open('$P/meta.json')); print(m['status'], m.get('host_max_rss_recording_bytes'), m.get('allocator_layout'), m.get('wall_s'))"
ls -la $P
timeout 150 python3 benchmarks/open_speed.py --trace $P --repeat 1 > $OUT/r/prq_42_open.json 2>$OUT/r/prq_42_open.err; cat $OUT/r/prq_42_open.json | head -40
cd $OUT && tar czf r.tgz r && rm -rf r
