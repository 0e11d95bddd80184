"""cProfile of one traced (or untraced) prq_int4 study rollout, workload built once (session 8 diagnosis)."""
import cProfile, gc, io, pstats, sys, time, shutil
from pathlib import Path
sys.path.insert(0, "/work/main") if Path("/work/main").exists() else sys.path.insert(0, ".")
import torch
from kvprof.runner import TraceRequest, resolve, text_embeddings
from kvprof.workload.build import build_workload
from kvprof.workload.rollout import build_caches, make_method_factory, run_rollout
from tracers import TraceSession
method, frames = sys.argv[1], int(sys.argv[2])
r = resolve(TraceRequest(method=method, integration="study", frames=frames, decode=False))
work = build_workload(r.cfg, r.spec, r.method_cls, r.storage, r.params, r.device, lambda: text_embeddings(r.cfg, 0, None, r.device))
factory = make_method_factory(r.method_cls, r.storage, r.params)
def rollout():
    work.caches.clear(); gc.collect()
    work.caches.extend(build_caches(r.cfg, r.spec, factory, r.device))
    with torch.inference_mode():
        run_rollout(work.model, work.embeddings, r.spec, work.caches, None)
    torch.cuda.synchronize()
rollout()
for traced in (False, True):
    folder = Path(f"/tmp/kvprof-prof-{traced}"); shutil.rmtree(folder, ignore_errors=True)
    s = TraceSession(folder, {"run_id": "p"}, r.device, drain_at_checkpoints=False) if traced else None
    if s: s.start()
    pr = cProfile.Profile(); t = time.perf_counter(); pr.enable(); rollout(); pr.disable()
    wall = time.perf_counter() - t
    if s: s.close("complete")
    out = io.StringIO(); pstats.Stats(pr, stream=out).sort_stats("tottime").print_stats(45)
    print(f"===== traced={traced} wall under cProfile {wall:.2f} s"); print(out.getvalue())
