"""The traced rollout end to end on the tiny CPU config (issue 2 acceptance)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kvprof.read.analysis import find_peak, memory_events
from kvprof.workload.cache import CacheGeometry, LayerKVCache
from kvprof.workload.config import ModelConfig
from kvprof.workload.rollout import RolloutSpec, build_caches, cache_bytes
from kvprof.runner import TraceRequest, run_trace
from kvprof.read.trace import load_trace
from methods import get_method_class
from tracers.trace_io import NO_FREE


def test_summary_has_peak_attributed_to_categories(bf16_trace):
    summary = json.loads((bf16_trace / "summary.json").read_text())
    peak = summary["peak"]
    assert peak["bytes"] > 0
    assert peak["stage"].startswith("rollout")
    assert sum(peak["by_category"].values()) == peak["bytes"]
    assert sum(peak["by_stage"].values()) == peak["bytes"]
    assert peak["by_category"].get("unattributed", 0) < 0.01 * peak["bytes"]
    assert peak["by_category"]["weights"] > 0 and peak["by_category"]["kv_fp"] > 0
    # with decode on, the peak falls in the VAE decode while the whole cache is alive (DESIGN 3)
    assert peak["stage"].startswith("rollout/decode")


def test_peak_equals_independent_recount(bf16_trace):
    trace = load_trace(bf16_trace)
    a = trace.allocations
    events = sorted(
        [(int(q), int(b)) for q, b in zip(a["q_alloc"], a["bytes"])]
        + [(int(q), -int(b)) for q, b in zip(a["q_free"], a["bytes"]) if q != NO_FREE]
    )
    live = best = 0
    for _, delta in events:
        live += delta
        best = max(best, live)
    peak = find_peak(trace)
    assert peak.bytes == best == trace.summary.peak.bytes


def test_bf16_kv_bytes_match_formula_tiny(bf16_trace):
    cfg = ModelConfig.from_name("tiny")
    tokens = 12 * cfg.tokens_per_frame
    expected = cfg.num_layers * 2 * tokens * cfg.num_heads * cfg.head_dim * 4  # float32 on CPU
    kv = json.loads((bf16_trace / "summary.json").read_text())["kv"]
    assert kv["logical_bytes"] == kv["stored_bytes"] == kv["resident_bytes"] == expected
    trace = load_trace(bf16_trace)
    live_end = trace.allocations[(trace.allocations.q_free == NO_FREE) & (trace.allocations.category == "kv_fp")]
    # the cache was still alive at the last drain; its buffers are named
    assert set(live_end.name.dropna()) >= {"layer 0 / k", "layer 1 / v"} or live_end.empty


def test_bf16_kv_bytes_wan_1_3b_42_frames_on_meta():
    cfg = ModelConfig.from_name("wan-1.3b")
    spec = RolloutSpec(frames=42)
    bf16 = get_method_class("bf16")
    caches = build_caches(cfg, spec, lambda: bf16(), torch.device("meta"))
    logical, stored, resident = cache_bytes(caches)
    assert logical == stored == resident == 12_076_646_400
    assert resident == 30 * 2 * 42 * 1560 * 12 * 128 * 2


def test_stage_spans_nest_and_cover_the_rollout(bf16_trace):
    spans = load_trace(bf16_trace).spans.set_index("id")
    for sid, row in spans.iterrows():
        if row.parent:
            par = spans.loc[row.parent]
            assert par.q_start < row.q_start and row.q_end < par.q_end, row.path
    rollout = spans[spans.path == "rollout"].iloc[0]
    chunks = spans[spans.name == "chunk"]
    assert list(chunks["index"]) == [0, 1, 2, 3]
    assert (chunks.q_start > rollout.q_start).all() and (chunks.q_end < rollout.q_end).all()
    for cid in chunks.index:
        passes = spans[spans.parent == cid]
        assert list(passes.path.str.rsplit("/", n=1).str[-1]) == ["denoise[0]", "denoise[1]", "denoise[2]", "denoise[3]", "refresh"]
        for pid in passes.index:
            layers = spans[spans.parent == pid]
            assert list(layers["index"]) == [0, 1]
            for lid in layers.index:
                kinds = list(spans[spans.parent == lid].name)
                assert kinds == ["kv_write", "kv_read", "attention", "cross_attn", "ffn"]


def _geo(**kw) -> CacheGeometry:
    base = dict(batch=1, heads=2, head_dim=4, tokens_per_frame=2, capacity_frames=12, attn_window_frames=21)
    base.update(kw)
    return CacheGeometry(**base)


class _Call:
    def __init__(self, chunk, pass_name, step, layer=0, num_layers=1):
        self.chunk, self.pass_name, self.step, self.layer, self.num_layers = chunk, pass_name, step, layer, num_layers


def _kv(value: float, tokens: int = 6):
    t = torch.full((1, tokens, 2, 4), value)
    return t, t.clone() + 0.5


def test_refresh_rewrites_exactly_the_chunk_slots():
    cache = LayerKVCache(0, 1, get_method_class("bf16")(), "study", _geo(), torch.float32, torch.device("cpu"))
    q = torch.randn(1, 6, 2, 4)
    for c in range(2):
        for s in range(4):
            cache.attend(q, *_kv(10 * c + s), _Call(c, "denoise", s))
        cache.attend(q, *_kv(100 + c), _Call(c, "refresh", None))
    k = cache.buffer_k[0, :, 0, 0]
    assert torch.equal(k[:6], torch.full((6,), 100.0))
    assert torch.equal(k[6:12], torch.full((6,), 101.0))
    assert torch.equal(k[12:], torch.zeros(12))  # slots of chunks not generated stay untouched


@pytest.mark.parametrize("integration", ["study", "staged"])
def test_rolling_eviction_keeps_sink_and_recent_frames(integration):
    geo = _geo(capacity_frames=9, sink_frames=3, rolling=True)
    method = get_method_class("bf16")() if integration == "study" else get_method_class("bf16")()
    cache = LayerKVCache(0, 1, method, integration, geo, torch.float32, torch.device("cpu"))
    q = torch.randn(1, 6, 2, 4)
    for c in range(5):
        for s in range(4):
            cache.attend(q, *_kv(c), _Call(c, "denoise", s))
        cache.attend(q, *_kv(c), _Call(c, "refresh", None))
    per_frame = cache.buffer_k[0, ::2, 0, 0]  # 2 tokens per frame
    assert per_frame.tolist() == [0.0] * 3 + [3.0] * 3 + [4.0] * 3
    assert cache.written == 18


def test_failure_mid_rollout_leaves_failed_trace(tmp_path, monkeypatch):
    original = LayerKVCache.attend

    def broken(self, q, k, v, call):
        if call.chunk == 1 and call.layer == 1:
            raise RuntimeError("injected failure")
        return original(self, q, k, v, call)

    monkeypatch.setattr(LayerKVCache, "attend", broken)
    with pytest.raises(RuntimeError, match="injected failure"):
        run_trace(TraceRequest(method="bf16", out=tmp_path, run_id="broken", decode=False))
    trace = load_trace(tmp_path / "broken")
    assert trace.status == "failed"
    assert "injected failure" in trace.meta["error"]
    assert trace.meta["failed_stage"].startswith("rollout/chunk[1]/denoise[0]/layer[1]")
    assert find_peak(trace).bytes > 0
    assert (trace.spans.name == "chunk").sum() == 2
    assert json.loads((tmp_path / "broken" / "summary.json").read_text())["status"] == "failed"


def test_timeline_reconstructs_live_bytes(bf16_trace):
    trace = load_trace(bf16_trace)
    ev = memory_events(trace)
    assert (ev["live"] >= 0).all()
    assert int(ev["live"].iloc[-1]) == int(trace.allocations.loc[trace.allocations.q_free == NO_FREE, "bytes"].sum())
    assert np.all(np.diff(ev["q"].to_numpy()) > 0)  # exact order, no ties


def test_flowcache_native_skips_blocks_but_never_on_refresh(trace_factory):
    always = load_trace(trace_factory(method="flowcache_native", params={"reuse_threshold": "1e9"}))
    never = load_trace(trace_factory(method="flowcache_native", params={"reuse_threshold": "0"}))
    for trace, reused in ((always, 3 * 4), (never, 0)):
        spans = trace.spans
        assert (spans.name == "reuse").sum() == reused  # every denoising step after the first of a chunk
        refresh_layers = spans[(spans.name == "layer") & spans.path.str.contains("/refresh/")]
        assert len(refresh_layers) == 4 * 2  # the refresh pass always computes every layer


@pytest.mark.parametrize("method", ["rtn_int4_recent2", "age_tier_int4"])
def test_rolling_study_eviction_keeps_written_tokens_for_policies(method):
    geo = _geo(capacity_frames=9, sink_frames=3, rolling=True)
    cache = LayerKVCache(0, 1, get_method_class(method)(), "study", geo, torch.float32, torch.device("cpu"))
    q = torch.randn(1, 6, 2, 4)
    for c in range(4):
        for s in range(4):
            cache.attend(q, *_kv(c + 1), _Call(c, "denoise", s))
        cache.attend(q, *_kv(c + 1), _Call(c, "refresh", None))
    call = cache.kv_call(_Call(3, "refresh", None), 12, 18)
    k, _ = cache.method.decode(cache.state, call)
    per_frame = k[0, ::2, 0, 0]
    # sink chunk (value 1) and the last two chunks survive the roll; nothing reads back as zeros
    assert torch.allclose(per_frame[:3], torch.full((3,), 1.0), atol=0.2)
    assert torch.allclose(per_frame[6:9], torch.full((3,), 4.0), atol=0.5)
