import collections, sys
sys.path.insert(0, ".")
from tracers import scopes
cnt = collections.Counter()
orig_t = scopes.TagScope.__enter__
def t_enter(self):
    orig_t(self); cnt[("tag", self._category, self._same)] += 1
scopes.TagScope.__enter__ = t_enter
orig_s = scopes.StageScope.__enter__
def s_enter(self):
    orig_s(self); cnt[("stage", self._name)] += 1
scopes.StageScope.__enter__ = s_enter
from tracers import session as sess
orig_nc = sess.TraceSession._new_context
def nc(self):
    cnt["new_context"] += 1; orig_nc(self)
sess.TraceSession._new_context = nc
from kvprof.runner import TraceRequest, run_trace
from pathlib import Path
import shutil
shutil.rmtree("/tmp/kvc", ignore_errors=True)
run_trace(TraceRequest(method=sys.argv[1], integration="study", frames=int(sys.argv[2]), decode=False, out=Path("/tmp/kvc")))
for k, v in sorted(cnt.items(), key=lambda kv: -kv[1]): print(v, k)
