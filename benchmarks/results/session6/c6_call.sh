pip install --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
mkdir -p $OUT/r
nvidia-smi -L > $OUT/r/device.txt; git log --oneline -1 > $OUT/r/commit.txt 2>/dev/null
timeout 60 python3 benchmarks/stage_cost.py --stages 20000 > $OUT/r/stage_cost.json 2>$OUT/r/stage_cost.err; cat $OUT/r/stage_cost.json
S="python3 benchmarks/overhead.py --method prq_int4 --config wan-1.3b --frames 12 --no-decode --mode-timeout 120"
timeout 200 $S --modes untraced,kvprof --repeat 2 --out /tmp/kv/p12 > $OUT/r/prq_12_native.json 2>$OUT/r/prq_12_native.err
KVPROF_RECORDER=python timeout 130 $S --modes kvprof --repeat 2 --out /tmp/kv/p12py > $OUT/r/prq_12_python.json 2>$OUT/r/prq_12_python.err
timeout 150 python3 benchmarks/overhead.py --method bf16 --config wan-1.3b --frames 42 --no-decode --modes untraced,kvprof --repeat 2 --out /tmp/kv/ovb > $OUT/r/bf16_42_overhead.json 2>$OUT/r/bf16_42_overhead.err
python3 - <<'PY'
import json, os
for f in ("prq_12_native", "prq_12_python", "bf16_42_overhead"):
    try:
        d = json.load(open(os.environ["OUT"] + f"/r/{f}.json"))
    except Exception as e:
        print(f, "FAILED", e); continue
    for r in d["rows"]:
        print(f, r.get("mode"), r.get("rollout_wall_s"), r.get("close_s"), r.get("events"), r.get("max_abs_gap_bytes"), r.get("recorder"), r.get("failed"))
    for m, s in d["summary"].items():
        print(f, m, "median rollout", s["rollout_wall_s"]["median"], "ratio", s["rollout_over_untraced"])
PY
P=$(ls -d /tmp/kv/p12/*/ | head -1)
python3 -c "
import pandas as pd
s = pd.read_parquet('$P/spans.parquet'); g = s.groupby('name').agg(n=('id','size'), host=('host_ms','sum'), dev=('device_ms','sum'), syncs=('host_syncs','sum'))
print(g.sort_values('host').tail(12))"
cd $OUT && tar czf r.tgz r && rm -rf r
