"""All 33 methods x both integrations through the traced tiny rollout (issue 3 acceptance)."""
from __future__ import annotations

import pytest

from kvprof.read.analysis import live_at
from kvprof.runner import TraceRequest, run_trace
from kvprof.read.trace import load_trace
from methods import method_names
from tracers.categories import KV_CATEGORIES


@pytest.mark.parametrize("integration", ["study", "staged"])
@pytest.mark.parametrize("method", method_names())
def test_method_traces_and_bytes_reconcile(method, integration, tmp_path):
    outcome = run_trace(
        TraceRequest(method=method, integration=integration, frames=6, out=tmp_path, run_id="m", decode=False)
    )
    assert outcome.status == "complete"
    trace = load_trace(outcome.path)
    last = trace.kv.iloc[-1]
    live = live_at(trace, int(last.q))
    live_kv = int(live[live.category.isin(KV_CATEGORIES)]["bytes"].sum())
    # resident bytes (sum of the method's state tensors) = what the tracker sees live in kv_* then
    assert int(last.resident_bytes) == live_kv
    assert outcome.summary.kv.resident_bytes == live_kv
    assert int(last.stored_bytes) <= int(last.resident_bytes) or integration == "study"
    if method == "bf16":
        assert last.logical_bytes == last.resident_bytes == last.stored_bytes
    peak = outcome.summary.peak
    assert sum(peak.by_category.values()) == peak.bytes
