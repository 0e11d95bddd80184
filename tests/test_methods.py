"""The 33 registered methods: interface, byte accounting, policies against METHODS.md."""
from __future__ import annotations

import contextlib
import math

import pytest
import torch

import methods
from methods import KVCall, Marks, MethodError, get_method_class, method_names
from methods.flowcache import EVICTED, HIGH, LOW, ResidualReuse, layer_budget, prune_counts, recent_count
from methods.quant import GROUP_SIZE

TABLE = [
    "bf16", "rtn_int4", "rtn_int2", "rtn_k2_v4", "rtn_int4_recent2", "rtn_int4_refresh",
    "kivi_int4", "kivi_int2", "kivi_int4_refresh", "kivi_k2_v4",
    "quarot_kv_int4", "quarot_kv_int2", "quarot_kv_int4_recent2", "quarot_kv_int4_refresh",
    "prq_int4", "prq_int2", "qaq_int4", "qaq_int2", "age_tier_int4", "age_tier_int2", "tptq_int2",
    "spatial_mixed_fg_rtn_int4_bg_rtn_int2", "spatial_mixed_fg_rtn_int4_bg_rtn_int4",
    "spatial_mixed_fg_kivi_int4_bg_kivi_int2", "spatial_mixed_fg_quarot_kv_int4_bg_rtn_int2",
    "flowcache_hybrid_int2", "flowcache_adaptive_int2", "flowcache_prune_int4", "flowcache_prune_int2",
    "flowcache_soft_prune_int4", "flowcache_soft_prune_int2", "flowcache_native", "flowcache_native_soft_prune_int4",
]  # fmt: skip
STORAGES = ("int8", "int16", "packed")
TPF = 24  # tokens per frame of the tiny config


def _call(written=72, layer=0, num_layers=2, tpf=TPF, pass_name="refresh") -> KVCall:
    return KVCall(layer, num_layers, 1, pass_name, None, max(0, written - 24), written, written, 96, tpf)


def _kv(n=72, written=None, b=1, h=2, d=32, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(b, n, h, d, generator=g) * torch.linspace(0.2, 3.0, d)
    v = torch.randn(b, n, h, d, generator=g)
    if written is not None:  # the study's buffer: unwritten slots are zeros
        k[:, written:] = 0
        v[:, written:] = 0
    return k.to(dtype), v.to(dtype)


def _storage_bytes(state) -> int:
    seen: dict[int, int] = {}
    for t in state.tensors.values():
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


# ---------------------------------------------------------------- registry and flags
def test_registry_holds_the_33_methods_in_table_order():
    assert len(method_names()) == 33
    assert method_names() == TABLE


def test_class_flags():
    for name in TABLE:
        cls = get_method_class(name)
        assert cls.cadence == ("refresh_only" if name.endswith("_refresh") else "per_step"), name
        assert cls.lossless == (name in ("bf16", "flowcache_native")), name
        assert cls.reuses_residuals == name.startswith("flowcache_native"), name
        dependent = (
            name.endswith("_recent2") or name.startswith(("age_tier", "tptq", "spatial"))
            or (name.startswith("flowcache") and name != "flowcache_native")
        )
        assert cls.position_dependent == dependent, name
        for key, p in cls.params.items():  # every default passes its own check
            assert p.check(p.default), (name, key)


def test_params_are_overridable_and_checked():
    m = get_method_class("flowcache_prune_int2")(rho_ret="0.3", budget_first="0.7")
    assert m["rho_ret"] == 0.3 and m["budget_first"] == 0.7 and m["rho_imp"] == 0.1
    assert get_method_class("flowcache_prune_int2").params["rho_ret"].default == 0.30
    assert get_method_class("flowcache_soft_prune_int2").params["rho_ret"].default == 0.45
    assert get_method_class("spatial_mixed_fg_kivi_int4_bg_kivi_int2")(mode="hybrid")["mode"] == "hybrid"
    assert get_method_class("rtn_int4_recent2")(recent_chunks="1")["recent_chunks"] == 1
    with pytest.raises(MethodError, match="rho_ret"):
        get_method_class("flowcache_prune_int4")(rho_ret="1.5")
    with pytest.raises(MethodError, match="mode"):
        get_method_class("spatial_mixed_fg_rtn_int4_bg_rtn_int2")(mode="kmeans")
    with pytest.raises(MethodError, match="no parameter"):
        get_method_class("rtn_int4")(rho_ret=0.1)


# ---------------------------------------------------------------- every method, every storage
@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("name", TABLE)
def test_encode_decode_contract(name, storage):
    for n, written in ((72, 72), (96, 72)):  # written < capacity: trailing zeros, as the study did
        for dtype in (torch.float32, torch.bfloat16):
            k, v = _kv(n, written, dtype=dtype)
            m = get_method_class(name)(storage=storage)
            call = _call(written)
            state = m.encode(k, v, call)
            kd, vd = m.decode(state, call)
            for out, ref in ((kd, k), (vd, v)):
                assert out.shape == ref.shape and out.dtype == dtype
                assert torch.isfinite(out).all()
                assert _rel(out, ref) < (1.0 if "prune" in name else 0.8)
            assert state.resident_bytes() == _storage_bytes(state)
            for t_name, t in state.tensors.items():  # no state tensor is a view into more
                assert t.untyped_storage().nbytes() == t.numel() * t.element_size(), t_name
                assert state.categories[t_name] in ("kv_codes", "kv_meta", "kv_fp"), t_name
                if state.categories[t_name] == "kv_codes":
                    assert t_name in state.bits and not t.is_floating_point(), t_name
                    assert state.extra["codes_per_element"][t_name] == (
                        8 // state.bits[t_name] if storage == "packed" else 1
                    )
            assert state.logical_bytes() == 2 * n * 2 * 32 * 2
            assert state.stored_bytes() <= state.resident_bytes()
            if state.bits:  # packed codes are exactly the stored bits; one per int8/int16 is more
                if storage == "packed":
                    assert state.stored_bytes() == state.resident_bytes()
                else:
                    assert state.stored_bytes() < state.resident_bytes()


@pytest.mark.parametrize("name", TABLE)
def test_init_call_on_the_zero_buffer(name):
    # The study integration encodes the zero buffer first, with nothing written yet.
    zeros = torch.zeros(1, 96, 2, 32, dtype=torch.bfloat16)
    call = KVCall(0, 2, -1, "init", None, 0, 0, 0, 96, TPF)
    m = get_method_class(name)(storage="packed")
    kd, vd = m.decode(m.encode(zeros, zeros, call), call)
    assert kd.shape == zeros.shape and kd.dtype == torch.bfloat16
    assert torch.equal(kd, zeros) and torch.equal(vd, zeros)


@pytest.mark.parametrize("name", TABLE)
def test_packed_and_int16_decode_like_int8(name):
    k, v = _kv(96, 75)
    call = _call(75)
    outs = {}
    for storage in STORAGES:
        m = get_method_class(name)(storage=storage)
        outs[storage] = m.decode(m.encode(k, v, call), call)
    for storage in ("int16", "packed"):
        assert torch.equal(outs[storage][0], outs["int8"][0]) and torch.equal(outs[storage][1], outs["int8"][1])


@pytest.mark.parametrize("name", TABLE)
def test_decode_range_matches_decode(name):
    k, v = _kv(77, b=2)
    call = _call(77)
    m = get_method_class(name)(storage="packed")
    state = m.encode(k, v, call)
    kd, vd = m.decode(state, call)
    for a, b in ((0, 77), (5, 50), (16, 32), (70, 77), (40, 41)):
        kr, vr = m.decode_range(state, call, a, b)
        assert torch.equal(kr, kd[:, a:b]) and torch.equal(vr, vd[:, a:b]), (a, b)


def test_decode_returns_fresh_writable_tensors():
    # The study integration writes the new chunk into what decode returned.
    for name in ("rtn_int4", "kivi_int4", "prq_int4", "qaq_int4", "rtn_int4_recent2", "age_tier_int2"):
        k, v = _kv()
        m = get_method_class(name)()
        state = m.encode(k, v, _call())
        before = {n: t.clone() for n, t in state.tensors.items()}
        kd, vd = m.decode(state, _call())
        kd.fill_(7.0)
        vd.fill_(7.0)
        assert all(torch.equal(before[n], t) for n, t in state.tensors.items()), name


@pytest.mark.parametrize(
    "low,high", [("rtn_int2", "rtn_int4"), ("kivi_int2", "kivi_int4"), ("quarot_kv_int2", "quarot_kv_int4"),
                 ("prq_int2", "prq_int4"), ("qaq_int2", "qaq_int4"), ("age_tier_int2", "age_tier_int4")],
)  # fmt: skip
def test_four_bits_beat_two_bits(low, high):
    k, v = _kv(96, 72)
    errs = {}
    for name in (low, high):
        m = get_method_class(name)()
        kd, vd = m.decode(m.encode(k, v, _call()), _call())
        errs[name] = _rel(kd, k) + _rel(vd, v)
    assert errs[high] < errs[low]
    if low.startswith("prq"):
        m = get_method_class("rtn_int4")()
        kd, vd = m.decode(m.encode(k, v, _call()), _call())
        assert errs[high] < 0.1 * (_rel(kd, k) + _rel(vd, v))


def test_marks_name_inner_stages_and_the_dequant_category():
    class Recorder(Marks):
        def __init__(self):
            self.stages, self.categories = set(), []

        def stage(self, name, fine=False):
            self.stages.add(name)
            return contextlib.nullcontext()

        def category(self, category):
            self.categories.append(category)
            return contextlib.nullcontext()

    expect = {
        "rtn_int4": {"quantize", "dequantize"},
        "quarot_kv_int4": {"rotate", "quantize", "dequantize"},
        "prq_int4": {"quantize", "residual", "dequantize"},
        "qaq_int4": {"outliers", "quantize", "dequantize"},
        "age_tier_int4": {"plan", "gather", "quantize", "dequantize", "scatter"},
        "tptq_int2": {"plan", "gather", "residual", "outliers", "scatter"},
        "spatial_mixed_fg_rtn_int4_bg_rtn_int2": {"plan", "gather", "scatter"},
        "flowcache_soft_prune_int4": {"plan", "gather", "pool", "scatter"},
    }
    k, v = _kv()
    for name, stages in expect.items():
        rec = Recorder()
        m = get_method_class(name)(marks=rec)
        m.decode(m.encode(k, v, _call()), _call())
        assert stages <= rec.stages, (name, stages - rec.stages)
        assert {"kv_scratch", "kv_dequant"} <= set(rec.categories), name


# ---------------------------------------------------------------- recent windows and tiers
def test_recent_window_counts_back_from_written():
    tpf = 4  # a rollout chunk = 3 frames = 12 tokens; window = 2 chunks = 24 tokens
    k, v = _kv(96, 60)
    m = get_method_class("rtn_int4_recent2")()
    state = m.encode(k, v, _call(60, tpf=tpf))
    assert state.extra["recent_tokens"] == (36, 60)
    assert torch.equal(state.tensors["k_recent"], k[:, 36:60])
    assert state.categories["k_recent"] == "kv_fp" and state.tensors["k_recent"].dtype == k.dtype
    assert state.tensors["k_codes"].shape[1] == math.ceil((96 - 24) / GROUP_SIZE)
    kd, _ = m.decode(state, _call(60, tpf=tpf))
    assert torch.equal(kd[:, 36:60], k[:, 36:60]) and not torch.equal(kd[:, :36], k[:, :36])
    assert torch.all(kd[:, 60:] == 0)
    for a, b in ((0, 96), (30, 40), (40, 70), (59, 61), (70, 96)):  # ranges across the window's edges
        kr, _ = m.decode_range(state, _call(60, tpf=tpf), a, b)
        assert torch.equal(kr, kd[:, a:b])
    whole = get_method_class("quarot_kv_int4_recent2")().encode(k, v, _call(0, tpf=tpf))  # nothing written yet
    assert "k_recent" not in whole.tensors


@pytest.mark.parametrize("name,n,recent", [("age_tier_int4", 100, 30), ("age_tier_int2", 100, 30), ("tptq_int2", 100, 15)])
def test_tier_sizes(name, n, recent):
    k, v = _kv(n)
    state = get_method_class(name)().encode(k, v, _call(n))
    mask = state.tensors["mask"]
    assert mask.dtype == torch.uint8 and mask.shape == (n,) and mask.sum() == recent
    assert torch.equal(state.tensors["idx_recent"], torch.arange(n - recent, n))
    assert torch.equal(state.tensors["idx_old"], torch.arange(0, n - recent))
    assert state.tensors["idx_old"].dtype == torch.int64
    assert state.tensors["k_recent_codes"].shape[1] == math.ceil(recent / GROUP_SIZE)


def test_age_tier_int2_old_tier_is_ternary_recent_tier_4_bit():
    k, v = _kv(100)
    state = get_method_class("age_tier_int2")().encode(k, v, _call(100))
    assert state.bits["k_recent_codes"] == 4 and state.bits["k_old_codes"] == 2
    assert set(state.tensors["k_old_codes"].unique().tolist()) <= {-1, 0, 1}


def test_tptq_old_key_outliers_capped_largest_first_and_overwrite():
    n, h, d = 100, 2, 32
    k, v = _kv(n, h=h, d=d)
    n_old = 85 * h * d  # 15 recent positions
    cap = int(0.001 * n_old)  # 5
    spots = [(t, 40.0 + 8 * i) for i, t in enumerate([2, 9, 20, 33, 47, 51, 60, 71])]  # 8 outliers
    for t, value in spots:
        k[0, t, 1, 3] = value
    m = get_method_class("tptq_int2")()
    state = m.encode(k, v, _call(n))
    val = state.tensors["k_old_outlier_val"]
    assert val.numel() == cap and val.dtype == torch.float16
    assert val.tolist() == sorted((s[1] for s in spots), reverse=True)[:cap]
    assert "v_old_outlier_val" not in state.tensors  # values: no outliers
    kd, _ = m.decode(state, _call(n))
    for t, value in sorted(spots, key=lambda s: -s[1])[:cap]:
        assert kd[0, t, 1, 3].item() == value
    assert state.bits["k_old_codes"] == 2 and state.bits["k_old_res_codes"] == 2


# ---------------------------------------------------------------- spatial masks
def _spatial_v(frames: int, s: int, varying: list[int], partial: int = 0) -> torch.Tensor:
    """V whose mean |V| varies over frames exactly at `varying` spatial positions."""
    v = torch.ones(1, frames * s + partial, 2, 8)
    for f in range(frames):
        for pos in varying:
            v[0, f * s + pos] = 1.0 + f  # variance over frames 1.0 (unbiased, 3 frames)
    return v


def test_spatial_topk_takes_exactly_round_target_times_s():
    s, frames, partial = TPF, 3, 5
    varying = list(range(0, 24, 2))
    v = _spatial_v(frames, s, varying, partial)
    k = torch.randn_like(v)
    n = v.shape[1]
    state = get_method_class("spatial_mixed_fg_kivi_int4_bg_kivi_int2")().encode(k, v, _call(n))
    fg = round(0.8 * s)  # 19
    mask = state.tensors["mask"]
    assert state.extra["fg_positions"] == fg and state.extra["fg_rule"] == "topk"
    assert mask.shape == (n,) and mask.sum() == frames * fg + partial
    per_frame = mask[: frames * s].view(frames, s)
    assert torch.equal(per_frame, per_frame[:1].expand(frames, s))  # one mask repeated
    assert all(per_frame[0, p] == 1 for p in varying)  # highest scores are foreground
    assert torch.all(mask[frames * s :] == 1)  # the incomplete frame is foreground
    assert state.tensors["idx_fg"].numel() == frames * fg + partial
    assert state.tensors["idx_bg"].numel() == frames * (s - fg)
    assert torch.equal(torch.sort(torch.cat([state.tensors["idx_fg"], state.tensors["idx_bg"]])).values, torch.arange(n))


def test_spatial_hybrid_threshold_then_topk_fallback():
    s, frames = TPF, 3
    name = "spatial_mixed_fg_rtn_int4_bg_rtn_int2"
    v = _spatial_v(frames, s, list(range(12)))  # 12 / 24 = 0.5 in [0.45, 0.85]
    state = get_method_class(name)().encode(torch.randn_like(v), v, _call(72))
    assert state.extra["fg_rule"] == "threshold" and state.extra["fg_positions"] == 12
    assert state.tensors["mask"][:s].tolist() == [1] * 12 + [0] * 12
    v = _spatial_v(frames, s, list(range(4)))  # 4 / 24 below 0.45: topk at 0.65
    state = get_method_class(name)().encode(torch.randn_like(v), v, _call(72))
    assert state.extra["fg_rule"] == "topk" and state.extra["fg_positions"] == round(0.65 * s)


# ---------------------------------------------------------------- FlowCache
def test_flowcache_budget_and_recent_formulas():
    assert layer_budget(0, 30, 0.75, 1.25) == 0.75 and layer_budget(29, 30, 0.75, 1.25) == 1.25
    assert math.isclose(layer_budget(1, 3, 0.75, 1.25), 1.0)
    assert recent_count(10, 0.25, 0.75) == 2 and recent_count(10, 0.25, 1.25) == 3
    assert recent_count(1, 0.25, 0.75) == 1 and recent_count(0, 0.25, 1.0) == 0
    assert recent_count(10, 0.9, 1.25) == 10  # min(r * b_l, 1)
    assert prune_counts(8, 0.1, 0.45, 0.75) == (1, 2, 5)  # round(0.6), round(2.36)


@pytest.mark.parametrize("layer,recent", [(0, 2), (1, 3)])
def test_flowcache_hybrid_plan(layer, recent):
    tpf, c = 4, 10
    k, v = _kv(c * tpf - 2)  # the last chunk is partial
    state = get_method_class("flowcache_hybrid_int2")().encode(k, v, _call(c * tpf - 2, layer=layer, tpf=tpf))
    plan = state.tensors["chunk_plan"]
    assert plan.tolist() == [LOW] * (c - recent) + [HIGH] * recent
    assert state.tensors["idx_high"].numel() == recent * tpf - 2
    assert state.bits["k_high_codes"] == 4 and state.bits["k_low_codes"] == 2


def test_flowcache_prune_counts_and_evicted_chunks_read_zeros():
    tpf, c = 4, 10  # layer 0 of 2: b = 0.75, recent 2, old 8 -> important 1, retained 2, evicted 5
    k, v = _kv(c * tpf)
    m = get_method_class("flowcache_prune_int2")()
    state = m.encode(k, v, _call(c * tpf, tpf=tpf))
    n_imp, n_ret, n_ev = prune_counts(8, 0.1, 0.30, 0.75)
    plan = state.tensors["chunk_plan"]
    assert (plan == HIGH).sum() == 2 + n_imp and (plan == LOW).sum() == n_ret and (plan == EVICTED).sum() == n_ev
    assert state.extra["evicted_chunks"] == n_ev and n_ev > 0
    kd, vd = m.decode(state, _call(c * tpf, tpf=tpf))
    for chunk, cls in enumerate(plan.tolist()):
        part = kd[:, chunk * tpf : (chunk + 1) * tpf]
        assert bool(torch.all(part == 0)) == (cls == EVICTED)


def test_flowcache_chunks_present_follow_written_data():
    tpf = 4
    k, v = _kv(96, 30)  # the study's whole buffer: 30 tokens written, C = ceil(30 / 4) = 8
    m = get_method_class("flowcache_prune_int4")()
    state = m.encode(k, v, _call(30, tpf=tpf))
    assert state.extra["chunks"] == 8 and state.tensors["chunk_plan"].numel() == 8
    assert state.extra["recent_chunks"] == recent_count(8, 0.25, 0.75)
    kd, _ = m.decode(state, _call(30, tpf=tpf))
    assert kd.shape == k.shape and torch.all(kd[:, 30:] == 0)
    plan = state.tensors["chunk_plan"].tolist()
    assert not torch.all(kd[:, 28:30] == 0) and plan[-1] == HIGH  # the partial chunk is recent
    state = m.encode(k, v, _call(48, tpf=tpf))  # C changed: a new plan
    assert state.extra["chunks"] == 12


def test_flowcache_soft_prune_reads_back_the_pooled_mean():
    tpf, c = 4, 10
    k, v = _kv(c * tpf)
    m = get_method_class("flowcache_soft_prune_int4")()
    state = m.encode(k, v, _call(c * tpf, tpf=tpf))
    assert state.tensors["k_pooled"].dtype == torch.bfloat16 and state.categories["k_pooled"] == "kv_fp"
    kd, vd = m.decode(state, _call(c * tpf, tpf=tpf))
    evicted = (state.tensors["chunk_plan"] == EVICTED).nonzero().flatten().tolist()
    assert evicted and state.tensors["k_pooled"].shape == (1, len(evicted), 2, 32)
    for chunk in evicted:
        sl = slice(chunk * tpf, (chunk + 1) * tpf)
        for out, ref in ((kd, k), (vd, v)):
            mean = ref[:, sl].float().mean(1, keepdim=True).to(torch.bfloat16).float()
            assert torch.equal(out[:, sl], mean.expand_as(out[:, sl]))


def test_flowcache_plan_is_cached_per_layer_until_c_changes():
    tpf = 4
    m = get_method_class("flowcache_adaptive_int2")()
    k, v = _kv(40)
    first = m.encode(k, v, _call(40, tpf=tpf)).tensors["chunk_plan"]
    again = m.encode(k * 3, v, _call(40, tpf=tpf)).tensors["chunk_plan"]
    assert again is first  # same C: the plan is reused
    other_layer = m.encode(k, v, _call(40, layer=1, tpf=tpf)).tensors["chunk_plan"]
    assert other_layer is not first
    k2, v2 = _kv(44)
    assert m.encode(k2, v2, _call(44, tpf=tpf)).tensors["chunk_plan"] is not first


def test_flowcache_scores_use_the_previous_call_of_the_same_layer():
    tpf = 4
    m = get_method_class("flowcache_adaptive_int2")()
    call = lambda n: KVCall(0, 1, 0, "refresh", None, 0, n, n, 64, tpf)  # noqa: E731  (b_l = 0.75)
    ones = torch.ones(1, 40, 2, 8)
    m.encode(ones, ones, call(40))  # C = 10, no history: delta = 1
    k = torch.ones(1, 44, 2, 8)
    k[:, 2 * tpf : 3 * tpf] = 10.0  # chunk 2 changed against its aligned predecessor
    state = m.encode(k, torch.ones_like(k), call(44))  # C = 11: recent 2, old 9, important 1
    plan = state.tensors["chunk_plan"].tolist()
    assert plan[2] == HIGH and plan.count(HIGH) == 3 and plan[-2:] == [HIGH, HIGH]
    assert state.extra["important_chunks"] == 1
    scores = state.tensors["chunk_scores"]  # the next call's history, accounted as state
    assert scores.shape == (11, 2) and state.categories["chunk_scores"] == "kv_meta"
    assert math.isclose(scores[2, 0].item(), 11.0) and math.isclose(scores[0, 0].item(), 2.0)


def test_flowcache_native_is_lossless_bf16_storage():
    k, v = _kv(dtype=torch.bfloat16)
    m = get_method_class("flowcache_native")()
    state = m.encode(k, v, _call())
    assert state.tensors["k"] is k and state.categories["k"] == "kv_fp"
    assert m.residual_reuse().threshold == 1.5
    assert get_method_class("flowcache_native_soft_prune_int4")(reuse_threshold="0.5").residual_reuse().threshold == 0.5


def test_residual_reuse_skips_below_threshold_never_on_refresh():
    r = ResidualReuse(threshold=1.5, warmup_steps=0)
    x = torch.ones(2, 8)
    block_in, block_out = torch.zeros(2, 8), torch.full((2, 8), 3.0)
    assert not r.should_skip(x, "denoise", 0)  # first step computes
    r.store(block_in, block_out)
    assert r.should_skip(x * 1.5, "denoise", 1)  # change 0.5 accumulated
    assert torch.equal(r.reuse(block_in), block_out)
    assert r.should_skip(x * 1.5 * 1.3, "denoise", 2)  # 0.5 + 0.3 = 0.8 < 1.5
    assert not r.should_skip(x * 1.5 * 1.3 * 2.0, "denoise", 3)  # 0.8 + 1.0 >= 1.5: compute, reset
    assert r.accumulated == 0.0
    assert not r.should_skip(x * 1.5 * 1.3 * 2.0, "refresh", None)  # refresh always computes
    r.start_chunk()
    assert not r.should_skip(x, "denoise", 0) and r.residual is None
    warm = ResidualReuse(threshold=1.5, warmup_steps=1)
    warm.should_skip(x, "denoise", 0)
    warm.store(block_in, block_out)
    assert not warm.should_skip(x, "denoise", 1) and warm.should_skip(x, "denoise", 2)


# ---------------------------------------------------------------- storage model at full size (meta)
B, L, H, D = 1, 42 * 1560, 12, 128


def _groups(n: int) -> int:
    return -(-n // GROUP_SIZE)


def _expected_resident(name: str, storage: str) -> int:
    code_byte = {"int8": 1, "int16": 2}.get(storage)
    codes = lambda n, bits: n * H * D * code_byte if code_byte else n * H * D * bits // 8  # noqa: E731
    scales = lambda n: _groups(n) * H * D * 2  # noqa: E731  float16 per (group, head, channel)
    padded = lambda n: _groups(n) * GROUP_SIZE  # noqa: E731
    if name == "rtn_int4":
        return 2 * (codes(padded(L), 4) + scales(L))
    if name == "kivi_int4":  # keys: scale + zero per (group, head, channel); values per token
        return 2 * codes(L, 4) + 2 * scales(L) + 2 * B * L * 2
    if name == "prq_int4":
        return 2 * (2 * codes(padded(L), 4) + 2 * scales(L))
    if name == "age_tier_int4":
        recent = round(0.3 * L)
        tiers = [recent, L - recent]
        return (
            sum(2 * (codes(padded(t), 4) + scales(t)) for t in tiers)
            + L  # one-byte mask per token
            + 8 * L  # int64 index lists of both tiers
        )
    raise KeyError(name)


@pytest.mark.parametrize("storage", ["int8", "packed"])
@pytest.mark.parametrize("name", ["rtn_int4", "kivi_int4", "prq_int4", "age_tier_int4"])
def test_full_size_storage_model_on_meta(name, storage):
    k = torch.empty(B, L, H, D, dtype=torch.bfloat16, device="meta")
    call = KVCall(0, 30, 13, "refresh", None, L - 4680, L, L, L, 1560)
    m = get_method_class(name)(storage=storage)
    state = m.encode(k, k, call)
    assert state.resident_bytes() == _expected_resident(name, storage)
    assert state.logical_bytes() == 2 * L * H * D * 2
    if storage == "int8":  # stored counts 4 bits per code
        assert state.stored_bytes() == _expected_resident(name, "packed")
    kd, vd = m.decode(state, call)
    assert kd.shape == (B, L, H, D) and kd.dtype == torch.bfloat16 and kd.device.type == "meta"
