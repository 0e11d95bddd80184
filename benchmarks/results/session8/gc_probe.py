"""Is the traced rollout's extra time the garbage collector's? (session 8 diagnosis)
Rounds in one process (workload built once): untraced / kvprof, each with gc time and counts per generation."""
import gc, json, sys, time, shutil, statistics
from pathlib import Path
sys.path.insert(0, ".")
import torch
from kvprof.runner import TraceRequest, resolve, text_embeddings
from kvprof.workload.build import build_workload
from kvprof.workload.rollout import build_caches, make_method_factory, run_rollout
from tracers import TraceSession
method, frames, repeat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
modes = sys.argv[4].split(",")
r = resolve(TraceRequest(method=method, integration="study", frames=frames, decode=False))
work = build_workload(r.cfg, r.spec, r.method_cls, r.storage, r.params, r.device, lambda: text_embeddings(r.cfg, 0, None, r.device))
factory = make_method_factory(r.method_cls, r.storage, r.params)
stats = {"t": 0.0, "n": [0, 0, 0], "t_gen": [0.0, 0.0, 0.0], "start": 0.0}
def cb(phase, info):
    if phase == "start":
        stats["start"] = time.perf_counter()
    else:
        dt = time.perf_counter() - stats["start"]; g = info["generation"]
        stats["t"] += dt; stats["n"][g] += 1; stats["t_gen"][g] += dt
gc.callbacks.append(cb)
def prepare():
    work.caches.clear(); gc.collect()
    work.caches.extend(build_caches(r.cfg, r.spec, factory, r.device))
def rollout():
    with torch.inference_mode():
        run_rollout(work.model, work.embeddings, r.spec, work.caches, None)
    torch.cuda.synchronize() if torch.cuda.is_available() else None
prepare(); rollout()
rows = []
for i in range(repeat):
    for mode in modes:
        folder = Path(f"/tmp/kvgc/{mode}-{i}"); shutil.rmtree(folder, ignore_errors=True)
        traced = mode.startswith("kvprof")
        prepare()
        if mode.endswith("freeze"):
            gc.freeze()
        s = TraceSession(folder, {"run_id": "g"}, r.device, drain_at_checkpoints=False) if traced else None
        if s: s.start()
        if mode.endswith("nogc"):
            gc.disable()  # untraced_nogc too
        objs = len(gc.get_objects())
        stats.update(t=0.0, n=[0, 0, 0], t_gen=[0.0, 0.0, 0.0])
        t = time.perf_counter(); rollout(); wall = time.perf_counter() - t
        row = {"mode": mode, "round": i, "rollout_s": round(wall, 3), "gc_s": round(stats["t"], 3), "gc_n": list(stats["n"]),
               "gc_s_gen": [round(x, 3) for x in stats["t_gen"]], "objects_at_start": objs, "gc_objects_end": len(gc.get_objects())}
        gc.enable()
        if s: s.close("complete")
        if mode.endswith("freeze"):
            gc.unfreeze()
        shutil.rmtree(folder, ignore_errors=True)
        rows.append(row); print(json.dumps(row), flush=True)
med = {m: statistics.median(x["rollout_s"] for x in rows if x["mode"] == m) for m in modes}
print(json.dumps({"median_rollout_s": med, "ratio": {m: v / med[modes[0]] for m, v in med.items()}}))
