set -x
pip install --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi -L
python3 - <<'PY' 2>&1 | tail -20
import time, torch
t=time.perf_counter()
from tracers import native
try:
    lib = native.load(cuda=True); print("native cuda lib built in", time.perf_counter()-t)
except Exception as e:
    print("NATIVE FAIL", e)
PY
for rec in native allocator; do
python3 - $rec <<'PY' 2>&1 | tail -25
import sys, time, json, resource, torch
rec = sys.argv[1]
from tracers import TraceSession, stage, tag
from pathlib import Path
import shutil
d = Path(f"/tmp/kv/probe-{rec}"); shutil.rmtree(d, ignore_errors=True)
dev = torch.device("cuda", 0)
x = torch.randn(1024, 1024, device=dev)
s = TraceSession(d, {"run_id": rec}, dev, tracker=rec, drain_at_checkpoints=False)
s.start()
t = time.perf_counter()
with stage("rollout"):
    keep = []
    for c in range(20):
        with stage("chunk", c):
            for l in range(30):
                with stage("layer", l), tag("kv_scratch"):
                    ys = [torch.empty(int(1000 + 997*i*l) % (5<<20) + 1, device=dev) for i in range(50)]
                    z = (x @ x).sum()
                    del ys
                with tag("kv_fp"):
                    keep.append(torch.empty(300_000 + c*1000 + l, device=dev))
            s.checkpoint()
torch.cuda.synchronize()
roll = time.perf_counter() - t
t = time.perf_counter(); s.close("complete"); close = time.perf_counter() - t
from kvprof.read.trace import load_trace
from kvprof.read.analysis import find_peak, reconcile
tr = load_trace(d); pk = find_peak(tr); rc = reconcile(tr, pk)
print(json.dumps({"rec": rec, "rollout_s": roll, "close_s": close, "rows": len(tr.allocations), "peak": pk.bytes,
  "mma": tr.meta["max_memory_allocated_bytes"], "gap": rc.max_abs_gap_bytes, "bounds": rc.boundaries,
  "layout": tr.meta["allocator_layout"], "notes": tr.meta["notes"], "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024}))
PY
done
timeout 200 python3 -m kvprof trace --method prq_int4 --frames 21 --no-decode --out /tmp/kv/p1 --run-id prq21 --json > $OUT/prq21.json 2>$OUT/prq21.err; tail -3 $OUT/prq21.err
python3 -c "
import json; from kvprof.read.trace import load_trace; t=load_trace('/tmp/kv/p1/prq21'); m=t.meta
print(json.dumps({k:m.get(k) for k in ('max_memory_allocated_bytes','allocator_layout','notes','wall_s','tracer_drain_s')}))
import os; print('disk', sum(os.path.getsize(os.path.join(r,f)) for r,_,fs in os.walk('/tmp/kv/p1/prq21') for f in fs), 'rows', len(t.allocations))
"
python3 -c "import json; d=json.load(open('$OUT/prq21.json')); print({k: d.get(k) for k in ('status','peak','reconciliation','allocation_events')})" 2>&1 | cut -c1-600
