pip install --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
mkdir -p $OUT/r
nvidia-smi -L > $OUT/r/device.txt
S="python3 benchmarks/overhead.py --method prq_int4 --config wan-1.3b --frames 12 --no-decode --mode-timeout 100"
timeout 230 $S --modes untraced,history,kvprof --repeat 2 --out /tmp/kv/p12 > $OUT/r/prq_12_modes.json 2>$OUT/r/prq_12_modes.err
python3 - <<'PY'
import json, os
d = json.load(open(os.environ["OUT"] + "/r/prq_12_modes.json"))
for r in d["rows"]:
    print(r.get("mode"), r.get("rollout_wall_s"), r.get("close_s"), r.get("max_rss_bytes"), r.get("failed"))
for m, s in d["summary"].items():
    print(m, "median rollout", s["rollout_wall_s"]["median"], "ratio", s["rollout_over_untraced"])
PY
KV="python3 -m kvprof.cli"
timeout 100 $KV trace --method bf16 --config wan-1.3b --frames 252 --rolling 21 --no-decode --out /tmp/kv/long --run-id bf16-study-252f --json > $OUT/r/bf16_252.json 2>$OUT/r/bf16_252.err
timeout 200 $KV trace --method prq_int4 --integration staged --config wan-1.3b --frames 126 --rolling 21 --no-decode --out /tmp/kv/long --run-id prq_int4-staged-126f --json > $OUT/r/prq_staged_126.json 2>$OUT/r/prq_staged_126.err
for t in bf16-study-252f prq_int4-staged-126f; do
  python3 -c "
import json; m=json.load(open('/tmp/kv/long/$t/meta.json')); s=json.load(open('/tmp/kv/long/$t/summary.json'))
r = s.get('reconciliation') or {}
print('$t', m['status'], 'events', s.get('allocation_events'), 'peak', (s.get('peak') or {}).get('bytes'), 'mma', m.get('max_memory_allocated_bytes'), 'gap', r.get('max_abs_gap_bytes'), 'bounds', r.get('boundaries'), 'rss_rec', m.get('host_max_rss_recording_bytes'), 'wall', m.get('wall_s'))"
  du -sb /tmp/kv/long/$t | cut -f1
  timeout 40 python3 benchmarks/open_speed.py --trace /tmp/kv/long/$t --repeat 1 2>/dev/null | head -8
done
cd $OUT && tar czf r.tgz r && rm -rf r
