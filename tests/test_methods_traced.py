"""All 33 methods x both integrations through the traced tiny rollout (issue 3 acceptance).

Both integrations are held to the same byte facts (issue 14: `study` used to be let off): the KV
bytes the cache reports are the bytes the tracker sees live, the logical size is the
configuration's, and the categories are the method's kind (a plain buffer for lossless methods,
codes and their metadata otherwise).
"""
from __future__ import annotations

import pytest

from kvprof.read.analysis import live_at
from kvprof.runner import TraceRequest, run_trace
from kvprof.read.trace import load_trace
from methods import method_names
from tracers.categories import KV_CATEGORIES

FRAMES = 6


def _logical_kv_bytes(config: dict, frames: int) -> int:
    """K and V of every layer for `frames` frames at the config's dtype (tiny: float32)."""
    itemsize = {"float32": 4, "bfloat16": 2}[config["dtype"]]
    return config["num_layers"] * 2 * frames * config["tokens_per_frame"] * config["dim"] * itemsize


@pytest.mark.parametrize("integration", ["study", "staged"])
@pytest.mark.parametrize("method", method_names())
def test_method_traces_and_bytes_reconcile(method, integration, tmp_path):
    outcome = run_trace(
        TraceRequest(method=method, integration=integration, frames=FRAMES, out=tmp_path, run_id="m", decode=False)
    )
    assert outcome.status == "complete"
    trace = load_trace(outcome.path)
    facts = trace.meta["method_facts"]
    last = trace.kv.iloc[-1]
    logical, stored, resident = int(last.logical_bytes), int(last.stored_bytes), int(last.resident_bytes)
    live = live_at(trace, int(last.q))
    kv_live = {c: int(b) for c, b in live[live.category.isin(KV_CATEGORIES)].groupby("category")["bytes"].sum().items() if b}
    # resident bytes (sum of the method's state tensors) = what the tracker sees live in kv_* then
    assert resident == sum(kv_live.values())
    assert outcome.summary.kv.resident_bytes == resident
    assert logical == _logical_kv_bytes(trace.meta["config"], FRAMES)
    assert stored <= resident and stored <= logical
    peak = outcome.summary.peak
    assert sum(peak.by_category.values()) == peak.bytes
    peak_kv = {c for c, b in peak.by_category.items() if c in KV_CATEGORIES and b}
    if facts["lossless"]:
        assert logical == stored == resident
        assert set(kv_live) == peak_kv == {"kv_fp"}
        return
    if not facts["position_dependent"]:  # (a recent window may keep these 2 chunks all full precision)
        assert {"kv_codes", "kv_meta"} <= peak_kv  # a quantized cache, whatever the integration
    if "kv_codes" in kv_live:
        assert "kv_meta" in kv_live and stored < logical
        if integration == "study":  # the published hook keeps one code per int8 byte: more than the bits
            assert stored < resident


def test_prq_slices_are_tagged_once_per_loop(tmp_path):
    """PRQ walks its groups in slices; the slices' scratch is tagged once around each loop, not once a
    slice (a tag per slice was ~500k tags, ~2 host seconds, at 42 frames on wan-1.3b: issue 15). Slicing
    ten times finer must leave every allocation's bytes, category and stage as they were, and open no
    more contexts (the high bits of the order key count them)."""
    rows, contexts = {}, {}
    for groups in (1, 10):
        outcome = run_trace(TraceRequest(method="prq_int4", frames=FRAMES, out=tmp_path, run_id=f"g{groups}",
                                         decode=False, params={"slice_groups": str(groups)}))
        trace = load_trace(outcome.path)
        allocs = trace.allocations.sort_values("q_alloc")
        paths = trace.spans.set_index("id")["path"]
        rows[groups] = allocs.assign(stage=allocs["span_id"].map(paths))[["category", "stage"]].value_counts()
        contexts[groups] = int(allocs["q_alloc"].max()) >> 32
        assert trace.meta["fine_stages"]["skipped"] > 0  # the per-slice `residual` stage ran, left out
    assert contexts[1] == contexts[10]
    kv_scratch = {g: r[r.index.get_level_values("category") == "kv_scratch"].sum() for g, r in rows.items()}
    assert kv_scratch[1] > kv_scratch[10] > 0  # finer slices: more scratch allocations, same tags
    assert set(rows[1].index) == set(rows[10].index)  # the same (category, stage) pairs either way
