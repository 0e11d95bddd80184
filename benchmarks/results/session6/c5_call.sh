pip install --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
mkdir -p $OUT/r
nvidia-smi -L > $OUT/r/device.txt
timeout 540 python3 benchmarks/overhead.py --method prq_int4 --config wan-1.3b --frames 42 --no-decode --modes untraced,kvprof --repeat 1 --mode-timeout 300 --out /tmp/kv/ovp > $OUT/r/prq_42_overhead.json 2>$OUT/r/prq_42_overhead.err
python3 - <<'PY'
import json, os
d = json.load(open(os.environ["OUT"] + "/r/prq_42_overhead.json"))
for r in d["rows"]:
    print(json.dumps({k: v for k, v in r.items()})[:900])
print(json.dumps(d["summary"].get("kvprof", {}).get("rollout_over_untraced")))
PY
P=$(ls -d /tmp/kv/ovp/*/ | head -1)
python3 -c "import json,sys; m=json.load(open('$P/meta.json')); print(m['status'], m.get('host_max_rss_recording_bytes'), m.get('allocator_layout'), m.get('wall_s'))"
timeout 50 python3 benchmarks/open_speed.py --trace $P --repeat 1 > $OUT/r/prq_42_open.json 2>$OUT/r/prq_42_open.err; cat $OUT/r/prq_42_open.json | head -20
cd $OUT && tar czf r.tgz r && rm -rf r
